"""deploy.s3data: see ../shared/architecture.md."""
