"""The columnar, in-memory form of a shop that every pipeline stage consumes.

Extraction (`recsys.ingest.extract`) fills it from Postgres; the synthetic generator
and tests build it directly. Everything is a numpy array indexed by a dense
integer id, so stages can be split by item range and shipped between
processes without pickling Python objects per row.

Conventions
-----------
* Items are numbered 0..n_items-1 in `item_ids` order.
* Each side feature is a `SideFeature`: an int32 code per item into `values`.
  Code 0 is reserved for "missing / unknown", so a cold-start query with an
  unseen brand maps to 0 rather than failing.
* Timestamps are int64 seconds since the Unix epoch (UTC).
* `purchase_order` is -1 where the purchase line has no order id.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

MISSING = "<missing>"


@dataclass
class SideFeature:
    """One categorical side feature: `codes[i]` indexes `values`; 0 = missing."""

    name: str
    codes: np.ndarray  # int32, shape (n_items,)
    values: list[str]  # values[0] == MISSING

    @property
    def cardinality(self) -> int:
        return len(self.values)

    def code_of(self, value: object) -> int:
        """Code of a raw value; unseen or missing values map to 0."""
        if value is None:
            return 0
        lookup = getattr(self, "_lookup", None)
        if lookup is None:
            lookup = {v: i for i, v in enumerate(self.values)}
            object.__setattr__(self, "_lookup", lookup)
        return lookup.get(str(value), 0)

    @classmethod
    def from_raw(cls, name: str, raw: "np.ndarray | list") -> "SideFeature":
        """Encode raw values (None/NaN/'' = missing) in first-seen-sorted order."""
        arr = np.asarray(raw, dtype=object)
        present = np.array([v is not None and v == v and str(v) != "" for v in arr], dtype=bool)
        as_str = np.where(present, arr.astype(str), "")
        uniques = sorted(set(as_str[present].tolist()))
        lookup = {v: i + 1 for i, v in enumerate(uniques)}
        codes = np.zeros(len(arr), dtype=np.int32)
        if present.any():
            codes[present] = np.fromiter((lookup[v] for v in as_str[present]), dtype=np.int32)
        return cls(name=name, codes=codes, values=[MISSING, *uniques])


@dataclass
class Watermark:
    """The newest data a run has seen: identifies the data for caching/manifests."""

    max_purchased_at: int | None  # epoch seconds, None when there are no purchases
    max_item_updated_at: int | None
    n_items: int
    n_purchases: int

    def as_dict(self) -> dict:
        return {
            "max_purchased_at": self.max_purchased_at,
            "max_item_updated_at": self.max_item_updated_at,
            "n_items": self.n_items,
            "n_purchases": self.n_purchases,
        }


@dataclass
class Dataset:
    # --- catalogue, one entry per item -------------------------------------
    item_ids: np.ndarray  # object (str), shape (n_items,)
    category: SideFeature
    brand: SideFeature
    price: np.ndarray  # float32, NaN where unknown
    in_stock: np.ndarray  # bool
    item_created_at: np.ndarray  # int64 epoch seconds (0 where unknown)
    extra_features: list[SideFeature] = field(default_factory=list)
    # --- purchases, one entry per purchase line, sorted by (user, time) -----
    purchase_user: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    purchase_item: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    purchase_time: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    purchase_order: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    purchase_quantity: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    user_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, object))
    watermark: Watermark | None = None

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def n_purchases(self) -> int:
        return len(self.purchase_item)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    def side_features(self) -> list[SideFeature]:
        """Category, brand, then declared extras (price tier is derived by the model)."""
        return [self.category, self.brand, *self.extra_features]

    def item_index(self) -> dict[str, int]:
        return {item_id: i for i, item_id in enumerate(self.item_ids.tolist())}

    def validate(self) -> None:
        """Cheap consistency checks; raise ValueError naming the broken array."""
        n = self.n_items
        for name, arr in [("price", self.price), ("in_stock", self.in_stock),
                          ("item_created_at", self.item_created_at)]:
            if len(arr) != n:
                raise ValueError(f"Dataset.{name} has {len(arr)} entries, expected {n}")
        for sf in self.side_features():
            if len(sf.codes) != n:
                raise ValueError(f"side feature {sf.name!r} has {len(sf.codes)} codes, expected {n}")
            if len(sf.codes) and (sf.codes.min() < 0 or sf.codes.max() >= sf.cardinality):
                raise ValueError(f"side feature {sf.name!r} has codes outside 0..{sf.cardinality - 1}")
        m = self.n_purchases
        for name, arr in [("purchase_user", self.purchase_user), ("purchase_time", self.purchase_time),
                          ("purchase_order", self.purchase_order), ("purchase_quantity", self.purchase_quantity)]:
            if len(arr) != m:
                raise ValueError(f"Dataset.{name} has {len(arr)} entries, expected {m}")
        if m and (self.purchase_item.min() < 0 or self.purchase_item.max() >= n):
            raise ValueError("Dataset.purchase_item refers to items outside the catalogue")


def subset_purchases(ds: Dataset, mask: np.ndarray) -> Dataset:
    """Same catalogue, only the purchase lines where `mask` (order kept)."""
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != (ds.n_purchases,):
        raise ValueError(f"mask has shape {mask.shape}, expected ({ds.n_purchases},)")
    times = ds.purchase_time[mask]
    return dataclasses.replace(
        ds,
        purchase_user=ds.purchase_user[mask],
        purchase_item=ds.purchase_item[mask],
        purchase_time=times,
        purchase_order=ds.purchase_order[mask],
        purchase_quantity=ds.purchase_quantity[mask],
        watermark=Watermark(
            max_purchased_at=int(times.max()) if len(times) else None,
            max_item_updated_at=ds.watermark.max_item_updated_at if ds.watermark else None,
            n_items=ds.n_items,
            n_purchases=int(mask.sum()),
        ),
    )


def _epoch_seconds(values) -> np.ndarray:
    """Timestamps (anything pandas parses) to int64 epoch seconds, UTC; NaT -> 0."""
    import pandas as pd

    ts = pd.to_datetime(pd.Series(values), utc=True, format="ISO8601") if not pd.api.types.is_datetime64_any_dtype(values) else pd.to_datetime(pd.Series(values), utc=True)
    out = np.zeros(len(ts), dtype=np.int64)
    ok = ts.notna().to_numpy()
    if ok.any():
        out[ok] = ts[ok].astype("datetime64[s, UTC]").astype("int64").to_numpy()
    return out


def from_frames(items, purchases, side_features: list[str] | tuple[str, ...] = ()) -> Dataset:
    """Build a Dataset from pandas frames in the `recsys load` column layout.

    items: item_id, category, [brand, price, in_stock, created_at, *side_features]
    purchases: user_id, item_id, purchased_at, [order_id, quantity]
    Purchases of items missing from `items` raise ValueError (no phantom items).
    Used by tests, the synthetic shop and notebooks; production extraction
    streams from Postgres in `recsys.ingest.extract` and yields the same structure.
    """
    import pandas as pd

    items = items.reset_index(drop=True)
    item_ids = items["item_id"].astype(str).to_numpy(dtype=object)
    n = len(item_ids)
    price = (pd.to_numeric(items["price"], errors="coerce").to_numpy(dtype=np.float32)
             if "price" in items else np.full(n, np.nan, np.float32))
    in_stock = (items["in_stock"].fillna(True).astype(bool).to_numpy()
                if "in_stock" in items else np.ones(n, bool))
    created = _epoch_seconds(items["created_at"]) if "created_at" in items else np.zeros(n, np.int64)
    brand_raw = items["brand"].to_numpy(dtype=object) if "brand" in items else [None] * n
    extras = [SideFeature.from_raw(name, items[name].to_numpy(dtype=object)) for name in side_features]

    index = pd.Index(item_ids)
    p_item = index.get_indexer(purchases["item_id"].astype(str))
    if (p_item < 0).any():
        bad = purchases["item_id"].astype(str)[p_item < 0].iloc[0]
        raise ValueError(f"purchase of item {bad!r} that is not in the catalogue")
    user_codes, user_ids = pd.factorize(purchases["user_id"].astype(str), sort=True)
    times = _epoch_seconds(purchases["purchased_at"])
    if "order_id" in purchases:
        oc, _ = pd.factorize(purchases["order_id"], sort=True)  # NaN -> -1
        orders = oc.astype(np.int64)
    else:
        orders = np.full(len(purchases), -1, np.int64)
    qty = (pd.to_numeric(purchases["quantity"]).fillna(1).to_numpy(dtype=np.int32)
           if "quantity" in purchases else np.ones(len(purchases), np.int32))

    order = np.lexsort((times, user_codes))
    ds = Dataset(
        item_ids=item_ids,
        category=SideFeature.from_raw("category", items["category"].to_numpy(dtype=object)),
        brand=SideFeature.from_raw("brand", brand_raw),
        price=price,
        in_stock=in_stock,
        item_created_at=created,
        extra_features=extras,
        purchase_user=user_codes.astype(np.int32)[order],
        purchase_item=p_item.astype(np.int32)[order],
        purchase_time=times[order],
        purchase_order=orders[order],
        purchase_quantity=qty[order],
        user_ids=np.asarray(user_ids, dtype=object),
    )
    ds.watermark = Watermark(
        max_purchased_at=int(times.max()) if len(times) else None,
        max_item_updated_at=None,
        n_items=n,
        n_purchases=len(times),
    )
    ds.validate()
    return ds
