"""The shop in memory and the graphs built from it: `Dataset` (columnar numpy arrays), baskets, the
weighted item graph, random walks over it, and synthetic shops for tests and benchmarks.

See docs/architecture.md."""
