"""classify: see ../shared/architecture.md."""
