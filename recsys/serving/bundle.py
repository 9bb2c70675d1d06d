"""Versioned index bundles: one immutable folder per published model version.

A bundle holds everything the query client needs and nothing it must unpickle:

    <root>/<version>/
        manifest.json              format, model config, watermark, counts, metrics,
                                   and the sha256 + size of every other file
        index/warm/...             SimilarityIndex files (FAISS binary, .npy, .json)
        index/cold/...             only when cold start scores with another scorer
        items/*.npy, items/vocab.json   id map (index order), filter metadata, model
                                   feature codes and attention logits per item
        model/*.npy, model/features.json   side-feature tables, vocabularies, price
                                   tier edges, cold-start map: cold start needs these

Items that had no training purchases (and items added by a patch version) are
in the id map and can be *queried* from their side features, but they are not
in the index, so they are never returned as neighbours: they have no trained
candidate vector yet. The next full training run makes them candidates.

This module is the format: the parts in memory, writing them (through a
`recsys/serving/store.py` store: atomic, never replacing a version) and
opening them again. `open_bundle` checks the file list and every checksum, so
a damaged bundle is refused (`BundleCorruptError` names the file). Loading
uses allow_pickle=False. Patch versions are `recsys/serving/patch.py`.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from recsys import vectors
from recsys.blend import Blend, CoPurchases
from recsys.jsonsafe import json_safe as _json_safe
from recsys.serving.index import SimilarityIndex, build_scorer_indexes
from recsys.serving.store import (BundleError, BundleExistsError, StepCallback, as_store, check_version_name,
                                  new_version_name, step)
from recsys.vectors import Scorer

# 2: the shipped ranking's graph evidence (graph/, manifest "graph"); format 1 bundles (no graph/) still open
# 3: the popularity weight on the query side (`Scorer`): warm and cold share one candidate index
FORMAT_VERSION = 3
READABLE_FORMATS = (1, 2, 3)
MANIFEST = "manifest.json"
# Every file of a bundle has one of these suffixes: arrays, JSON, FAISS binaries. No pickle.
ALLOWED_SUFFIXES = (".npy", ".json", ".faiss", ".index", ".bin", ".svg")


class BundleCorruptError(BundleError):
    """A bundle's files do not match its manifest (damaged, truncated, edited)."""

    def __init__(self, path: str | Path, file: str, problem: str):
        self.path, self.file, self.problem = str(path), file, problem
        super().__init__(f"Bundle {self.path} is damaged: {file}: {problem}. Do not serve it; publish the "
                         "version again (or roll back to another one).")


# --------------------------------------------------------------------------- parts
@dataclass
class ItemTable:
    """The catalogue of a version, in id-map order (position = item number)."""

    item_ids: np.ndarray  # str, (n,)
    category: np.ndarray  # int32 codes into category_values, 0 = missing
    category_values: list[str]
    brand: np.ndarray  # int32 codes into brand_values, 0 = missing
    brand_values: list[str]
    price: np.ndarray  # float32, NaN = unknown
    in_stock: np.ndarray  # bool
    feature_codes: np.ndarray  # int32 (n, F): codes into the model's side-feature tables
    attention_logits: np.ndarray  # float32 (n, 1 + F): a_v (id first); meaningful for indexed items
    index_row: np.ndarray  # int32 (n,): row in the index, -1 = not a candidate (query by side features)

    def __len__(self) -> int:
        return len(self.item_ids)

    def validate(self) -> None:
        n = len(self.item_ids)
        for name in ("category", "brand", "price", "in_stock", "feature_codes", "attention_logits", "index_row"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"ItemTable.{name} has {len(getattr(self, name))} rows, expected {n}")
        if len(set(self.item_ids.tolist())) != n:
            raise ValueError("ItemTable.item_ids has duplicates")
        for name, values in (("category", self.category_values), ("brand", self.brand_values)):
            codes = getattr(self, name)
            if n and (codes.min() < 0 or codes.max() >= len(values)):
                raise ValueError(f"ItemTable.{name} has codes outside 0..{len(values) - 1}")
        if self.attention_logits.shape[1:] != (self.feature_codes.shape[1] + 1,):
            raise ValueError(f"ItemTable.attention_logits must be (n, {self.feature_codes.shape[1] + 1}), "
                             f"got {self.attention_logits.shape}")
        rows = self.index_row[self.index_row >= 0]
        if len(np.unique(rows)) != len(rows) or (len(rows) and rows.max() != len(rows) - 1):
            raise ValueError("ItemTable.index_row must number the indexed items 0..m-1, each once")


@dataclass
class ModelTables:
    """What cold start needs from the trained model (numpy only)."""

    feature_names: list[str]
    feature_values: dict[str, list[str]]
    side_tables: dict[str, np.ndarray]  # name -> (cardinality, dim) float32, row 0 = missing
    price_tier_edges: np.ndarray  # float64
    config: dict  # the TrainConfig as a dict (mode, cold_start, dim, ...)
    cold_map: np.ndarray | None = None  # ridge map, (F * dim + 1, dim)

    @property
    def dim(self) -> int:
        return int(self.config.get("dim") or next(iter(self.side_tables.values())).shape[1])

    @property
    def tables_in_order(self) -> list[np.ndarray]:
        """Side-feature tables in code-column order (none for a bge model)."""
        if self.config.get("mode") == "bge":
            return []
        return [self.side_tables[name] for name in self.feature_names]

    @property
    def active_cold_map(self) -> np.ndarray | None:
        """The ridge map when the model's cold start uses it."""
        return self.cold_map if self.config.get("cold_start") == "ridge" else None


@dataclass
class BundleParts:
    """Everything a version folder holds, in memory."""

    items: ItemTable
    model: ModelTables
    indexes: dict[str, Any]  # "warm" (required), "cold" (when the cold scorer differs): SimilarityIndex
    scorers: dict[str, dict]  # {"warm": {"kind", "beta"}, "cold": {...}}
    metrics: dict = field(default_factory=dict)
    watermark: dict = field(default_factory=dict)
    kind: str = "full"  # "full" | "patch"
    parent_version: str | None = None
    notes: dict = field(default_factory=dict)  # free-form, JSON-able (e.g. patch item counts)
    # report files stored beside the model (e.g. "plots/loss_curve.svg"); checksummed like the rest
    extra_files: dict[str, bytes] = field(default_factory=dict)
    graph: GraphEvidence | None = None  # the re-ranking blend and its co-purchase lists (format 2)
    # where the inout_prior scorers' popularity weight is: "query" (format 3: warm and cold share the
    # candidate codes) or "candidates" (formats 1 and 2, whose patches keep it)
    popularity_weight_on: str = "query"
    # the run's check of its index against exact search (recsys/jobs/index_check.py); None = unchecked
    index_check: dict | None = None
    # how the version was made (recsys/jobs/execution.py): task runner, Dask workers, ...
    execution: dict | None = None

    def validate(self) -> None:
        self.items.validate()
        if self.graph is not None:
            self.graph.validate(int((self.items.index_row >= 0).sum()), len(self.items),
                                len(self.items.category_values))
        if "warm" not in self.indexes:
            raise ValueError("BundleParts.indexes needs a 'warm' index")
        if set(self.indexes) - {"warm", "cold"}:
            raise ValueError(f"BundleParts.indexes may hold 'warm' and 'cold', got {sorted(self.indexes)}")
        for name in ("warm", "cold"):
            if name in self.indexes and name not in self.scorers:
                raise ValueError(f"BundleParts.scorers has no entry for the {name!r} index")
        if self.popularity_weight_on not in ("query", "candidates"):
            raise ValueError(f"BundleParts.popularity_weight_on must be 'query' or 'candidates', "
                             f"got {self.popularity_weight_on!r}")
        if self.kind not in ("full", "patch"):
            raise ValueError(f"BundleParts.kind must be 'full' or 'patch', got {self.kind!r}")
        if self.kind == "patch" and not self.parent_version:
            raise ValueError("a patch bundle needs parent_version")
        n_indexed = int((self.items.index_row >= 0).sum())
        for name, index in self.indexes.items():
            size = _index_size(index)
            if size is not None and size != n_indexed:
                raise ValueError(f"the {name} index holds {size} items but {n_indexed} items have an index_row")
        if self.items.feature_codes.shape[1] != len(self.model.feature_names):
            raise ValueError("ItemTable.feature_codes columns must match ModelTables.feature_names")


@dataclass
class GraphEvidence:
    """What the shipped ranking re-ranks with (recsys/blend.py): the blends and the co-purchase lists.

    item_partners: anchors = item positions, partners = index rows; category_partners: anchors =
    category codes; log_popularity: per index row.
    """

    warm: Blend
    cold: Blend
    item_partners: CoPurchases
    category_partners: CoPurchases
    log_popularity: np.ndarray  # float32 (n_indexed,)
    category_support: np.ndarray  # float32 (n_categories,): log(1 + purchase lines of the category's items)
    category_members: CoPurchases  # per category code: its best sellers (index rows), in a new item's pool
    choice: dict = field(default_factory=dict)  # how the blend was chosen (candidates, validation numbers)

    def validate(self, n_indexed: int, n_items: int, n_categories: int) -> None:
        for name, lists, anchors in (("item_partners", self.item_partners, n_items),
                                     ("category_partners", self.category_partners, n_categories),
                                     ("category_members", self.category_members, n_categories)):
            if lists.n_candidates != n_indexed:
                raise ValueError(f"GraphEvidence.{name} numbers {lists.n_candidates} candidates, the index {n_indexed}")
            if lists.n_anchors > anchors:
                raise ValueError(f"GraphEvidence.{name} has {lists.n_anchors} anchors, more than {anchors}")
            if len(lists.items) and (lists.items.min() < 0 or lists.items.max() >= n_indexed):
                raise ValueError(f"GraphEvidence.{name} lists partners outside the index")
        if len(self.category_support) > n_categories:
            raise ValueError(f"GraphEvidence.category_support has {len(self.category_support)} rows, more than "
                             f"{n_categories} categories")
        if len(self.log_popularity) != n_indexed:
            raise ValueError(f"GraphEvidence.log_popularity has {len(self.log_popularity)} rows, expected {n_indexed}")

    @classmethod
    def from_positions(cls, index_row: np.ndarray, warm: Blend, cold: Blend, item_partners: CoPurchases,
                       category_partners: CoPurchases, log_popularity: np.ndarray, category_support: np.ndarray,
                       category_members: CoPurchases, choice: dict) -> "GraphEvidence":
        """From lists whose partners are item positions (as evaluation computes them) to index rows."""
        index_row = np.asarray(index_row, np.int64)
        n_indexed = int((index_row >= 0).sum())
        pos_of_row = np.empty(n_indexed, np.int64)
        pos_of_row[index_row[index_row >= 0]] = np.flatnonzero(index_row >= 0)
        return cls(warm, cold, item_partners.remap(index_row, n_indexed), category_partners.remap(index_row, n_indexed),
                   np.asarray(log_popularity, np.float32)[pos_of_row], np.asarray(category_support, np.float32),
                   category_members.remap(index_row, n_indexed), _json_safe(choice))

    def manifest_entry(self) -> dict:
        return {"warm": self.warm.to_dict(), "cold": self.cold.to_dict(), "choice": self.choice,
                "bytes": self.item_partners.nbytes + self.category_partners.nbytes + int(self.log_popularity.nbytes)
                + int(self.category_support.nbytes) + self.category_members.nbytes}


GRAPH_ARRAYS = ("graph/item_indptr.npy", "graph/item_partners.npy", "graph/item_weight.npy",
                "graph/category_indptr.npy", "graph/category_partners.npy", "graph/category_weight.npy",
                "graph/log_popularity.npy", "graph/category_support.npy", "graph/members_indptr.npy",
                "graph/members_partners.npy", "graph/members_weight.npy")


def _index_size(index) -> int | None:
    for attr in ("n_items", "ntotal", "size"):
        value = getattr(index, attr, None)
        if isinstance(value, (int, np.integer)):
            return int(value)
    return None


@dataclass
class Bundle:
    """An opened, verified version folder."""

    path: Path
    version: str
    manifest: dict
    parts: BundleParts

    @property
    def manifest_sha256(self) -> str:
        return hashlib.sha256((self.path / MANIFEST).read_bytes()).hexdigest()


# --------------------------------------------------------------------------- cold start
def cold_start_vectors(model: ModelTables, codes: np.ndarray) -> np.ndarray:
    """Item vectors from side-feature codes alone: `recsys.vectors.cold_start_vectors` with this version's tables."""
    return vectors.cold_start_vectors(model.tables_in_order, codes, model.dim, model.active_cold_map)


# --------------------------------------------------------------------------- building parts

def parts_from_model(trained, ds, warm_scorer: Scorer, cold_scorer: Scorer | None = None, *,
                     log_popularity: np.ndarray | None = None, candidates: np.ndarray | None = None,
                     index_config=None, metrics: dict | None = None, watermark: dict | None = None,
                     index_class=None, indexes: dict | None = None, fill_shards=None) -> BundleParts:
    """Bundle parts of a trained model: builds the index(es) over the candidate items.

    trained: recsys.embed.trained.TrainedModel; ds: the Dataset it was trained
    on (same item order); warm_scorer/cold_scorer: the scorers the recommender
    chose; candidates: items that may be returned as neighbours (default:
    items that appeared in the training walks); indexes: already built over
    those items with `build_scorer_indexes` (the run's index check), else built here.
    """
    n = ds.n_items
    if trained.item_vectors.shape[0] != n:
        raise ValueError(f"the model has {trained.item_vectors.shape[0]} items, the dataset {n}")
    if log_popularity is None:
        log_popularity = vectors.log_popularity(ds.purchase_item, n)
    if candidates is None:
        candidates = np.asarray(trained.item_counts) > 0
    candidates = np.asarray(candidates, dtype=bool)
    if not candidates.any():
        raise ValueError("no candidate items: the model saw no item in its training walks")
    rows = np.flatnonzero(candidates)
    index_row = np.full(n, -1, np.int32)
    index_row[rows] = np.arange(len(rows), dtype=np.int32)
    model = ModelTables(feature_names=list(trained.feature_names),
                        feature_values={k: list(v) for k, v in trained.feature_values.items()},
                        side_tables={k: np.asarray(v, np.float32) for k, v in trained.side_tables.items()},
                        price_tier_edges=np.asarray(trained.price_tier_edges, np.float64),
                        config=_json_safe(dict(trained.config)),
                        cold_map=None if trained.cold_map is None else np.asarray(trained.cold_map, np.float32))
    cold_scorer = cold_scorer or warm_scorer
    if indexes is None:
        indexes = build_scorer_indexes(trained.item_vectors[rows], trained.context_vectors[rows],
                                       log_popularity[rows],
                                       lambda: cold_start_vectors(model, trained.item_feature_codes[rows]),
                                       warm_scorer, cold_scorer, index_config, index_class, fill_shards)
    scorers = {"warm": warm_scorer.to_dict(), "cold": cold_scorer.to_dict()}
    items = ItemTable(
        item_ids=np.asarray([str(x) for x in ds.item_ids.tolist()], dtype=np.str_),
        category=ds.category.codes.astype(np.int32), category_values=list(ds.category.values),
        brand=ds.brand.codes.astype(np.int32), brand_values=list(ds.brand.values),
        price=ds.price.astype(np.float32), in_stock=ds.in_stock.astype(bool),
        feature_codes=np.asarray(trained.item_feature_codes, np.int32).reshape(n, len(model.feature_names)),
        attention_logits=np.asarray(trained.attention_logits, np.float32), index_row=index_row)
    if watermark is None and getattr(ds, "watermark", None) is not None:
        watermark = ds.watermark.as_dict()
    parts = BundleParts(items=items, model=model, indexes=indexes, scorers=scorers, metrics=metrics or {},
                        watermark=watermark or {},
                        notes={"index_config": _config_dict(index_config)})
    parts.validate()
    return parts


def _config_dict(config) -> dict | None:
    if config is None:
        return None
    if dataclasses.is_dataclass(config):
        return _json_safe(dataclasses.asdict(config))
    if isinstance(config, dict):
        return _json_safe(config)
    return {"repr": repr(config)}


# --------------------------------------------------------------------------- writing
class _HashingFile:
    """File wrapper that hashes what np.save writes through it."""

    def __init__(self, handle):
        self.handle = handle
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data) -> int:
        data = bytes(data)
        self.sha.update(data)
        self.size += len(data)
        return self.handle.write(data)


def _write_file(path: Path, write: Callable[[Any], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "xb") as handle:
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())


def _save_array(path: Path, array: np.ndarray) -> None:
    _write_file(path, lambda h: np.save(h, np.ascontiguousarray(array), allow_pickle=False))


def _save_json(path: Path, obj) -> None:
    _write_file(path, lambda h: h.write(_canonical_json(obj)))


def _canonical_json(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, indent=1, ensure_ascii=True, allow_nan=False).encode("ascii")


def _sha256_file(path: Path) -> tuple[str, int]:
    sha = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            sha.update(chunk)
            size += len(chunk)
    return sha.hexdigest(), size


def _fill(parts: BundleParts, version: str, on_step: StepCallback | None) -> Callable[[Path], None]:
    def fill(folder: Path) -> None:
        items, model = parts.items, parts.model
        arrays = {
            "items/item_ids.npy": np.asarray(items.item_ids, dtype=np.str_),
            "items/category.npy": items.category.astype(np.int32),
            "items/brand.npy": items.brand.astype(np.int32),
            "items/price.npy": items.price.astype(np.float32),
            "items/in_stock.npy": items.in_stock.astype(bool),
            "items/feature_codes.npy": items.feature_codes.astype(np.int32),
            "items/attention_logits.npy": items.attention_logits.astype(np.float32),
            "items/index_row.npy": items.index_row.astype(np.int32),
            "model/price_tier_edges.npy": model.price_tier_edges.astype(np.float64),
        }
        for j, name in enumerate(model.feature_names):
            arrays[f"model/side_table.{j}.npy"] = model.side_tables[name].astype(np.float32)
        if model.cold_map is not None:
            arrays["model/cold_map.npy"] = model.cold_map.astype(np.float32)
        if parts.graph is not None:
            g = parts.graph
            for prefix, lists in (("graph/item", g.item_partners), ("graph/category", g.category_partners),
                                  ("graph/members", g.category_members)):
                arrays[f"{prefix}_indptr.npy"] = lists.indptr.astype(np.int64)
                arrays[f"{prefix}_partners.npy"] = lists.items.astype(np.int32)
                arrays[f"{prefix}_weight.npy"] = lists.weight.astype(np.float16)  # log weights: 3 digits do
            arrays["graph/log_popularity.npy"] = g.log_popularity.astype(np.float16)
            arrays["graph/category_support.npy"] = g.category_support.astype(np.float32)
        for rel, array in arrays.items():
            _save_array(folder / rel, array)
            step(on_step, f"wrote {rel}")
        _save_json(folder / "items/vocab.json", {"category": list(items.category_values),
                                                 "brand": list(items.brand_values)})
        _save_json(folder / "model/features.json", {"feature_names": list(model.feature_names),
                                                    "feature_values": model.feature_values})
        step(on_step, "wrote vocabularies")
        for rel, content in parts.extra_files.items():
            if Path(rel).is_absolute() or ".." in Path(rel).parts:
                raise BundleError(f"refusing extra file {rel!r}: must be a relative path inside the bundle")
            target = folder / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            _write_file(target, lambda handle, data=content: handle.write(data))
            step(on_step, f"wrote {rel}")
        for name, index in parts.indexes.items():
            target = folder / "index" / name
            target.mkdir(parents=True, exist_ok=True)
            index.save(target)
            step(on_step, f"wrote index/{name}")
        files = {}
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            rel = path.relative_to(folder).as_posix()
            if not rel.endswith(ALLOWED_SUFFIXES):
                raise BundleError(f"refusing to publish {rel}: bundles hold only {', '.join(ALLOWED_SUFFIXES)} files")
            with open(path, "rb") as handle:  # index files were written by FAISS: make them durable too
                os.fsync(handle.fileno())
            sha, size = _sha256_file(path)
            files[rel] = {"sha256": sha, "size": size}
        body = {
            "format_version": FORMAT_VERSION,
            "version": version,
            "kind": parts.kind,
            "parent_version": parts.parent_version,
            "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "model_config": model.config,
            "scorers": parts.scorers,
            "popularity_weight_on": parts.popularity_weight_on,
            "index_check": parts.index_check,
            "execution": parts.execution,
            "indexes": {name: _index_info(index) for name, index in parts.indexes.items()},
            "data_watermark": parts.watermark,
            "row_counts": {"items": len(items), "indexed_items": int((items.index_row >= 0).sum()),
                           "side_features": len(model.feature_names)},
            "metrics": parts.metrics,
            "notes": parts.notes,
            "graph": parts.graph.manifest_entry() if parts.graph is not None else None,
            "files": files,
        }
        body = _json_safe(body)
        body["manifest_sha256"] = hashlib.sha256(_canonical_json(body)).hexdigest()
        _save_json(folder / MANIFEST, body)
        step(on_step, "wrote manifest")

    return fill


def _index_info(index) -> dict:
    info = {"class": f"{type(index).__module__}.{type(index).__qualname__}"}
    for attr in ("bytes_per_item", "stats"):
        value = getattr(index, attr, None)
        if value is not None and not callable(value):
            info[attr] = _json_safe(value)
    meta = getattr(index, "meta", None)
    if isinstance(meta, dict):  # the layout, and the shards' item ranges (recsys/serving/shards.py)
        info.update({"factory": meta.get("factory_used"), "query_factory": meta.get("query_factory_used"),
                     "shards": len(meta["shard_bounds"]) - 1 if meta.get("shard_bounds") else 1,
                     "shard_bounds": meta.get("shard_bounds")})
    return info


def write_bundle(root, version: str | None, parts: BundleParts, on_step: StepCallback | None = None) -> Path:
    """Write `parts` as version `version` under `root` atomically; returns the folder.

    root: a folder (LocalStore) or a BundleStore. version None = a new sortable
    name from the time and the content. An existing version raises
    BundleExistsError. on_step(name) is called after each durable step
    (files, "staged", "renamed"): progress reporting and crash tests.
    """
    parts.validate()
    store = as_store(root)
    if version is None:
        version = new_version_name(_content_digest(parts))
    check_version_name(version)
    location = store.commit(version, _fill(parts, version, on_step), on_step)
    return Path(location)


def _content_digest(parts: BundleParts) -> bytes:
    sha = hashlib.sha256()
    sha.update(np.ascontiguousarray(np.asarray(parts.items.item_ids, dtype=np.str_)).tobytes())
    sha.update(_canonical_json(_json_safe({"config": parts.model.config, "watermark": parts.watermark,
                                           "metrics": parts.metrics, "kind": parts.kind,
                                           "parent": parts.parent_version, "nonce": secrets.token_hex(4)})))
    return sha.digest()


# --------------------------------------------------------------------------- reading
def read_manifest(path: str | Path) -> dict:
    """The manifest of a bundle folder, checked against its own checksum."""
    path = Path(path)
    file = path / MANIFEST
    try:
        raw = file.read_bytes()
    except FileNotFoundError:
        raise BundleCorruptError(path, MANIFEST, "missing (an unfinished or foreign folder)") from None
    try:
        manifest = json.loads(raw.decode("ascii"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleCorruptError(path, MANIFEST, f"not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or "manifest_sha256" not in manifest:
        raise BundleCorruptError(path, MANIFEST, "no manifest_sha256 field")
    if _canonical_json(manifest) != raw:
        raise BundleCorruptError(path, MANIFEST, "bytes differ from the canonical form it was written in")
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    if hashlib.sha256(_canonical_json(body)).hexdigest() != manifest["manifest_sha256"]:
        raise BundleCorruptError(path, MANIFEST, "checksum mismatch")
    if manifest.get("format_version") not in READABLE_FORMATS:
        raise BundleError(f"Bundle {path} has format version {manifest.get('format_version')}; this recsys reads "
                          f"formats {', '.join(map(str, READABLE_FORMATS))}. Upgrade recsys or publish the version "
                          "again.")
    return manifest


def verify_bundle(path: str | Path, manifest: dict | None = None, checksums: bool = True) -> dict:
    """Check the file list (and sha256 of every file); returns the manifest."""
    path = Path(path)
    manifest = manifest or read_manifest(path)
    expected = manifest.get("files") or {}
    present = {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()} - {MANIFEST}
    for rel in sorted(present - set(expected)):
        raise BundleCorruptError(path, rel, "a file the manifest does not list")
    for rel in sorted(expected):
        file = path / rel
        if rel not in present:
            raise BundleCorruptError(path, rel, "missing")
        if file.stat().st_size != expected[rel]["size"]:
            raise BundleCorruptError(path, rel, f"size {file.stat().st_size} bytes, manifest says "
                                                f"{expected[rel]['size']}")
        if checksums and _sha256_file(file)[0] != expected[rel]["sha256"]:
            raise BundleCorruptError(path, rel, "sha256 mismatch")
    return manifest


def open_bundle(path: str | Path, verify: bool = True, index_class=None) -> Bundle:
    """Open a version folder; with verify, every file's checksum is checked first."""
    path = Path(path)
    if not path.is_dir():
        raise BundleError(f"No bundle at {path}: the folder does not exist.")
    manifest = verify_bundle(path, checksums=verify)
    index_class = index_class or SimilarityIndex

    def array(rel: str) -> np.ndarray:
        try:
            return np.load(path / rel, allow_pickle=False)
        except Exception as exc:  # ValueError for pickled content, others for damaged headers
            raise BundleCorruptError(path, rel, f"cannot be read as an array ({exc})") from None

    def load_json(rel: str):
        try:
            return json.loads((path / rel).read_text(encoding="ascii"))
        except Exception as exc:
            raise BundleCorruptError(path, rel, f"not valid JSON ({exc})") from None

    vocab = load_json("items/vocab.json")
    features = load_json("model/features.json")
    names = list(features["feature_names"])
    items = ItemTable(
        item_ids=array("items/item_ids.npy"), category=array("items/category.npy"),
        category_values=list(vocab["category"]), brand=array("items/brand.npy"),
        brand_values=list(vocab["brand"]), price=array("items/price.npy"), in_stock=array("items/in_stock.npy"),
        feature_codes=array("items/feature_codes.npy"), attention_logits=array("items/attention_logits.npy"),
        index_row=array("items/index_row.npy"))
    model = ModelTables(
        feature_names=names, feature_values={k: list(v) for k, v in features["feature_values"].items()},
        side_tables={name: array(f"model/side_table.{j}.npy") for j, name in enumerate(names)},
        price_tier_edges=array("model/price_tier_edges.npy"), config=manifest.get("model_config") or {},
        cold_map=array("model/cold_map.npy") if "model/cold_map.npy" in manifest["files"] else None)
    indexes = {}
    for name in manifest.get("indexes", {}):
        try:
            indexes[name] = index_class.load(path / "index" / name)
        except BundleError:
            raise
        except Exception as exc:
            raise BundleCorruptError(path, f"index/{name}", f"cannot be loaded ({type(exc).__name__}: {exc})") from None
    graph = None
    if manifest.get("graph"):
        n_indexed = int((items.index_row >= 0).sum())
        lists = {prefix: CoPurchases(array(f"graph/{prefix}_indptr.npy"), array(f"graph/{prefix}_partners.npy"),
                                     array(f"graph/{prefix}_weight.npy").astype(np.float32), n_indexed)
                 for prefix in ("item", "category", "members")}
        entry = manifest["graph"]
        graph = GraphEvidence(Blend.from_dict(entry["warm"]), Blend.from_dict(entry["cold"]), lists["item"],
                              lists["category"], array("graph/log_popularity.npy").astype(np.float32),
                              array("graph/category_support.npy"), lists["members"], entry.get("choice") or {})
    parts = BundleParts(items=items, model=model, indexes=indexes, scorers=manifest.get("scorers") or {},
                        metrics=manifest.get("metrics") or {}, watermark=manifest.get("data_watermark") or {},
                        kind=manifest.get("kind", "full"), parent_version=manifest.get("parent_version"),
                        notes=manifest.get("notes") or {}, graph=graph,
                        popularity_weight_on=manifest.get("popularity_weight_on", "candidates"),
                        index_check=manifest.get("index_check"), execution=manifest.get("execution"))
    try:
        parts.validate()
    except ValueError as exc:
        raise BundleCorruptError(path, MANIFEST, f"inconsistent contents ({exc})") from None
    return Bundle(path=path, version=manifest["version"], manifest=manifest, parts=parts)

