"""engines: see ../shared/architecture.md."""
