"""The query client: similar items from a published version, in well under a millisecond.

    from recsys.serving.client import Client
    client = Client.from_registry()                # production alias; or Client.open(path)
    client.similar("item-42", k=10, in_stock_only=True)
    client.similar_batch(["a", "b"], k=10)         # one index search for the whole batch
    client.similar_to_new_item(category="shoes", brand="acme", price=59.0, k=10)

How items are answered
* Items that had purchases when the version was trained are answered from
  their trained vectors. Items of the version without training purchases (and
  items added by a patch version) are answered from their side features, like
  a new item. Only the first kind are returned as neighbours.
* An id the version does not know raises `UnknownItemError` (a KeyError);
  `similar_to_new_item` is the fallback for it: describe the item instead.
* In `similar_to_new_item`, a category/brand/extra value the model never saw
  maps to the "missing" row of its table (it contributes nothing); the
  result's `why["unknown_values"]` says which values were ignored.

Filters (all keyword-only, every query method): `exclude=[ids]`,
`in_stock_only`, `same_category` / `same_brand` (True: same as the query
item, False: different, None: any), `min_price` / `max_price`, and
`price_ratio=(lo, hi)` relative to the query item's price. Filters are
applied inside the index search, so k results come back whenever at least
k items match. Items with unknown price never pass a price filter.

Threads: the loaded version is an immutable snapshot; `refresh()` (and the
daemon thread of `from_registry(refresh_interval_s=...)`) loads a new version
completely before swapping the reference, so queries in flight never fail.
"""
from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, NamedTuple, Sequence

import numpy as np

from recsys.blend import merge_candidates, served_columns
from recsys.errors import UserError
from recsys.serving.bundle import Bundle, cold_start_vectors, open_bundle
from recsys.vectors import ID_FEATURE, PRICE_TIER, Scorer, attention_weights, clean_value, price_tier_codes

log = logging.getLogger(__name__)

MASK_CACHE_SIZE = 512  # filter masks kept per loaded version (bool per indexed item each)


class UnknownItemError(UserError, KeyError):
    """The item id is not in the loaded version."""

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return str(self.args[0]) if self.args else "unknown item"


class NoVersionError(UserError):
    """The registry alias points at no version yet."""


class Neighbor:
    """One similar item: item_id, score, rank (1-based), category, brand, price, in_stock, why.

    why: {"query": how the query was answered, "query_attention": the query
    item's attention weight per component (item_id and side features),
    "shared": side features the result shares with the query; for
    side-feature queries also "unknown_values" and "note"}. The nested
    query_attention dict is shared by the results of one query: treat it as
    read-only. `why` is assembled on first access (a batch of 1,000 queries
    builds 10,000 results; most callers never read it).
    """

    __slots__ = ("item_id", "score", "rank", "category", "brand", "price", "in_stock", "_why", "_query_why",
                 "_shared")

    def __init__(self, item_id: str, score: float, rank: int, category: str | None, brand: str | None,
                 price: float | None, in_stock: bool, why: dict | None = None):
        self.item_id, self.score, self.rank, self.category, self.brand = item_id, score, rank, category, brand
        self.price, self.in_stock = price, in_stock
        self._why, self._query_why, self._shared = why, None, ()

    @classmethod
    def _lazy(cls, item_id, score, rank, category, brand, price, in_stock, query_why: dict, shared: tuple):
        out = cls.__new__(cls)
        out.item_id, out.score, out.rank, out.category, out.brand = item_id, score, rank, category, brand
        out.price, out.in_stock = price, in_stock
        out._why, out._query_why, out._shared = None, query_why, shared
        return out

    @property
    def why(self) -> dict:
        if self._why is None:
            self._why = {**(self._query_why or {}), "shared": list(self._shared)}
        return self._why

    @why.setter
    def why(self, value: dict) -> None:
        self._why = value

    def _fields(self) -> tuple:
        return (self.item_id, self.score, self.rank, self.category, self.brand, self.price, self.in_stock, self.why)

    def __eq__(self, other) -> bool:
        return isinstance(other, Neighbor) and self._fields() == other._fields()

    __hash__ = None  # mutable, like the dataclass it replaces

    def __repr__(self) -> str:
        return (f"Neighbor(item_id={self.item_id!r}, score={self.score!r}, rank={self.rank!r}, "
                f"category={self.category!r}, brand={self.brand!r}, price={self.price!r}, "
                f"in_stock={self.in_stock!r}, why={self.why!r})")


# --------------------------------------------------------------------------- the loaded version
class _Snapshot:
    """One loaded version, prepared for fast queries. Never mutated after construction
    (except its mask cache, which only memoises pure functions of the version)."""

    def __init__(self, bundle: Bundle):
        parts, items = bundle.parts, bundle.parts.items
        self.version, self.path, self.manifest = bundle.version, bundle.path, bundle.manifest
        self.model = parts.model
        self.item_ids: list[str] = items.item_ids.tolist()
        self.position = {item_id: i for i, item_id in enumerate(self.item_ids)}
        cat_values, brand_values = items.category_values, items.brand_values
        self.category_names = [cat_values[c] if c > 0 else None for c in items.category.tolist()]
        self.brand_names = [brand_values[b] if b > 0 else None for b in items.brand.tolist()]
        self.prices = [None if math.isnan(p) else p for p in items.price.astype(np.float64).tolist()]
        self.stock = items.in_stock.tolist()
        self.category = items.category
        self.brand = items.brand
        self.price = items.price
        self.category_lookup = {v: i for i, v in enumerate(cat_values) if i > 0}
        self.brand_lookup = {v: i for i, v in enumerate(brand_values) if i > 0}
        self.feature_lookup = {name: {v: i for i, v in enumerate(values) if i > 0}
                               for name, values in self.model.feature_values.items()}

        self.index_row = items.index_row.astype(np.int64)
        self.index_row_list = self.index_row.tolist()
        indexed = np.flatnonzero(self.index_row >= 0)
        pos_of_row = np.empty(len(indexed), np.int64)
        pos_of_row[self.index_row[indexed]] = indexed
        self.pos_of_row = pos_of_row.tolist()
        self.pos_of_row_array = pos_of_row
        self.item_id_array = np.asarray(self.item_ids, dtype=np.str_)
        self.n_rows = len(pos_of_row)
        # rows from here on were folded in by a refresh (recsys/jobs/refresh.py), not trained
        self.first_folded_row = self.n_rows - int(getattr(parts.indexes["warm"], "meta", {}).get("added_rows", 0))
        self.row_category = items.category[pos_of_row]
        self.row_brand = items.brand[pos_of_row]
        self.row_price = items.price[pos_of_row].astype(np.float64)
        self.row_stock = items.in_stock[pos_of_row]

        self.feature_codes = items.feature_codes
        self.codes_list = [tuple(row) for row in items.feature_codes.tolist()]
        # what a result shows, per index row: (item_id, category, brand, price, in_stock, feature codes)
        self.result_of_row = [(self.item_ids[p], self.category_names[p], self.brand_names[p], self.prices[p],
                               self.stock[p], self.codes_list[p]) for p in self.pos_of_row]
        self.feature_names = list(self.model.feature_names)
        component_names = [ID_FEATURE, *self.feature_names]
        weights = attention_weights(items.attention_logits, items.feature_codes).tolist()
        self._attention = weights
        self._component_names = component_names
        self.warm_index = parts.indexes["warm"]
        self.cold_index = parts.indexes.get("cold", self.warm_index)
        self.warm_scorer = Scorer.from_dict(parts.scorers["warm"])
        self.cold_scorer = Scorer.from_dict(parts.scorers.get("cold", parts.scorers["warm"]))
        # formats 1 and 2 weighted popularity on the candidate side: their cold queries carry a 1 there
        self.cold_queries = (self.cold_scorer.query_matrix if parts.popularity_weight_on == "query"
                             else self.cold_scorer.legacy_query_matrix)
        self.can_cold_start = bool(self.feature_names) and self.model.config.get("mode") != "bge"
        self.masks: dict[tuple, np.ndarray] = {}
        self.graph = parts.graph  # the shipped ranking's re-ranking evidence (None: a format-1 bundle)

    # -- explanations ---------------------------------------------------------
    def attention_of(self, pos: int) -> dict:
        return {name: round(w, 4) for name, w in zip(self._component_names, self._attention[pos]) if w > 0}

    # -- filters ----------------------------------------------------------------
    def mask(self, in_stock_only: bool, same_category, category: int, same_brand, brand: int,
             low: float, high: float) -> np.ndarray | None:
        """Allowed indexed items for one filter combination (cached); None = everything."""
        key = (in_stock_only, same_category, category if same_category is not None else 0,
               same_brand, brand if same_brand is not None else 0, low, high)
        cached = self.masks.get(key)
        if cached is not None or key in self.masks:
            return cached
        allowed = None
        if in_stock_only:
            allowed = self.row_stock.copy()
        if same_category is not None:
            m = (self.row_category == category) if same_category else (self.row_category != category)
            allowed = m if allowed is None else allowed & m
        if same_brand is not None:
            m = (self.row_brand == brand) if same_brand else (self.row_brand != brand)
            allowed = m if allowed is None else allowed & m
        if low > -math.inf or high < math.inf:
            m = (self.row_price >= low) & (self.row_price <= high)
            allowed = m if allowed is None else allowed & m
        if len(self.masks) >= MASK_CACHE_SIZE:
            self.masks.clear()
        self.masks[key] = allowed
        return allowed

    def excluded_rows(self, exclude: Iterable[str]) -> list[int]:
        rows = []
        for item_id in exclude:
            pos = self.position.get(str(item_id))
            if pos is not None and self.index_row_list[pos] >= 0:
                rows.append(self.index_row_list[pos])
        return rows


@dataclass(frozen=True)
class _Filters:
    exclude: tuple = ()
    in_stock_only: bool = False
    same_category: bool | None = None
    same_brand: bool | None = None
    min_price: float | None = None
    max_price: float | None = None
    price_ratio: tuple[float, float] | None = None

    @property
    def relative(self) -> bool:
        return self.same_category is not None or self.same_brand is not None or self.price_ratio is not None

    def validate(self) -> "_Filters":
        for name in ("same_category", "same_brand"):
            if getattr(self, name) not in (None, True, False):
                raise ValueError(f"{name} must be True, False or None, got {getattr(self, name)!r}")
        for name in ("min_price", "max_price"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        if self.min_price is not None and self.max_price is not None and self.min_price > self.max_price:
            raise ValueError(f"min_price {self.min_price} is above max_price {self.max_price}")
        if self.price_ratio is not None:
            if isinstance(self.price_ratio, (str, bytes)) or not hasattr(self.price_ratio, "__len__"):
                raise ValueError(f"price_ratio must be a pair (lo, hi) such as (0.5, 2.0), got {self.price_ratio!r}")
            ratio = tuple(self.price_ratio)
            if len(ratio) != 2 or not all(isinstance(r, (int, float)) and math.isfinite(r) and r >= 0 for r in ratio) \
                    or ratio[0] > ratio[1]:
                raise ValueError(f"price_ratio must be (lo, hi) with 0 <= lo <= hi, got {self.price_ratio!r}")
        return self


def _check_k(k) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return int(k)


class _Query:
    """One query: the item (or description) it is about, and how to search for it."""

    __slots__ = ("label", "pos", "row", "codes", "category", "brand", "price", "why")

    def __init__(self, label, pos, row, codes, category, brand, price, why):
        self.label, self.pos, self.row, self.codes = label, pos, row, codes
        self.category, self.brand, self.price, self.why = category, brand, price, why


# --------------------------------------------------------------------------- the client
class Client:
    """Similar-items queries against one loaded version (see the module docstring)."""

    def __init__(self, bundle: Bundle, *, engine=None, alias: str | None = None,
                 refresh_interval_s: float | None = None, verify: bool = True, index_class=None):
        self._snapshot = _Snapshot(bundle)
        self._engine, self._alias, self._verify, self._index_class = engine, alias, verify, index_class
        self._refresh_lock = threading.Lock()
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self.last_refresh_error: Exception | None = None
        self.refresh_interval_s = refresh_interval_s
        if engine is not None and refresh_interval_s:
            self._watcher = threading.Thread(target=self._watch, name="recsys-client-refresh", daemon=True)
            self._watcher.start()

    # -- construction -------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path, verify: bool = True, index_class=None) -> "Client":
        """A client on one bundle folder (no registry, no reloading)."""
        return cls(open_bundle(path, verify=verify, index_class=index_class), verify=verify, index_class=index_class)

    @classmethod
    def from_registry(cls, alias: str = "production", database_url: str | None = None,
                      refresh_interval_s: float | None = 30, *, engine=None, verify: bool = True,
                      index_class=None) -> "Client":
        """A client on the version an alias points at; follows the alias when it moves.

        Every `refresh_interval_s` seconds (None/0: never; call `refresh()`)
        a daemon thread checks the alias and loads a new version in the
        background. database_url: default RECSYS_DATABASE_URL, else the
        embedded Postgres.
        """
        # The registry (SQLAlchemy, pandas, the database settings) loads only here and in refresh():
        # Client.open serves a bundle folder without them, and starts faster.
        from recsys.config import get_settings
        from recsys.ingest.db import get_engine, normalise_url
        from recsys.serving.registry import get_alias

        if engine is None:
            engine = (get_engine(url=normalise_url(database_url)) if database_url
                      else get_engine(get_settings()))
        info = get_alias(engine, alias)
        if info is None:
            raise NoVersionError(f"No {alias} version yet: run `recsys train` to train and publish one"
                                 + (" (or `recsys promote VERSION`)." if alias == "production" else "."))
        bundle = open_bundle(info.path, verify=verify, index_class=index_class)
        return cls(bundle, engine=engine, alias=alias, refresh_interval_s=refresh_interval_s, verify=verify,
                   index_class=index_class)

    @property
    def version(self) -> str:
        return self._snapshot.version

    @property
    def manifest(self) -> dict:
        return self._snapshot.manifest

    def __len__(self) -> int:
        return len(self._snapshot.item_ids)

    def __contains__(self, item_id) -> bool:
        return str(item_id) in self._snapshot.position

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop the refresh thread (queries keep working on the loaded version)."""
        self._stop.set()
        if self._watcher is not None and self._watcher is not threading.current_thread():
            self._watcher.join(timeout=5)

    # -- reloading ----------------------------------------------------------------
    def refresh(self) -> bool:
        """Load the alias's version if it moved; True when a new version was swapped in.

        The new version is opened and verified completely before the swap;
        on any error the current version stays.
        """
        if self._engine is None:
            return False
        from recsys.serving.registry import alias_version, get_version  # see from_registry

        with self._refresh_lock:
            version = alias_version(self._engine, self._alias)
            if version is None or version == self._snapshot.version:
                return False
            info = get_version(self._engine, version)
            snapshot = _Snapshot(open_bundle(info.path, verify=self._verify, index_class=self._index_class))
            self._snapshot = snapshot  # one reference assignment: queries see the old or the new, never a mix
            log.info("recsys client: now serving %s", version)
            return True

    def _watch(self) -> None:
        while not self._stop.wait(self.refresh_interval_s):
            try:
                self.refresh()
                self.last_refresh_error = None
            except Exception as exc:  # keep serving the loaded version; try again next time
                self.last_refresh_error = exc
                log.warning("recsys client: refresh failed, still serving %s: %s", self._snapshot.version, exc)

    # -- queries --------------------------------------------------------------------
    def similar(self, item_id: str, k: int = 10, *, exclude: Sequence[str] = (), in_stock_only: bool = False,
                same_category: bool | None = None, same_brand: bool | None = None, min_price: float | None = None,
                max_price: float | None = None, price_ratio: tuple[float, float] | None = None) -> list[Neighbor]:
        """The k items most similar to `item_id` (never the item itself)."""
        snap = self._snapshot
        filters = (_Filters(_ids(exclude), in_stock_only, same_category, same_brand, min_price, max_price,
                            price_ratio).validate()
                   if (exclude or in_stock_only or same_category is not None or same_brand is not None
                       or min_price is not None or max_price is not None or price_ratio is not None) else None)
        k = _check_k(k)
        return _finish(snap, _run(snap, [_item_query(snap, item_id)], k, filters)[0], k, filters)

    def similar_batch(self, item_ids: Sequence[str], k: int = 10, *, as_arrays: bool = False,
                      **filters) -> list[list[Neighbor]] | SimilarArrays:
        """`similar` for many items: one index search per filter group (one without relative filters).

        as_arrays=True returns a `SimilarArrays` (item ids and scores as (n, k)
        numpy arrays, padded where fewer than k items match) instead of
        Neighbor objects: the same results without their per-result Python cost.
        """
        if isinstance(item_ids, (str, bytes)):
            raise TypeError(f"similar_batch takes a list of item ids, got the string {item_ids!r}; "
                            f"use similar({item_ids!r}) for one item, or similar_batch([{item_ids!r}])")
        snap = self._snapshot
        queries = [_item_query(snap, item_id) for item_id in item_ids]
        k, checked = _check_k(k), _filters(filters)
        if as_arrays:
            return _arrays(snap, queries, *_search(snap, queries, k, checked), k)
        return [_finish(snap, result, k, checked) for result in _run(snap, queries, k, checked)]

    def similar_to_new_item(self, category: str | None = None, brand: str | None = None, price: float | None = None,
                            k: int = 10, *, exclude: Sequence[str] = (), in_stock_only: bool = False,
                            same_category: bool | None = None, same_brand: bool | None = None,
                            min_price: float | None = None, max_price: float | None = None,
                            price_ratio: tuple[float, float] | None = None, strict: bool = False,
                            **extra_side_features) -> list[Neighbor]:
        """Items similar to a product known only by its side features (cold start).

        Unseen values map to "missing" and are listed in why["unknown_values"];
        extra side features are passed by name (e.g. color="red"). `category`
        may also be a whole catalogue row (a mapping: category, brand, price,
        any other columns, `attributes` as a dict): fields this version does
        not know as side features (title, in_stock, created_at, ...) are
        ignored and listed in why["ignored_fields"]; with strict=True they
        raise ValueError instead.
        """
        snap = self._snapshot
        if isinstance(category, Mapping):
            category, brand, price, extra_side_features = _catalogue_row(category, brand, price, extra_side_features)
        query = _new_item_query(snap, category, brand, price, extra_side_features, strict)
        filters = _Filters(_ids(exclude), in_stock_only, same_category, same_brand, min_price, max_price,
                           price_ratio).validate()
        k = _check_k(k)
        return _finish(snap, _run(snap, [query], k, filters)[0], k, filters)


class SimilarArrays(NamedTuple):
    """Results of `similar_batch(..., as_arrays=True)`, row j for the j-th query.

    item_ids: (n, k) str array, "" past a row's results; scores: (n, k)
    float32, NaN past them; counts: (n,) results per row (< k only when fewer
    items match the filters or exist).
    """

    item_ids: np.ndarray
    scores: np.ndarray
    counts: np.ndarray


class NeighborList(list):
    """The results of one query (a list of Neighbor); `reason` says why there are fewer than k."""

    reason: str | None = None


def _finish(snap: "_Snapshot", neighbors: list, k: int, filters) -> NeighborList:
    """The results with the reason for a short result."""
    out = NeighborList(neighbors)
    if len(out) < k:
        active = filters is not None and any(
            getattr(filters, name) not in (None, False, ()) for name in _Filters.__dataclass_fields__)
        if active:
            out.reason = (f"Only {len(out)} item(s) of version {snap.version} match the filters"
                          + (": no item does." if not out else "."))
        else:
            out.reason = (f"Only {len(out)} item(s): version {snap.version} has no other items with a trained "
                          "vector to return (items bought only after training, or never, are not returned "
                          "as neighbours).")
    return out


def _ids(exclude) -> tuple:
    """exclude as a tuple of ids (a single id string is one id, not its characters)."""
    return (exclude,) if isinstance(exclude, str) else tuple(exclude)


def _filters(kwargs: dict) -> _Filters | None:
    if not kwargs:
        return None
    known = set(_Filters.__dataclass_fields__)
    unknown = set(kwargs) - known
    if unknown:
        raise TypeError(f"unknown filter(s) {sorted(unknown)}; filters are {sorted(known)}")
    kwargs = dict(kwargs)
    kwargs["exclude"] = _ids(kwargs.get("exclude") or ())
    return _Filters(**kwargs).validate()


# --------------------------------------------------------------------------- building queries
def _item_query(snap: _Snapshot, item_id) -> _Query:
    pos = snap.position.get(item_id)
    if pos is None:
        pos = snap.position.get(str(item_id))
        if pos is None:
            raise UnknownItemError(
                f"Item {item_id!r} is not in version {snap.version} ({len(snap.item_ids):,} items). It may be newer "
                "than the version: describe it with similar_to_new_item(category=..., brand=..., price=...) "
                "(CLI: recsys similar --category C ...), or wait for the next version.")
    row = snap.index_row_list[pos]
    if row >= snap.first_folded_row:
        why = {"query": "vector learned from purchases since the version was trained (refresh)",
               "query_attention": _side_weights(snap, snap.codes_list[pos])}
    elif row >= 0:
        why = {"query": "trained item vector", "query_attention": snap.attention_of(pos)}
    else:
        if not snap.can_cold_start:
            raise UserError(f"Item {item_id!r} had no purchases when version {snap.version} was trained, and this "
                            "model has no side-feature embeddings to describe it with.")
        why = {"query": "side features (no purchases when the version was trained)",
               "query_attention": _side_weights(snap, snap.codes_list[pos])}
    return _Query(item_id, pos, row, snap.codes_list[pos], int(snap.category[pos]), int(snap.brand[pos]),
                  snap.prices[pos], why)


def _catalogue_row(row: Mapping, brand, price, extras: dict) -> tuple:
    """(category, brand, price, other fields) of a catalogue row; declared extras may sit in `attributes`."""
    fields = dict(row)
    attributes = fields.pop("attributes", None)
    if isinstance(attributes, Mapping):
        fields = {**attributes, **fields}
    elif attributes is not None:
        fields["attributes"] = attributes
    category = fields.pop("category", None)
    brand = fields.pop("brand", brand)
    price = fields.pop("price", price)
    if price is not None and not isinstance(price, (int, float)):
        try:
            price = float(price)  # Decimal from a database row, or a numeric string
        except (TypeError, ValueError):
            raise ValueError(f"price must be a number >= 0 (or None when unknown), got {price!r}") from None
    return category, brand, price, {**fields, **extras}


def _new_item_query(snap: _Snapshot, category, brand, price, extras: dict, strict: bool = False) -> _Query:
    if not snap.can_cold_start:
        raise UserError(f"Version {snap.version}'s model ({snap.model.config.get('mode')}) has no side-feature "
                        "embeddings, so it cannot describe new items; train with mode 'eges' or 'ges'.")
    known_extras = [n for n in snap.feature_names if n not in ("category", "brand", PRICE_TIER)]
    unexpected = sorted(set(extras) - set(known_extras))
    if unexpected and strict:
        raise ValueError(f"unknown side feature(s) {unexpected}; this version knows "
                         f"{known_extras or 'no extra side features'} besides category, brand and price")
    extras = {name: value for name, value in extras.items() if name in known_extras}
    if price is not None and (isinstance(price, bool) or not isinstance(price, (int, float))
                              or not math.isfinite(price) or price < 0):
        raise ValueError(f"price must be a finite number >= 0 (or None when unknown), got {price!r}")
    given = {"category": category, "brand": brand, **extras}
    unknown: dict[str, str] = {}
    codes = []
    for name in snap.feature_names:
        if name == PRICE_TIER:
            codes.append(int(price_tier_codes([np.nan if price is None else price], snap.model.price_tier_edges)[0]))
            continue
        value = clean_value(given.get(name))
        code = snap.feature_lookup[name].get(value, 0) if value is not None else 0
        if value is not None and code == 0:
            unknown[name] = value
        codes.append(code)
    for name in ("category", "brand"):  # values the model dropped (no table) still count as not used
        value = clean_value(given.get(name))
        if value is not None and name not in snap.feature_names:
            unknown[name] = value
    codes = tuple(codes)
    why = {"query": "side features (new item)", "query_attention": _side_weights(snap, codes)}
    if unexpected:
        why["ignored_fields"] = unexpected  # not side features of this version
    if unknown:
        why["unknown_values"] = unknown
        why["note"] = ("values this version never saw were treated as missing: "
                       + ", ".join(f"{k}={v!r}" for k, v in unknown.items()))
    if not any(codes):
        why["note"] = ("no side feature this version knows was given: the ranking carries no similarity "
                       "signal (only the scorer's popularity term, if any)")
    cat = snap.category_lookup.get(clean_value(category), -1) if clean_value(category) is not None else 0
    brand_code = snap.brand_lookup.get(clean_value(brand), -1) if clean_value(brand) is not None else 0
    label = f"new item (category={category!r}, brand={brand!r}, price={price!r})"
    return _Query(label, -1, -1, codes, cat, brand_code,
                  None if price is None or math.isnan(price) else float(price), why)


def _side_weights(snap: _Snapshot, codes: tuple):
    present = [name for name, c in zip(snap.feature_names, codes) if c]
    return {name: round(1.0 / len(present), 4) for name in present}


# --------------------------------------------------------------------------- searching
def _price_bounds(query: _Query, filters: _Filters) -> tuple[float, float]:
    low = filters.min_price if filters.min_price is not None else -math.inf
    high = filters.max_price if filters.max_price is not None else math.inf
    if filters.price_ratio is not None:
        if query.price is None:
            raise ValueError(f"price_ratio needs the query's price, and {query.label!r} has none; "
                             "use min_price/max_price instead")
        low = max(low, filters.price_ratio[0] * query.price)
        high = min(high, filters.price_ratio[1] * query.price)
    return low, high


def _query_mask(snap: _Snapshot, query: _Query, filters: _Filters | None) -> np.ndarray | None:
    if filters is None:
        return None
    for flag, code, what in ((filters.same_category, query.category, "category"),
                             (filters.same_brand, query.brand, "brand")):
        if flag and code == 0:
            raise ValueError(f"same_{what}=True needs the query's {what}, and {query.label!r} has none")
        if flag and code < 0:
            raise ValueError(f"same_{what}=True: no item of this version has the {what} of {query.label!r}")
    low, high = _price_bounds(query, filters)
    return snap.mask(filters.in_stock_only, filters.same_category, query.category, filters.same_brand,
                     query.brand, low, high)


def _run(snap: _Snapshot, queries: list[_Query], k: int, filters: _Filters | None) -> list[list[Neighbor]]:
    """Answer queries as Neighbor lists."""
    scores, rows = _search(snap, queries, k, filters)
    scores_list, rows_list = scores.tolist(), rows.tolist()
    return [_neighbors(snap, q, scores_list[j], rows_list[j], k) for j, q in enumerate(queries)]


def _arrays(snap: _Snapshot, queries: list[_Query], scores: np.ndarray, rows: np.ndarray, k: int) -> SimilarArrays:
    """The first k results of each row that are not the query item, as arrays."""
    anchors = np.fromiter((q.row for q in queries), np.int64, len(queries))
    keep = (rows >= 0) & (rows != anchors[:, None])
    order = np.argsort(~keep, axis=1, kind="stable")[:, :k]
    rows, keep = np.take_along_axis(rows, order, 1), np.take_along_axis(keep, order, 1)
    scores = np.take_along_axis(scores, order, 1).astype(np.float32)
    ids = snap.item_id_array[snap.pos_of_row_array[np.maximum(rows, 0)]]
    pad = np.zeros((len(queries), max(0, k - rows.shape[1])), bool)
    keep = np.concatenate([keep, pad], axis=1)
    ids = np.concatenate([ids, np.zeros(pad.shape, ids.dtype)], axis=1)
    scores = np.concatenate([scores, np.full(pad.shape, np.nan, np.float32)], axis=1)
    return SimilarArrays(np.where(keep, ids, ""), np.where(keep, scores, np.float32(np.nan)),
                         keep.sum(axis=1).astype(np.int64))


def _search(snap: _Snapshot, queries: list[_Query], k: int, filters: _Filters | None) -> tuple[np.ndarray, np.ndarray]:
    """(scores, index rows), each (n_queries, k + 1), -inf / -1 past a row's results (warm rows may hold
    the query item itself: callers drop it). Queries are grouped by (vector source, allowed mask) and
    each group is searched once."""
    groups: dict[tuple, list[int]] = {}
    masks: dict[tuple, np.ndarray | None] = {}
    excluded = snap.excluded_rows(filters.exclude) if filters is not None and filters.exclude else []
    # id(cached mask) -> (that mask, it minus the excluded items); holding the mask keeps its id unique
    with_exclusions: dict[int, tuple] = {}
    for qi, query in enumerate(queries):
        mask = _query_mask(snap, query, filters)
        if excluded:
            base = id(mask)
            if base not in with_exclusions:
                allowed = np.ones(snap.n_rows, bool) if mask is None else mask.copy()
                allowed[excluded] = False
                with_exclusions[base] = (mask, allowed)
            mask = with_exclusions[base][1]
        key = (query.row >= 0, id(mask) if mask is not None else None)
        masks[key] = mask
        groups.setdefault(key, []).append(qi)
    width = min(k + 1, snap.n_rows)
    out_scores = np.full((len(queries), width), -np.inf, np.float32)
    out_rows = np.full((len(queries), width), -1, np.int64)
    for key, members in groups.items():
        warm = key[0]
        if warm:
            rows = np.fromiter((queries[i].row for i in members), np.int64, len(members))
            basis = None
            if snap.warm_index.meta.get("query_basis_dim"):  # the query side is a residual over side features
                positions = np.fromiter((queries[i].pos for i in members), np.int64, len(members))
                basis = cold_start_vectors(snap.model, snap.feature_codes[positions])
            vectors = snap.warm_index.query_vectors(rows, basis=basis)
            index, extra = snap.warm_index, 1  # the query item itself comes back: ask one more
        else:
            codes = np.asarray([queries[i].codes for i in members], dtype=np.int64).reshape(len(members), -1)
            vectors = snap.cold_queries(cold_start_vectors(snap.model, codes))
            index, extra = snap.cold_index, 0
        n_search = min(k + extra, snap.n_rows)
        if snap.graph is None:
            scores, rows = index.search(vectors, n_search, allowed=masks[key])
        else:
            anchors = [queries[i].pos if warm else queries[i].category for i in members]
            brands = np.fromiter((queries[i].brand for i in members), np.int64, len(members))
            scores, rows = _blended_search(snap, index, vectors, np.asarray(anchors, np.int64), brands, warm,
                                           n_search, masks[key])
        scores, rows = np.asarray(scores), np.asarray(rows)
        take = min(width, rows.shape[1])
        members_at = np.asarray(members, np.int64)
        out_scores[members_at, :take], out_rows[members_at, :take] = scores[:, :take], rows[:, :take]
    return out_scores, out_rows


def _blended_search(snap: _Snapshot, index, vectors: np.ndarray, anchors: np.ndarray, brands: np.ndarray,
                    warm: bool, n: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """The shipped ranking (recsys/blend.py): the index's pool plus each anchor's co-purchases, re-ranked."""
    graph = snap.graph
    blend = graph.warm if warm else graph.cold
    lists = graph.item_partners if warm else graph.category_partners
    extra = 1 if warm else 0  # a warm query's own item comes back from the index
    pool = index.candidate_pool(vectors, max(n, blend.pool + extra), allowed=allowed)
    partners, weight = lists.padded_with_weights(anchors)  # in every pool, as in the evaluation's

    def allow(rows: np.ndarray) -> np.ndarray:  # (the index's pool already honours the filter)
        return rows if allowed is None else np.where((rows >= 0) & allowed[np.maximum(rows, 0)], rows, -1)

    if not warm:  # a new item's own kind: its category's best sellers
        pool = np.concatenate([pool, allow(graph.category_members.padded(anchors))], axis=1)
    partners = allow(partners)
    candidates, copurchase = merge_candidates(pool, partners, weight)  # each candidate once, ascending
    if warm:  # the query's own item is no answer: out of the ranking (an interleaved one counts places)
        candidates[candidates == snap.index_row[anchors][:, None]] = -1
    valid = candidates >= 0
    safe = np.maximum(candidates, 0)
    query_category = snap.category[anchors] if warm else anchors
    same = (snap.row_category[safe] == query_category[:, None]) & (query_category[:, None] > 0)
    same_brand = ((snap.row_brand[safe] == brands[:, None]) & (brands[:, None] > 0)) if blend.uses_brand else 0.0
    if warm:
        support = graph.log_popularity[snap.index_row[anchors]]
    else:
        known = (anchors > 0) & (anchors < len(graph.category_support))
        support = np.where(known, graph.category_support[np.where(known, anchors, 0)], 0.0)
    scores = blend.score(index.score_candidates(vectors, candidates), graph.log_popularity[safe], copurchase, same,
                         support[:, None].astype(np.float32), same_brand)
    take = min(n, candidates.shape[1])
    # the pool in the order served (recsys/blend.py: by blended score, ties to the lower row; or interleaved)
    top = served_columns(scores, copurchase, valid, blend.interleave, take)
    found = top >= 0
    rows = np.where(found, np.take_along_axis(candidates, np.maximum(top, 0), 1), -1)
    if blend.interleave:  # an interleaved list's scores: minus the place (0, -1, ...), an order
        scores = np.broadcast_to(-np.arange(take, dtype=np.float32), top.shape)
    else:
        scores = np.take_along_axis(scores, np.maximum(top, 0), 1)
    return np.where(found, scores, -np.inf), rows


def _neighbors(snap: _Snapshot, query: _Query, scores: list[float], rows: list[int], k: int) -> list[Neighbor]:
    out: list[Neighbor] = []
    why_base, anchor, query_codes = query.why, query.row, query.codes
    names, result_of_row, lazy = snap.feature_names, snap.result_of_row, Neighbor._lazy
    shared_of: dict[tuple, tuple] = {}  # the shared features, by the result's codes (often repeated)
    rank = 0
    for score, row in zip(scores, rows):
        if row < 0 or row == anchor:
            continue
        item_id, category, brand, price, stock, codes = result_of_row[row]
        shared = shared_of.get(codes)
        if shared is None:
            shared = shared_of[codes] = tuple(n for n, a, b in zip(names, query_codes, codes) if a and a == b)
        rank += 1
        out.append(lazy(item_id, score, rank, category, brand, price, stock, why_base, shared))
        if rank == k:
            break
    return out
