"""deploy: see ../shared/architecture.md."""
