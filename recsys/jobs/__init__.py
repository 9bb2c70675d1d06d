"""The pipeline stages as plain functions (`pipeline`), the graph-readiness diagnosis, the run report
and plots: what `flows/` orchestrates.

See docs/architecture.md."""
