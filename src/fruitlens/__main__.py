from fruitlens.cli import main

raise SystemExit(main())
