"""state: see ../shared/architecture.md."""
