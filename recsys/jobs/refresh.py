"""The hourly refresh: purchases since a version folded into a patch version, without retraining.

A patch version (recsys/serving/patch.py) already makes catalogue items the
version does not know queryable from their side features. This job adds the
purchases since the full version's data watermark (each refresh rebuilds the
patch from the full version with everything since, so an item's buyers over
several hours count together and nothing is added twice):

* items bought for the first time since then, by at least
  `fold_in.min_buyers` distinct accounts, get a query and a candidate
  vector learned from those purchases with every other vector frozen
  (recsys/embed/fold_in.py), join the index (so they are returned as
  neighbours) and rank by their new evidence: their purchases as the
  popularity prior, their co-purchases in the lists the shipped ranking
  re-ranks with;
* every item's co-purchase list (and its category's) gains the new
  co-purchases, counted by distinct accounts, as training counts them;
* items the version already had keep their vectors and codes.

Only accounts that bought before the version count (`known_accounts_only`):
a new account's purchases wait for the nightly run, whose account screen
(recsys/data/accounts.py) sees them against the whole history.

The patch's notes record what was added and how it was checked
(`notes["refresh"]`): lines and accounts read, items folded in with their
buyers, items left out for too few buyers, and the fold-in objective before
and after.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass, field

import numpy as np

from recsys.data.accounts import user_codes
from recsys.data.cooccurrence import copurchase_matrix
from recsys.config import get_settings
from recsys.data.dataset import Dataset, subset_purchases
from recsys.embed.fold_in import FoldInConfig, fold_in
from recsys.ingest.extract import accounts_seen_before, extract_dataset
from recsys.serving.bundle import BundleParts, cold_start_vectors
from recsys.serving.patch import with_fresh_items
from recsys.serving.registry import publish_patch


@dataclass(frozen=True)
class RefreshConfig:
    fold_in: FoldInConfig = field(default_factory=FoldInConfig)
    session_gap_s: int = 3600
    top_m: int = 100  # co-purchase partners kept per item, as the full training keeps them
    max_listed: int = 20  # fresh items named in the record
    exclude_users: tuple[str, ...] = ()  # accounts whose purchases are never folded in (as in training)
    # count only accounts that bought before the version: a new account's purchases wait for the nightly
    # run, whose account screen sees them against the whole history (within the hour, a burst of fresh
    # accounts pushing an item would otherwise reach production before any screen); on Ta-Feng's and
    # Online Retail's test periods 87% and 86% of the lines are by accounts seen before
    known_accounts_only: bool = True


def _positions(parts: BundleParts, ds: Dataset) -> np.ndarray:
    """Bundle position of each of ds's items (-1: not in the version)."""
    lookup = {item_id: i for i, item_id in enumerate(parts.items.item_ids.tolist())}
    return np.fromiter((lookup.get(str(x), -1) for x in ds.item_ids.tolist()), np.int64, ds.n_items)


def fold_in_purchases(parts: BundleParts, purchases: Dataset, config: RefreshConfig = RefreshConfig(),
                      seen_before: set[str] | None = None) -> tuple[BundleParts | None, dict]:
    """The parts with `purchases` (lines after the version's watermark) folded in; None when nothing changes.

    seen_before: the ids of the accounts that bought before the version (with
    `known_accounts_only`, the others' lines are held back; None: all count).
    """
    record: dict = {}
    keep = np.ones(purchases.n_purchases, bool)
    if config.exclude_users and purchases.n_purchases:
        keep &= ~np.isin(purchases.purchase_user, user_codes(purchases, config.exclude_users))
    if config.known_accounts_only and seen_before is not None and purchases.n_purchases:
        held = ~np.isin(purchases.purchase_user, user_codes(purchases, seen_before)) & keep
        record["lines_of_new_accounts_held_back"] = int(held.sum())
        keep &= ~held
    if not keep.all():
        purchases = subset_purchases(purchases, keep)
    record.update({"lines": int(purchases.n_purchases), "accounts": int(len(np.unique(purchases.purchase_user)))})
    if purchases.n_purchases == 0:
        return None, record
    pos_of = _positions(parts, purchases)
    line_pos = pos_of[purchases.purchase_item]
    record["lines_of_unknown_items"] = int((line_pos < 0).sum())
    items = parts.items
    # distinct buyers and lines per bundle position
    known = line_pos >= 0
    buyer_pairs = np.unique(purchases.purchase_user[known].astype(np.int64) * len(items) + line_pos[known])
    buyers = np.bincount(buyer_pairs % len(items), minlength=len(items))
    lines = np.bincount(line_pos[known], minlength=len(items))
    # co-purchases by distinct accounts, in bundle positions, both directions
    matrix = copurchase_matrix(purchases, config.session_gap_s, None, distinct_users=True).tocoo()
    a, b = pos_of[matrix.row], pos_of[matrix.col]
    ok = (a >= 0) & (b >= 0)
    pairs = (a[ok], b[ok], matrix.data[ok])
    bought_new = (items.index_row < 0) & (buyers > 0)
    fresh = np.flatnonzero(bought_new & (buyers >= config.fold_in.min_buyers))
    record.update({"co_purchases": int(ok.sum() // 2), "fresh_items": int(len(fresh)),
                   "too_few_buyers": int((bought_new & (buyers < config.fold_in.min_buyers)).sum()),
                   "min_buyers": config.fold_in.min_buyers})
    if len(fresh) == 0 and not ok.any():
        return None, record
    if parts.popularity_weight_on != "query" or set(parts.indexes) != {"warm"}:
        record["skipped"] = "bundle format before 3: purchases fold in at the next full training"
        return None, record
    index = parts.indexes["warm"]
    model = parts.model
    prior = index.meta.get("prior_column")
    body = [c for c in range(index.dim) if c != prior]
    indexed = np.flatnonzero(items.index_row >= 0)
    pos_of_row = np.empty(len(indexed), np.int64)
    pos_of_row[items.index_row[indexed]] = indexed
    basis_all = (cold_start_vectors(model, items.feature_codes[pos_of_row])
                 if index.meta.get("query_basis_dim") else None)
    U = index.query_vectors(np.arange(len(indexed)), basis=basis_all)[:, body]
    V = index.candidate_vectors()
    popularity = np.expm1(V[:, prior]) if prior is not None else np.ones(len(V))
    V = V[:, body]

    k = len(fresh)
    number = np.full(len(items), -1, np.int64)
    number[fresh] = np.arange(k)
    fa, fb, fw = pairs
    fit = (number[fa] >= 0) & (items.index_row[fb] >= 0)  # a fresh item and a partner the version indexes
    cold = cold_start_vectors(model, items.feature_codes[fresh]) if k else np.zeros((0, len(body)), np.float32)
    # the candidate side starts at the category's mean candidate vector (the whole index's when none)
    row_category = items.category[pos_of_row].astype(np.int64)
    sums = np.zeros((len(items.category_values), len(body)))
    np.add.at(sums, row_category, V)
    size = np.bincount(row_category, minlength=len(items.category_values))
    fresh_category = items.category[fresh].astype(np.int64)
    start_v = np.where((size[fresh_category] > 0)[:, None],
                       sums[fresh_category] / np.maximum(size[fresh_category], 1)[:, None], V.mean(axis=0))
    u, v, check = fold_in(cold[:, :len(body)], start_v, number[fa[fit]], items.index_row[fb[fit]], fw[fit],
                          U, V, popularity, config.fold_in)
    candidate_rows = np.zeros((k, index.dim), np.float32)
    candidate_rows[:, body] = v
    if prior is not None:
        candidate_rows[:, prior] = np.log1p(lines[fresh])
    query_rows = np.zeros((k, index.dim), np.float32)
    query_rows[:, body] = u
    out = with_fresh_items(parts, fresh, candidate_rows, query_rows,
                           cold if index.meta.get("query_basis_dim") else None,
                           np.log1p(lines[fresh]), pairs, config.top_m)
    newest = int(purchases.purchase_time.max())
    watermark = dict(parts.watermark or {})
    watermark["max_purchased_at"] = max(newest, int(watermark.get("max_purchased_at") or newest))
    watermark["n_purchases"] = int(watermark.get("n_purchases") or 0) + int(known.sum())
    order = fresh[np.argsort(-buyers[fresh], kind="stable")][:config.max_listed]
    record.update({"check": check, "lists_updated": int(len(np.unique(pairs[0]))),
                   "items": [{"item_id": str(items.item_ids[p]), "buyers": int(buyers[p]), "lines": int(lines[p])}
                             for p in order]})
    notes = dict(out.notes)
    notes["refresh"] = record
    return dataclasses.replace(out, watermark=watermark, notes=notes), record


def purchases_since(engine, parts: BundleParts, settings=None) -> Dataset:
    """The catalogue and the purchases after the version's data watermark, from the configured relations.

    The watermark and the lines' times are both whole seconds (rounded the
    same way by the extraction), so "after" is exact: lines of the
    watermark's own second were in the version.
    """
    settings = settings or get_settings()
    since = (parts.watermark or {}).get("max_purchased_at")
    start = None if since is None else dt.datetime.fromtimestamp(int(since) - 1, dt.timezone.utc)
    ds = extract_dataset(engine, items_relation=settings.items_relation,
                         purchases_relation=settings.purchases_relation, since=start)
    return ds if since is None else subset_purchases(ds, ds.purchase_time > int(since))


def refresh(engine, root=None, settings=None, config: RefreshConfig = RefreshConfig(), alias: str = "production",
            index_class=None) -> tuple[str | None, dict]:
    """Publish `<production>.pN`: its full version with the new catalogue items and every purchase since.

    Returns (the patch version, or None when nothing happened since the production version; the record).
    """
    record: dict = {}

    def fold(full, parts, current, catalogue_changed):
        purchases = purchases_since(engine, full.parts, settings)
        newest = int(purchases.purchase_time.max()) if purchases.n_purchases else None
        served_until = (current.parts.watermark or {}).get("max_purchased_at")
        if newest is None or (not catalogue_changed and served_until is not None and newest <= int(served_until)):
            # no purchase since the full version, or the production patch has them all and the catalogue
            # too; a patch rebuilt for new catalogue items folds the purchases in again, or it would lose them
            record.update({"lines": int(purchases.n_purchases), "nothing_since": current.version})
            return None, record
        known = None
        if config.known_accounts_only:
            watermark = (full.parts.watermark or {}).get("max_purchased_at")
            active = np.unique(purchases.purchase_user)
            known = (set() if watermark is None else
                     accounts_seen_before(engine, purchases.user_ids[active], int(watermark) + 0.5,
                                          (settings or get_settings()).purchases_relation))
        out, found = fold_in_purchases(parts, purchases, config, known)
        record.update(found)
        return out, found

    version = publish_patch(engine, root, alias=alias, index_class=index_class, fold_in=fold)
    return version, record
