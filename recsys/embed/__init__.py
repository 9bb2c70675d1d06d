"""Training EGES item embeddings: the PyTorch module (`model`), the fused CPU kernel (`sgns_cpu`), the
training loop (`train`), and its numpy result (`trained`). Nothing here is needed to serve.

See docs/architecture.md."""
