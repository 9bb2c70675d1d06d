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

Writing is atomic: files go to `<root>/.tmp-<version>-<random>/`, are fsynced,
and the folder is renamed into place; an existing version is never replaced.
`open_bundle` checks the file list and every checksum, so a damaged bundle is
refused (`BundleCorruptError` names the file). Loading uses allow_pickle=False.
The storage backend is the small `BundleStore` interface (`LocalStore` here),
so an object store can be added without touching callers.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
import re
import secrets
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol

import numpy as np

from recsys.jsonsafe import json_safe as _json_safe
from recsys.errors import UserError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TEMP_PREFIX = ".tmp-"
# Every file of a bundle has one of these suffixes: arrays, JSON, FAISS binaries. No pickle.
ALLOWED_SUFFIXES = (".npy", ".json", ".faiss", ".index", ".bin", ".svg")
ID_FEATURE = "item_id"  # name of the id component in attention weights (as recsys.model)
PRICE_TIER = "price_tier"  # the derived price feature (as recsys.model)
VERSION_PATTERN = re.compile(r"^(\d{8}T\d{6}Z-[0-9a-f]{8})(?:\.p(\d+))?$")

StepCallback = Callable[[str], None]


# --------------------------------------------------------------------------- errors
class BundleError(UserError):
    """A bundle cannot be written or opened."""


class BundleExistsError(BundleError):
    """The version folder already exists: versions are immutable."""


class BundleCorruptError(BundleError):
    """A bundle's files do not match its manifest (damaged, truncated, edited)."""

    def __init__(self, path: str | Path, file: str, problem: str):
        self.path, self.file, self.problem = str(path), file, problem
        super().__init__(f"Bundle {self.path} is damaged: {file}: {problem}. Do not serve it; publish the "
                         "version again (or roll back to another one).")


# --------------------------------------------------------------------------- version names
def new_version_name(digest_source: bytes, now: dt.datetime | None = None) -> str:
    """Sortable version name `YYYYMMDDTHHMMSSZ-<8 hex of sha256(digest_source)>`."""
    now = now or dt.datetime.now(dt.timezone.utc)
    stamp = now.astimezone(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{hashlib.sha256(digest_source).hexdigest()[:8]}"


def parse_version(version: str) -> tuple[str, int]:
    """(full version, patch number; 0 for a full version). ValueError for other names."""
    match = VERSION_PATTERN.match(version)
    if not match:
        raise ValueError(f"{version!r} is not a version name (expected YYYYMMDDTHHMMSSZ-xxxxxxxx[.pN])")
    return match.group(1), int(match.group(2) or 0)


def version_sort_key(version: str) -> tuple[str, int]:
    """Chronological order, patches after their base (p10 after p9)."""
    try:
        return parse_version(version)
    except ValueError:
        return version, 0


def patch_version_name(base: str, existing: Iterable[str]) -> str:
    """`<full version>.p<N+1>` where N is the highest patch of that full version in `existing`."""
    root, _ = parse_version(base)
    numbers = [n for r, n in (version_sort_key(v) for v in existing) if r == root]
    return f"{root}.p{max(numbers, default=0) + 1}"


def check_version_name(version: str) -> str:
    if not version or version.startswith(".") or "/" in version or "\\" in version or version in ("..",):
        raise ValueError(f"invalid version name {version!r}")
    return version


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

    def validate(self) -> None:
        self.items.validate()
        if "warm" not in self.indexes:
            raise ValueError("BundleParts.indexes needs a 'warm' index")
        if set(self.indexes) - {"warm", "cold"}:
            raise ValueError(f"BundleParts.indexes may hold 'warm' and 'cold', got {sorted(self.indexes)}")
        for name in ("warm", "cold"):
            if name in self.indexes and name not in self.scorers:
                raise ValueError(f"BundleParts.scorers has no entry for the {name!r} index")
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


# --------------------------------------------------------------------------- cold start (numpy only)
def price_tier_codes(price, edges: np.ndarray) -> np.ndarray:
    """Tier code per price: 0 = unknown, else 1..len(edges)+1 (the same rule as recsys.model)."""
    price = np.atleast_1d(np.asarray(price, dtype=np.float64))
    codes = np.searchsorted(edges, price, side="right").astype(np.int64) + 1
    codes[~np.isfinite(price)] = 0
    return codes


def cold_start_vectors(model: ModelTables, codes: np.ndarray) -> np.ndarray:
    """Item vectors from side-feature codes alone (as TrainedModel.cold_vectors_from_codes).

    Kept in numpy here so that serving does not import torch.
    """
    codes = np.asarray(codes, dtype=np.int64).reshape(len(codes), -1)
    dim = model.dim
    if not model.feature_names or model.config.get("mode") == "bge":
        return np.zeros((len(codes), dim), np.float32)
    parts = np.stack([model.side_tables[name][codes[:, j]] for j, name in enumerate(model.feature_names)], axis=1)
    if model.config.get("cold_start") == "ridge" and model.cold_map is not None:
        x = np.concatenate([parts.reshape(len(codes), -1), np.ones((len(codes), 1), np.float32)], axis=1)
        return (x @ model.cold_map).astype(np.float32)
    present = (codes > 0)[..., None]
    return ((parts * present).sum(1) / np.maximum(present.sum(1), 1)).astype(np.float32)


def query_transform(scorer: dict, vectors: np.ndarray) -> np.ndarray:
    """Query side of a scorer (as recsys.train.Scorer.query_matrix), numpy only."""
    kind = scorer["kind"]
    vectors = np.asarray(vectors, dtype=np.float32)
    if kind == "cosine":
        return (vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)).astype(np.float32)
    if kind == "dot":
        return vectors
    if kind in ("inout", "inout_prior"):
        return np.concatenate([vectors, np.ones((len(vectors), 1), np.float32)], axis=1)
    raise ValueError(f"unknown scorer kind {kind!r}")


def attention_weights(logits: np.ndarray, feature_codes: np.ndarray) -> np.ndarray:
    """softmax(a_v) over the components an item has (id first), as TrainedModel.attention_weights."""
    present = np.concatenate([np.ones((len(feature_codes), 1), bool), feature_codes > 0], axis=1)
    masked = np.where(present, logits.astype(np.float64), -np.inf)
    masked -= masked.max(axis=1, keepdims=True)
    w = np.exp(masked)
    return (w / w.sum(axis=1, keepdims=True)).astype(np.float32)


# --------------------------------------------------------------------------- building parts
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


def clean_value(value) -> str | None:
    """A raw side-feature value as the vocabulary holds it; None when missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value)
    return text if text != "" else None


def parts_from_model(trained, ds, warm_scorer, cold_scorer=None, *, log_popularity: np.ndarray | None = None,
                     candidates: np.ndarray | None = None, index_config=None, metrics: dict | None = None,
                     watermark: dict | None = None, index_class=None) -> BundleParts:
    """Bundle parts of a trained model: builds the index(es) over the candidate items.

    trained: recsys.train.TrainedModel; ds: the Dataset it was trained on
    (same item order); warm_scorer/cold_scorer: recsys.train.Scorer (the
    recommender's choice); candidates: items that may be returned as
    neighbours (default: items that appeared in the training walks).
    """
    index_class = index_class or _default_index_class()
    n = ds.n_items
    if trained.item_vectors.shape[0] != n:
        raise ValueError(f"the model has {trained.item_vectors.shape[0]} items, the dataset {n}")
    if log_popularity is None:
        log_popularity = np.log1p(np.bincount(ds.purchase_item, minlength=n)).astype(np.float32)
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
    indexes = {"warm": index_class.build(warm_scorer.item_matrix(trained, log_popularity)[rows],
                                         warm_scorer.query_matrix(trained.item_vectors[rows]), index_config)}
    scorers = {"warm": warm_scorer.to_dict()}
    if cold_scorer.to_dict() != warm_scorer.to_dict():
        cold_queries = cold_start_vectors(model, trained.item_feature_codes[rows])
        indexes["cold"] = index_class.build(cold_scorer.item_matrix(trained, log_popularity)[rows],
                                            cold_scorer.query_matrix(cold_queries), index_config)
        scorers["cold"] = cold_scorer.to_dict()
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


def parts_from_recommender(rec, ds, **kwargs) -> BundleParts:
    """Parts from a fitted recsys.train.EGESRecommender (its model and chosen scorers)."""
    if getattr(rec, "trained", None) is None:
        raise ValueError(f"{getattr(rec, 'name', 'recommender')}: fit it before publishing")
    kwargs.setdefault("log_popularity", getattr(rec, "log_popularity", None))
    return parts_from_model(rec.trained, ds, rec.warm_scorer, rec.cold_scorer, **kwargs)


def _config_dict(config) -> dict | None:
    if config is None:
        return None
    import dataclasses

    if dataclasses.is_dataclass(config):
        return _json_safe(dataclasses.asdict(config))
    if isinstance(config, dict):
        return _json_safe(config)
    return {"repr": repr(config)}


def _default_index_class():
    from recsys.index import SimilarityIndex

    return SimilarityIndex


# --------------------------------------------------------------------------- storage
class BundleStore(Protocol):
    """Where version folders live. Callers use only this interface."""

    def location(self, version: str) -> str: ...  # what the registry records as the path

    def versions(self) -> list[str]: ...  # complete (committed) versions

    def exists(self, version: str) -> bool: ...

    def commit(self, version: str, fill: Callable[[Path], None], on_step: StepCallback | None = None) -> str: ...

    def local_folder(self, version: str) -> Path: ...  # a local folder with the files, for reading

    def staging(self) -> list[tuple[str, float]]: ...  # (name, age in seconds) of unfinished writes

    def discard_staging(self, name: str) -> None: ...


class LocalStore:
    """Version folders under a local root; commit = fsync + atomic rename."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    def location(self, version: str) -> str:
        return str(self.root / check_version_name(version))

    def versions(self) -> list[str]:
        if not self.root.is_dir():
            return []
        names = [p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")]
        return sorted(names, key=version_sort_key)

    def exists(self, version: str) -> bool:
        return (self.root / check_version_name(version)).exists()

    def local_folder(self, version: str) -> Path:
        return self.root / check_version_name(version)

    def staging(self) -> list[tuple[str, float]]:
        if not self.root.is_dir():
            return []
        now = time.time()
        return [(p.name, now - p.stat().st_mtime) for p in self.root.iterdir()
                if p.is_dir() and p.name.startswith(TEMP_PREFIX)]

    def discard_staging(self, name: str) -> None:
        if not name.startswith(TEMP_PREFIX) or "/" in name:
            raise ValueError(f"{name!r} is not a staging folder")
        shutil.rmtree(self.root / name, ignore_errors=True)

    def commit(self, version: str, fill: Callable[[Path], None], on_step: StepCallback | None = None) -> str:
        check_version_name(version)
        self.root.mkdir(parents=True, exist_ok=True)
        final = self.root / version
        if final.exists():
            raise BundleExistsError(f"Version {version} already exists in {self.root}; versions are immutable.")
        staging = self.root / f"{TEMP_PREFIX}{version}-{secrets.token_hex(4)}"
        staging.mkdir()
        try:
            fill(staging)
            for folder in sorted({p.parent for p in staging.rglob("*")} | {staging}, key=lambda p: -len(p.parts)):
                _fsync_dir(folder)
            _step(on_step, "staged")
            try:
                # rename(2) refuses a non-empty target: an existing version is never replaced.
                os.rename(staging, final)
            except OSError as exc:
                raise BundleExistsError(f"Version {version} already exists in {self.root} ({exc.strerror}); "
                                        "versions are immutable.") from None
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        _fsync_dir(self.root)
        _step(on_step, "renamed")
        return str(final)


def as_store(root) -> BundleStore:
    """A store from a path (LocalStore) or a store object."""
    if isinstance(root, (str, Path)):
        return LocalStore(root)
    return root


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _step(on_step: StepCallback | None, name: str) -> None:
    if on_step is not None:
        on_step(name)


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
        for rel, array in arrays.items():
            _save_array(folder / rel, array)
            _step(on_step, f"wrote {rel}")
        _save_json(folder / "items/vocab.json", {"category": list(items.category_values),
                                                 "brand": list(items.brand_values)})
        _save_json(folder / "model/features.json", {"feature_names": list(model.feature_names),
                                                    "feature_values": model.feature_values})
        _step(on_step, "wrote vocabularies")
        for rel, content in parts.extra_files.items():
            if Path(rel).is_absolute() or ".." in Path(rel).parts:
                raise BundleError(f"refusing extra file {rel!r}: must be a relative path inside the bundle")
            target = folder / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            _write_file(target, lambda handle, data=content: handle.write(data))
            _step(on_step, f"wrote {rel}")
        for name, index in parts.indexes.items():
            target = folder / "index" / name
            target.mkdir(parents=True, exist_ok=True)
            index.save(target)
            _step(on_step, f"wrote index/{name}")
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
            "indexes": {name: _index_info(index) for name, index in parts.indexes.items()},
            "data_watermark": parts.watermark,
            "row_counts": {"items": len(items), "indexed_items": int((items.index_row >= 0).sum()),
                           "side_features": len(model.feature_names)},
            "metrics": parts.metrics,
            "notes": parts.notes,
            "files": files,
        }
        body = _json_safe(body)
        body["manifest_sha256"] = hashlib.sha256(_canonical_json(body)).hexdigest()
        _save_json(folder / MANIFEST, body)
        _step(on_step, "wrote manifest")

    return fill


def _index_info(index) -> dict:
    info = {"class": f"{type(index).__module__}.{type(index).__qualname__}"}
    for attr in ("bytes_per_item", "stats"):
        value = getattr(index, attr, None)
        if value is not None and not callable(value):
            info[attr] = _json_safe(value)
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
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"Bundle {path} has format version {manifest.get('format_version')}; this recsys reads "
                          f"format {FORMAT_VERSION}. Upgrade recsys or publish the version again.")
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
    index_class = index_class or _default_index_class()

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
    parts = BundleParts(items=items, model=model, indexes=indexes, scorers=manifest.get("scorers") or {},
                        metrics=manifest.get("metrics") or {}, watermark=manifest.get("data_watermark") or {},
                        kind=manifest.get("kind", "full"), parent_version=manifest.get("parent_version"),
                        notes=manifest.get("notes") or {})
    try:
        parts.validate()
    except ValueError as exc:
        raise BundleCorruptError(path, MANIFEST, f"inconsistent contents ({exc})") from None
    return Bundle(path=path, version=manifest["version"], manifest=manifest, parts=parts)


# --------------------------------------------------------------------------- patches
NEW_ITEM_COLUMNS = ("item_id", "category")


def extend_with_new_items(bundle: Bundle, new_items) -> BundleParts | None:
    """Parts of a patch version: the bundle plus catalogue items it does not know yet.

    new_items: a DataFrame in the `recsys load` items layout (item_id,
    category [, brand, price, in_stock, <extra side features>]). New items
    are queryable from their side features (cold start); they are not
    neighbour candidates until the next full training. Items already in the
    bundle are ignored; returns None when nothing is new.
    """
    import pandas as pd

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
