"""What a published version is and how it is answered: the FAISS index, the bundle format, its store
and patch versions, the registry of versions and aliases, the publish lock, and the client. Imports
neither torch, numba nor prefect.

See docs/architecture.md."""
