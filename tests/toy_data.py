"""Tiny hand-made shops shared by the evaluation and baseline tests."""
from __future__ import annotations

import pandas as pd

from recsys.data.dataset import from_frames


def make_dataset(orders, categories=None):
    """orders: list of (time_s, user, [item ids]); one order per entry."""
    rows = [(user, item, pd.Timestamp(t, unit="s", tz="UTC"), f"o{n}")
            for n, (t, user, items) in enumerate(orders) for item in items]
    purchases = pd.DataFrame(rows, columns=["user_id", "item_id", "purchased_at", "order_id"])
    ids = sorted({r[1] for r in rows} | set(categories or {}))
    items = pd.DataFrame({"item_id": ids, "category": [(categories or {}).get(i, "c") for i in ids]})
    return from_frames(items, purchases)
