"""storage: see ../shared/architecture.md."""
