"""Patch versions: a published version plus catalogue items it does not know yet (no retraining).

New items get side-feature codes in the version's own vocabularies (unseen
values map to "missing") so they can be queried by their side features; they
are not neighbour candidates until the next full training.
"""
from __future__ import annotations

import dataclasses
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
    return as_patch(bundle, replace(bundle.parts, items=items), new_items=int(len(frame)))


def as_patch(bundle: Bundle, parts: BundleParts, new_items: int = 0) -> BundleParts:
    """`parts` marked as a patch of `bundle`'s version (kind, parent, notes["patch"])."""
    if parts.kind == "patch" and parts.parent_version == bundle.version:
        return parts
    root, _ = parse_version(bundle.version)
    notes = dict(parts.notes)
    notes["patch"] = {"base_version": root, "parent_version": bundle.version, "new_items": new_items,
                      "items_before": int(len(bundle.parts.items))}
    return replace(parts, kind="patch", parent_version=bundle.version, notes=notes)


def with_fresh_items(parts: BundleParts, positions: np.ndarray, candidate_rows: np.ndarray, query_rows: np.ndarray,
                     basis_rows: np.ndarray | None, log_popularity: np.ndarray, pairs: tuple, top_m: int) -> BundleParts:
    """Parts whose index and co-purchase lists also hold items first bought since the version.

    positions: item positions of the new candidates (not indexed yet);
    candidate_rows / query_rows / basis_rows: their index rows (recsys/jobs/refresh.py learns them);
    log_popularity: their log(1 + purchase lines); pairs: (anchor position, partner position, weight)
    of the new co-purchases, both directions, added to every list they belong in. Items the version
    already had keep their codes, rows and attention.
    """
    if parts.popularity_weight_on != "query" or set(parts.indexes) != {"warm"}:
        raise ValueError("purchases fold into bundles of format 3 (one candidate index) only; this version "
                         "takes them at its next full training")
    positions = np.asarray(positions, np.int64)
    items = parts.items
    if len(positions) and (items.index_row[positions] >= 0).any():
        raise ValueError("with_fresh_items: some positions are indexed already")
    n_indexed = int((items.index_row >= 0).sum())
    index = parts.indexes["warm"].with_items(candidate_rows, query_rows, basis_rows)
    index_row = items.index_row.copy()
    index_row[positions] = n_indexed + np.arange(len(positions), dtype=np.int32)
    n_rows = n_indexed + len(positions)
    graph = parts.graph
    if graph is not None:
        anchor, partner, weight = (np.asarray(x) for x in pairs)
        row = index_row[partner.astype(np.int64)] if len(partner) else np.zeros(0, np.int64)
        listed = row >= 0
        anchor, row, weight = anchor[listed].astype(np.int64), row[listed].astype(np.int64), weight[listed]
        n_categories = max(len(items.category_values), graph.category_partners.n_anchors)
        category = items.category.astype(np.int64)[anchor]
        known = category > 0
        fresh_category = items.category.astype(np.int64)[positions]
        graph = dataclasses.replace(
            graph,
            item_partners=graph.item_partners.with_added(anchor, row, weight, len(items), n_rows, top_m),
            category_partners=graph.category_partners.with_added(category[known], row[known], weight[known],
                                                                 n_categories, n_rows, top_m),
            category_members=graph.category_members.with_added(
                fresh_category[fresh_category > 0], index_row[positions][fresh_category > 0],
                np.expm1(np.asarray(log_popularity, np.float64))[fresh_category > 0],
                max(n_categories, graph.category_members.n_anchors), n_rows, top_m),
            log_popularity=np.concatenate([graph.log_popularity, np.asarray(log_popularity, np.float32)]))
    out = replace(parts, items=replace(items, index_row=index_row), indexes={"warm": index}, graph=graph)
    out.validate()
    return out


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
