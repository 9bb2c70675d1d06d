"""The command line (`cli`, `cli_serving`, their shared helpers in `common`), the demo, and the
scheduled deployments.

See docs/architecture.md."""
