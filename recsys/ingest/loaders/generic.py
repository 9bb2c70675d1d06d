"""`recsys load --items ITEMS --purchases PURCHASES`: the generic CSV/Parquet import."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from recsys.errors import InputFileError
from recsys.ingest.loaders.files import (
    ITEM_COLUMNS, PURCHASE_COLUMNS, REQUIRED_ITEM_COLUMNS, REQUIRED_PURCHASE_COLUMNS,
    InputFile, LoadFrames, RejectCollector, as_text, blank, empty_rejects, parse_bool, parse_number,
    parse_timestamp, read_table, reject_duplicate_rows, require_columns,
)


def clean_items(source: InputFile, side_features: list[str] = ()) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Validate an items table; return (clean items, rejects)."""
    require_columns(source, REQUIRED_ITEM_COLUMNS, "items")
    for name in side_features:
        if name not in source.frame.columns:
            raise InputFileError(source.path, f"has no column {name!r} for --side-feature {name}", field=name,
                                 hint=f"Found columns: {', '.join(source.frame.columns)}.")
        if name in ITEM_COLUMNS:
            raise InputFileError(source.path, f"--side-feature {name} names a built-in column", field=name,
                                 hint="category, brand and price are side features already; "
                                      "declare only extra columns.")
    f = source.frame
    n = len(f)
    rejects = RejectCollector(source, "item")
    col = lambda name: f[name] if name in f.columns else pd.Series([None] * n, index=f.index, dtype=object)

    rejects.add(blank(f["item_id"]), "item_id", "missing_item_id", "item_id is empty")
    rejects.add(blank(f["category"]), "category", "missing_category", "category is empty (it is required)")
    price, not_number, nan_or_inf = parse_number(col("price"))
    rejects.add(not_number, "price", "invalid_price",
                lambda pos: [f"price {f['price'].iloc[p]!r} is not a number" for p in pos])
    rejects.add(nan_or_inf, "price", "nan_price", "price is NaN or infinite; leave it empty when unknown")
    rejects.add(price < 0, "price", "negative_price",
                lambda pos: [f"price {price[p]:g} is negative" for p in pos])
    in_stock, bad_bool = parse_bool(col("in_stock"), default=True)
    rejects.add(bad_bool, "in_stock", "invalid_in_stock",
                lambda pos: [f"in_stock {f['in_stock'].iloc[p]!r} is not true/false" for p in pos])
    created, bad_ts = parse_timestamp(col("created_at"))
    rejects.add(bad_ts, "created_at", "invalid_timestamp",
                lambda pos: [f"created_at {f['created_at'].iloc[p]!r} is not a timestamp" for p in pos])
    reject_duplicate_rows(source, rejects, list(f.columns))

    # The same item_id twice with different values: keep the first, reject the rest.
    ids = as_text(f["item_id"])
    dup_id = ids.duplicated(keep="first").to_numpy() & ~rejects.rejected & ~blank(f["item_id"])
    if dup_id.any():
        kept = ~rejects.rejected
        first_pos = {}
        for pos in np.flatnonzero(kept):
            first_pos.setdefault(ids.iloc[pos], pos)
        rejects.add(dup_id, "item_id", "duplicate_item_id",
                    lambda pos: [f"item_id {ids.iloc[p]!r} already appears in row {first_pos.get(ids.iloc[p], p) + 1} "
                                 "with different values" for p in pos])

    keep = ~rejects.rejected
    extra = [c for c in f.columns if c not in ITEM_COLUMNS]
    if extra:
        attrs = f.loc[keep, extra].astype("string").apply(lambda s: s.str.strip())
        attributes = [json.dumps({k: v for k, v in row.items() if v is not None and v == v and v != ""},
                                 ensure_ascii=False, sort_keys=True) for row in attrs.to_dict("records")]
    else:
        attributes = ["{}"] * int(keep.sum())
    items = pd.DataFrame({
        "item_id": ids[keep].to_numpy(dtype=object),
        "category": as_text(f["category"])[keep].to_numpy(dtype=object),
        "brand": as_text(col("brand"))[keep].to_numpy(dtype=object),
        "price": price[keep],
        "title": as_text(col("title"))[keep].to_numpy(dtype=object),
        "in_stock": in_stock[keep],
        "created_at": created[keep].reset_index(drop=True),
        "attributes": attributes,
    })
    return items, rejects.frame()


def clean_purchases(source: InputFile) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Validate a purchases table; return (clean purchase lines, rejects)."""
    require_columns(source, REQUIRED_PURCHASE_COLUMNS, "purchases")
    f = source.frame
    n = len(f)
    rejects = RejectCollector(source, "purchase")
    col = lambda name: f[name] if name in f.columns else pd.Series([None] * n, index=f.index, dtype=object)

    rejects.add(blank(f["user_id"]), "user_id", "missing_user_id", "user_id is empty")
    rejects.add(blank(f["item_id"]), "item_id", "missing_item_id", "item_id is empty")
    ts, bad_ts = parse_timestamp(f["purchased_at"])
    rejects.add(blank(f["purchased_at"]), "purchased_at", "missing_timestamp", "purchased_at is empty")
    rejects.add(bad_ts, "purchased_at", "invalid_timestamp",
                lambda pos: [f"purchased_at {f['purchased_at'].iloc[p]!r} is not a timestamp "
                             "(use ISO 8601, e.g. 2024-03-01T14:05:00Z)" for p in pos])
    qty, qty_not_number, qty_nan = parse_number(col("quantity"))
    qty_blank = np.isnan(qty) & ~qty_not_number & ~qty_nan
    qty = np.where(qty_blank, 1.0, qty)
    rejects.add(qty_not_number | qty_nan, "quantity", "invalid_quantity",
                lambda pos: [f"quantity {f['quantity'].iloc[p]!r} is not a number" for p in pos])
    rejects.add(np.nan_to_num(qty) != np.round(np.nan_to_num(qty)), "quantity", "invalid_quantity",
                lambda pos: [f"quantity {qty[p]:g} is not a whole number" for p in pos])
    rejects.add(qty <= 0, "quantity", "non_positive_quantity",
                lambda pos: [f"quantity {qty[p]:g} is not positive (returns are not purchases)" for p in pos])
    price, price_not_number, price_nan = parse_number(col("unit_price"))
    rejects.add(price_not_number, "unit_price", "invalid_price",
                lambda pos: [f"unit_price {f['unit_price'].iloc[p]!r} is not a number" for p in pos])
    rejects.add(price_nan, "unit_price", "nan_price", "unit_price is NaN or infinite; leave it empty when unknown")
    rejects.add(price < 0, "unit_price", "negative_price",
                lambda pos: [f"unit_price {price[p]:g} is negative" for p in pos])
    reject_duplicate_rows(source, rejects, list(f.columns))
    return _purchase_frame(source, rejects, ts, qty, price, as_text(col("order_id"))), rejects.frame()


def _purchase_frame(source: InputFile, rejects: RejectCollector, ts: pd.Series, qty: np.ndarray,
                    price: np.ndarray, order_id: pd.Series, user_id=None, item_id=None) -> pd.DataFrame:
    keep = ~rejects.rejected
    f = source.frame
    purchases = pd.DataFrame({
        "user_id": (as_text(f["user_id"]) if user_id is None else user_id)[keep].to_numpy(dtype=object),
        "item_id": (as_text(f["item_id"]) if item_id is None else item_id)[keep].to_numpy(dtype=object),
        "purchased_at": ts[keep].reset_index(drop=True),
        "order_id": order_id[keep].to_numpy(dtype=object),
        "quantity": qty[keep].astype(np.int64),
        "unit_price": price[keep],
        "file_path": str(source.path),
        "file_sha256": source.sha256,
        "row_number": np.flatnonzero(keep) + 1,
    })
    return add_line_numbers(purchases)


def add_line_numbers(purchases: pd.DataFrame) -> pd.DataFrame:
    """line_no = k-th line with the same (user, item, time, order): part of the natural key."""
    key = [purchases["user_id"], purchases["item_id"], purchases["purchased_at"],
           purchases["order_id"].fillna("")]
    purchases["line_no"] = purchases.groupby(key, sort=False, dropna=False).cumcount().astype(np.int64)
    return purchases


def read_frames(items_path: str | Path | None, purchases_path: str | Path | None, *,
                side_features: list[str] = (), encoding: str = "utf-8") -> LoadFrames:
    """Read and validate the user's files. Either may be omitted (catalogue-only or purchases-only load)."""
    if items_path is None and purchases_path is None:
        raise InputFileError("(no file)", "nothing to load", hint="Pass --items and/or --purchases.")
    files, reject_parts, items_file = [], [], None
    items = pd.DataFrame(columns=[*ITEM_COLUMNS, "attributes"])
    purchases = pd.DataFrame(columns=[*PURCHASE_COLUMNS, "line_no", "file_path", "file_sha256", "row_number"])
    if items_path is not None:
        source = read_table(items_path, encoding=encoding)
        items, rejected = clean_items(source, list(side_features))
        files.append(source)
        items_file = source
        reject_parts.append(rejected)
    if purchases_path is not None:
        source = read_table(purchases_path, encoding=encoding)
        purchases, rejected = clean_purchases(source)
        files.append(source)
        reject_parts.append(rejected)
    parts = [r for r in reject_parts if len(r)]
    rejects = pd.concat(parts, ignore_index=True) if parts else empty_rejects()
    return LoadFrames(source="files", files=files, items=items, purchases=purchases, rejects=rejects,
                      side_features=list(side_features), items_file=items_file)
