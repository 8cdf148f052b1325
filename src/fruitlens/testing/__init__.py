"""testing: see ../shared/architecture.md."""
