"""Patch versions: a published version plus catalogue items it does not know yet (no retraining).

New items get side-feature codes in the version's own vocabularies (unseen
values map to "missing") so they can be queried by their side features; they
are not neighbour candidates until the next full training.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd

from recsys.serving.bundle import Bundle, BundleParts, ItemTable
from recsys.serving.store import parse_version
from recsys.vectors import PRICE_TIER, clean_value, price_tier_codes


def model_feature_codes(feature_names: list[str], feature_values: dict[str, list[str]],
                        price_tier_edges: np.ndarray, columns: dict[str, Any], price) -> np.ndarray:
    """(n, F) model codes from raw values: unseen or missing values map to 0 ("missing")."""
    n = len(np.atleast_1d(price))
    codes = np.zeros((n, len(feature_names)), np.int32)
    for j, name in enumerate(feature_names):
        if name == PRICE_TIER:
            codes[:, j] = price_tier_codes(price, price_tier_edges)
            continue
        raw = columns.get(name)
        if raw is None:
            continue
        lookup = {v: i for i, v in enumerate(feature_values[name]) if i > 0}
        codes[:, j] = [lookup.get(clean_value(v), 0) for v in raw]
    return codes


NEW_ITEM_COLUMNS = ("item_id", "category")


def extend_with_new_items(bundle: Bundle, new_items) -> BundleParts | None:
    """Parts of a patch version: the bundle plus catalogue items it does not know yet.

    new_items: a DataFrame in the `recsys load` items layout (item_id,
    category [, brand, price, in_stock, <extra side features>]). New items
    are queryable from their side features (cold start); they are not
    neighbour candidates until the next full training. Items already in the
    bundle are ignored; returns None when nothing is new.
    """
    missing = [c for c in NEW_ITEM_COLUMNS if c not in new_items.columns]
    if missing:
        raise ValueError(f"new items need the columns {list(NEW_ITEM_COLUMNS)}; missing {missing}")
    old = bundle.parts.items
    known = set(old.item_ids.tolist())
    frame = new_items.assign(item_id=new_items["item_id"].astype(str))
    frame = frame[~frame["item_id"].isin(known)].drop_duplicates("item_id", keep="last").reset_index(drop=True)
    if frame.empty:
        return None
    model = bundle.parts.model
    price = (pd.to_numeric(frame["price"], errors="coerce").to_numpy(np.float64) if "price" in frame
             else np.full(len(frame), np.nan))
    category_values, category = _extend_vocab(old.category_values, frame["category"].tolist())
    brand_raw = frame["brand"].tolist() if "brand" in frame else [None] * len(frame)
    brand_values, brand = _extend_vocab(old.brand_values, brand_raw)
    columns = {name: frame[name].tolist() for name in model.feature_names if name in frame}
    codes = model_feature_codes(model.feature_names, model.feature_values, model.price_tier_edges, columns, price)
    in_stock = (frame["in_stock"].fillna(True).astype(bool).to_numpy() if "in_stock" in frame
                else np.ones(len(frame), bool))
    items = ItemTable(
        item_ids=np.concatenate([old.item_ids.astype(str), frame["item_id"].to_numpy(dtype=str)]).astype(np.str_),
        category=np.concatenate([old.category, category]).astype(np.int32), category_values=category_values,
        brand=np.concatenate([old.brand, brand]).astype(np.int32), brand_values=brand_values,
        price=np.concatenate([old.price, price.astype(np.float32)]),
        in_stock=np.concatenate([old.in_stock, in_stock]),
        feature_codes=np.concatenate([old.feature_codes, codes]).astype(np.int32),
        attention_logits=np.concatenate([old.attention_logits,
                                         np.zeros((len(frame), old.attention_logits.shape[1]), np.float32)]),
        index_row=np.concatenate([old.index_row, np.full(len(frame), -1, np.int32)]))
    root, _ = parse_version(bundle.version)
    notes = dict(bundle.parts.notes)
    notes["patch"] = {"base_version": root, "parent_version": bundle.version, "new_items": int(len(frame)),
                      "items_before": int(len(old))}
    return replace(bundle.parts, items=items, kind="patch", parent_version=bundle.version, notes=notes)


def _extend_vocab(values: list[str], raw: list) -> tuple[list[str], np.ndarray]:
    values = list(values)
    lookup = {v: i for i, v in enumerate(values) if i > 0}
    codes = np.zeros(len(raw), np.int32)
    for k, value in enumerate(raw):
        text = clean_value(value)
        if text is None:
            continue
        if text not in lookup:
            lookup[text] = len(values)
            values.append(text)
        codes[k] = lookup[text]
    return values, codes
