"""recsys: EGES item embeddings and a compressed similar-items index from a shop's Postgres.

    from recsys import Client
    client = Client.from_registry()          # the production version
    client.similar("item-42", k=10)
"""
from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["Client", "Neighbor", "UnknownItemError", "__version__"]


def __getattr__(name: str):
    # Lazy: `import recsys` stays cheap (no FAISS/torch) until the client is used.
    if name in ("Client", "Neighbor", "UnknownItemError"):
        from recsys.serving import client

        return getattr(client, name)
    raise AttributeError(f"module 'recsys' has no attribute {name!r}")
