"""``python -m fruitlens.serve OUTPUT ...``: the serving image's entry point (see :mod:`fruitlens.serve.cli`)."""
from fruitlens.serve.cli import main

raise SystemExit(main())
