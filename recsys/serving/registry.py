"""The registry: published versions and the aliases that serve them (Postgres).

Publishing is three steps, each atomic on its own:

1. write the bundle (staging folder, fsync, rename: `recsys.serving.bundle.write_bundle`);
2. register a `model_versions` row;
3. move an alias (`aliases` + `alias_history`, one transaction).

A crash between steps leaves the old state plus, at worst, a complete bundle
without a row or a row no alias points at. `reconcile` makes the registry
agree with the folders again: complete bundles without a row are registered
as `orphan`, unfinished staging folders are removed, rows whose folder is gone
are marked `missing`.

Metrics of a version follow the layout of `recsys.evaluation.protocol.RowResult.to_dict()`
for the row that ships: {"warm": {"recall": {"20": ...}}, "cold": {...}, ...};
the promotion gates read warm and cold Recall@20 from there.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from recsys.errors import UserError
from recsys.ingest.extract import read_new_catalogue_items
from recsys.ingest.migrate import migrate
from recsys.serving.bundle import BundleCorruptError, BundleParts, open_bundle, read_manifest, verify_bundle, write_bundle
from recsys.serving.patch import as_patch, extend_with_new_items
from recsys.serving.store import (BundleError, StepCallback, as_store, parse_version, patch_version_name,
                                  version_sort_key)

log = logging.getLogger(__name__)

ALIASES = ("production", "candidate")
SERVABLE = ("published", "orphan")  # statuses an alias may point at without force
ALIAS_LOCK = 0x5EC5_0002  # advisory lock class for alias moves (second key: the alias)
_ANY = object()  # move_alias(expected=...) default: move whatever the alias points at


class RegistryError(UserError):
    """A registry operation that cannot be done as asked."""


class UnknownVersionError(RegistryError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class AliasMovedError(RegistryError):
    """The alias no longer points where the caller expected (someone moved it meanwhile)."""


class GateFailedError(RegistryError):
    """A promotion gate failed; `failures` lists each failed check."""

    def __init__(self, version: str, failures: list[str]):
        self.version, self.failures = version, failures
        super().__init__(f"Version {version} was not promoted; failed checks: " + "; ".join(failures)
                         + ". Use `recsys promote VERSION --force` (force=True) to promote anyway.")


@dataclass(frozen=True)
class VersionInfo:
    version: str
    path: str
    status: str
    kind: str
    parent_version: str | None
    created_at: dt.datetime
    metrics: dict
    manifest_sha256: str
    aliases: tuple[str, ...] = ()
    status_reason: str | None = None
    notes: dict = field(default_factory=dict)  # the manifest's notes (fingerprint, patch counts, ...)

    def recall_at(self, segment: str, k: int = 20) -> float | None:
        return recall_at(self.metrics, segment, k)


@dataclass(frozen=True)
class Gates:
    """Quality gates for promotion to production.

    Absolute floors on warm/cold Recall@20, and no more than
    `max_relative_drop` below the current production version (per segment).
    A segment without a metric fails its floor only when the floor is > 0.
    """

    min_warm_recall_at_20: float = 0.0
    min_cold_recall_at_20: float = 0.0
    max_relative_drop: float = 0.05
    # warm coverage@20 at least this share of the bought-together row's (no collapse into a popularity
    # list); 0 = off. Checked when the version's metrics hold both rows.
    min_coverage_vs_bought_together: float = 0.0
    # the shipped index may lose at most this share of exact search's warm or cold Recall@20 on the run's
    # validation queries (metrics["index_check"]["loss"]); None = not checked (`recsys train --allow-index-loss`)
    max_index_loss: float | None = 0.02

    def __post_init__(self) -> None:
        if self.max_index_loss is not None and not 0.0 <= self.max_index_loss <= 1.0:
            raise ValueError(f"Gates.max_index_loss must be in [0, 1] or None, got {self.max_index_loss}")
        for name in ("min_warm_recall_at_20", "min_cold_recall_at_20"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"Gates.{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0.0 <= self.min_coverage_vs_bought_together <= 10.0:
            raise ValueError("Gates.min_coverage_vs_bought_together must be in [0, 10], got "
                             f"{self.min_coverage_vs_bought_together}")
        if not 0.0 <= self.max_relative_drop <= 1.0:
            raise ValueError(f"Gates.max_relative_drop must be in [0, 1], got {self.max_relative_drop}")


def recall_at(metrics: dict | None, segment: str, k: int = 20) -> float | None:
    """Recall@k of a segment ("warm"/"cold") from a metrics dict (RowResult layout), or None."""
    seg = (metrics or {}).get(segment)
    if not isinstance(seg, dict):
        return None
    value = (seg.get("recall") or {}).get(str(k))
    return float(value) if isinstance(value, (int, float)) else None


def check_gates(metrics: dict, production_metrics: dict | None, gates: Gates) -> list[str]:
    """The failed checks (empty when every gate passes)."""
    failures = []
    for segment, floor in (("warm", gates.min_warm_recall_at_20), ("cold", gates.min_cold_recall_at_20)):
        value = recall_at(metrics, segment)
        if value is None:
            if floor > 0:
                failures.append(f"{segment} Recall@20 is not in the version's metrics (floor {floor:.4f})")
            continue
        if value < floor:
            failures.append(f"{segment} Recall@20 {value:.4f} < floor {floor:.4f}")
        current = recall_at(production_metrics, segment) if production_metrics is not None else None
        if current is not None and value < current * (1.0 - gates.max_relative_drop):
            failures.append(f"{segment} Recall@20 {value:.4f} is more than {gates.max_relative_drop:.0%} below "
                            f"production's {current:.4f}")
    check = metrics.get("index_check") if isinstance(metrics, dict) else None
    if gates.max_index_loss is not None and isinstance(check, dict):
        # the loss beyond query sampling noise (recsys/jobs/index_check.py); older records: the loss itself
        loss = check.get("measured_loss", check.get("loss"))
        if isinstance(loss, (int, float)) and loss > gates.max_index_loss:
            failures.append(f"the shipped index ({check.get('layout')}) loses {loss:.1%} of exact search's "
                            f"Recall@20 (at most {gates.max_index_loss:.0%}; `recsys train --allow-index-loss` "
                            f"overrides)")
    if gates.min_coverage_vs_bought_together > 0:
        ours = coverage_at(metrics)
        counts = coverage_at((metrics.get("rows") or {}).get("bought-together counts"))
        if ours is not None and counts is not None and ours < gates.min_coverage_vs_bought_together * counts:
            failures.append(f"warm coverage@20 {ours:.3f} < {gates.min_coverage_vs_bought_together:g} x "
                            f"bought-together counts' {counts:.3f}")
    return failures


def coverage_at(metrics: dict | None, k: int = 20) -> float | None:
    """Warm coverage@k from a metrics dict (RowResult layout), or None."""
    value = (((metrics or {}).get("warm") or {}).get("coverage") or {}).get(str(k))
    return float(value) if isinstance(value, (int, float)) else None


# --------------------------------------------------------------------------- schema
_migrated: set[str] = set()


def ensure_schema(engine: Engine) -> None:
    """Apply pending migrations once per database URL and process."""
    key = engine.url.render_as_string(hide_password=False)
    if key not in _migrated:
        migrate(engine)
        _migrated.add(key)


# --------------------------------------------------------------------------- versions
_VERSION_COLUMNS = ("v.version, v.path, v.status, v.kind, v.parent_version, v.created_at, v.metrics, "
                    "v.manifest_sha256, v.status_reason, v.notes, "
                    "coalesce((SELECT array_agg(a.alias ORDER BY a.alias) FROM aliases a WHERE a.version = v.version),"
                    " '{}') AS aliases")


def _info(row) -> VersionInfo:
    def as_dict(value) -> dict:
        return value if isinstance(value, dict) else json.loads(value or "{}")

    return VersionInfo(version=row.version, path=row.path, status=row.status, kind=row.kind,
                       parent_version=row.parent_version, created_at=row.created_at, metrics=as_dict(row.metrics),
                       manifest_sha256=row.manifest_sha256, aliases=tuple(row.aliases or ()),
                       status_reason=row.status_reason, notes=as_dict(row.notes))


def register_version(engine: Engine, path: str | Path, status: str = "published", verify: bool = True,
                     location: str | None = None) -> VersionInfo:
    """Add the bundle at `path` to the registry (idempotent for the same manifest)."""
    ensure_schema(engine)
    path = Path(path)
    manifest = verify_bundle(path, checksums=verify)
    sha = hashlib.sha256((path / "manifest.json").read_bytes()).hexdigest()
    version = manifest["version"]
    if path.name != version:
        raise RegistryError(f"Bundle folder {path} holds version {version}: folder name and version must agree.")
    with engine.begin() as conn:
        existing = conn.execute(sa.text("SELECT manifest_sha256 FROM model_versions WHERE version = :v"),
                                {"v": version}).scalar()
        if existing is not None and existing != sha:
            raise RegistryError(f"Version {version} is already registered with another manifest "
                                f"({existing[:12]} vs {sha[:12]}); versions are immutable.")
        if existing is None:
            conn.execute(sa.text(
                "INSERT INTO model_versions (version, path, status, kind, parent_version, created_at, metrics, "
                "manifest_sha256, notes) VALUES (:v, :p, :s, :k, :parent, :c, CAST(:m AS jsonb), :sha, "
                "CAST(:notes AS jsonb))"),
                {"v": version, "p": location or str(path.resolve()), "s": status, "k": manifest.get("kind", "full"),
                 "parent": manifest.get("parent_version"), "c": dt.datetime.fromisoformat(manifest["created_at"]),
                 "m": json.dumps(manifest.get("metrics") or {}), "sha": sha,
                 "notes": json.dumps(manifest.get("notes") or {})})
    return get_version(engine, version)


def get_version(engine: Engine, version: str) -> VersionInfo:
    ensure_schema(engine)
    with engine.connect() as conn:
        row = conn.execute(sa.text(f"SELECT {_VERSION_COLUMNS} FROM model_versions v WHERE v.version = :v"),
                           {"v": version}).one_or_none()
    if row is None:
        raise UnknownVersionError(f"Version {version!r} is not in the registry; `recsys versions` lists them.")
    return _info(row)


def list_versions(engine: Engine) -> list[VersionInfo]:
    """All registered versions, oldest first."""
    ensure_schema(engine)
    with engine.connect() as conn:
        rows = conn.execute(sa.text(f"SELECT {_VERSION_COLUMNS} FROM model_versions v")).fetchall()
    return sorted((_info(r) for r in rows), key=lambda i: (i.created_at, version_sort_key(i.version)))


def versions_with_note(engine: Engine, key: str, value) -> list[VersionInfo]:
    """Servable versions whose manifest notes have notes[key] == value (e.g. a run fingerprint), oldest first."""
    ensure_schema(engine)
    with engine.connect() as conn:
        rows = conn.execute(sa.text(f"SELECT {_VERSION_COLUMNS} FROM model_versions v WHERE v.notes -> :k = "
                                    "CAST(:val AS jsonb) AND v.status IN ('published', 'orphan')"),
                            {"k": key, "val": json.dumps(value)}).fetchall()
    return sorted((_info(r) for r in rows), key=lambda i: (i.created_at, version_sort_key(i.version)))


def set_status(engine: Engine, version: str, status: str, reason: str | None = None) -> None:
    ensure_schema(engine)
    with engine.begin() as conn:
        done = conn.execute(sa.text("UPDATE model_versions SET status = :s, status_reason = :r WHERE version = :v"),
                            {"s": status, "r": reason, "v": version}).rowcount
    if not done:
        raise UnknownVersionError(f"Version {version!r} is not in the registry.")


# --------------------------------------------------------------------------- aliases
def _check_alias(alias: str) -> str:
    if alias not in ALIASES:
        raise ValueError(f"alias must be one of {ALIASES}, got {alias!r}")
    return alias


def get_alias(engine: Engine, alias: str = "production") -> VersionInfo | None:
    """The version an alias points at, or None when it was never set."""
    _check_alias(alias)
    ensure_schema(engine)
    with engine.connect() as conn:
        row = conn.execute(sa.text(f"SELECT {_VERSION_COLUMNS} FROM aliases a JOIN model_versions v "
                                   "ON v.version = a.version WHERE a.alias = :a"), {"a": alias}).one_or_none()
    return None if row is None else _info(row)


def alias_version(engine: Engine, alias: str = "production") -> str | None:
    """Just the version name of an alias (one cheap query; the client polls this)."""
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT version FROM aliases WHERE alias = :a"), {"a": alias}).scalar()


def move_alias(engine: Engine, alias: str, version: str, reason: str = "", *, action: str = "move",
               force: bool = False, expected: object = _ANY) -> str | None:
    """Point `alias` at `version` and record the move, in one transaction; returns the previous version.

    expected: when given, the move happens only if the alias still points
    there (AliasMovedError otherwise). Versions that are rejected or retired
    need force; missing ones are refused.
    """
    _check_alias(alias)
    ensure_schema(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k1, :k2)"),
                     {"k1": ALIAS_LOCK, "k2": zlib.crc32(alias.encode()) & 0x7FFFFFFF})
        status = conn.execute(sa.text("SELECT status FROM model_versions WHERE version = :v FOR SHARE"),
                              {"v": version}).scalar()
        if status is None:
            raise UnknownVersionError(f"Version {version!r} is not in the registry; `recsys versions` lists them.")
        if status == "missing":
            raise RegistryError(f"Version {version}'s bundle folder is missing; it cannot be served.")
        if status not in SERVABLE and not force:
            raise RegistryError(f"Version {version} is {status}; use force to point {alias} at it anyway.")
        previous = conn.execute(sa.text("SELECT version FROM aliases WHERE alias = :a"), {"a": alias}).scalar()
        if expected is not _ANY and previous != expected:
            raise AliasMovedError(f"Alias {alias} points at {previous}, not {expected}: it was moved meanwhile.")
        conn.execute(sa.text("INSERT INTO aliases (alias, version, moved_at) VALUES (:a, :v, now()) "
                             "ON CONFLICT (alias) DO UPDATE SET version = EXCLUDED.version, moved_at = now()"),
                     {"a": alias, "v": version})
        conn.execute(sa.text("INSERT INTO alias_history (alias, from_version, to_version, action, reason) "
                             "VALUES (:a, :f, :t, :act, :r)"),
                     {"a": alias, "f": previous, "t": version, "act": action, "r": reason})
    return previous


def alias_history(engine: Engine, alias: str = "production") -> list[dict]:
    ensure_schema(engine)
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT move_id, from_version, to_version, action, moved_at, reason "
                                    "FROM alias_history WHERE alias = :a ORDER BY move_id"), {"a": alias})
        return [dict(r._mapping) for r in rows]


def promote(engine: Engine, version: str, gates: Gates | None = None, force: bool = False,
            reason: str = "") -> VersionInfo:
    """Point production at `version` if it passes the gates (force skips them).

    A version that fails is marked rejected and GateFailedError lists every
    failed check.
    """
    gates = gates or Gates()
    info = get_version(engine, version)
    current = get_alias(engine, "production")
    if current is not None and current.version == version:
        return info
    if not force:
        failures = check_gates(info.metrics, current.metrics if current else None, gates)
        if failures:
            set_status(engine, version, "rejected", "; ".join(failures))
            raise GateFailedError(version, failures)
    move_alias(engine, "production", version, reason or ("forced promotion" if force else "promoted: gates passed"),
               action="promote", force=force)
    if info.status != "published":
        set_status(engine, version, "published", "forced promotion" if force else None)
    return get_version(engine, version)


def rollback(engine: Engine, alias: str = "production", reason: str = "") -> str:
    """Point the alias back at the version it served before the current one; returns it."""
    history = alias_history(engine, alias)
    stack: list[str] = []
    for move in history:
        if move["action"] == "rollback":
            if stack:
                stack.pop()
        else:
            stack.append(move["to_version"])
    if len(stack) < 2:
        current = stack[-1] if stack else None
        raise RegistryError(f"No earlier {alias} version to roll back to (current: {current or 'none'}).")
    target = stack[-2]
    move_alias(engine, alias, target, reason or f"rollback from {stack[-1]}", action="rollback", force=True,
               expected=stack[-1])
    return target


# --------------------------------------------------------------------------- publishing
def publish(engine: Engine, root, parts: BundleParts, version: str | None = None, alias: str | None = "candidate",
            reason: str = "published", action: str = "move", on_step: StepCallback | None = None,
            expected: object = _ANY) -> str:
    """Write the bundle, register it, move `alias` (None: leave aliases); returns the version.

    on_step(name) is called after each durable step ("staged", "renamed",
    "registered", "alias moved", and each file before them).
    """
    ensure_schema(engine)
    store = as_store(root)
    path = write_bundle(store, version, parts, on_step=on_step)
    info = register_version(engine, store.local_folder(path.name), verify=False, location=store.location(path.name))
    if on_step:
        on_step("registered")
    if alias:
        move_alias(engine, alias, info.version, reason, action=action, expected=expected)
        if on_step:
            on_step("alias moved")
    return info.version


def publish_patch(engine: Engine, root=None, new_items=None, alias: str = "production",
                  on_step: StepCallback | None = None, index_class=None, fold_in=None) -> str | None:
    """Publish `<version>.pN`: the alias's version plus catalogue items it lacks; None when nothing to do.

    new_items: a DataFrame (items load layout); default: the catalogue rows
    updated after the version's data watermark. fold_in: (full version's
    bundle, its parts with the new catalogue items, the alias's bundle,
    whether the catalogue changed since the alias's version) -> (parts or
    None, record): the hourly refresh, which folds the purchases
    since the full version in (recsys/jobs/refresh.py). With it, every patch
    is rebuilt from the full version the alias's version descends from, with
    everything since: evidence accumulates (an item's buyers over several
    hours count together) and nothing is added twice. The alias moves to the
    patch only if it still points at the version that was extended.
    """
    base = get_alias(engine, alias)
    if base is None:
        log.info("no %s version to patch yet", alias)
        return None
    bundle = open_bundle(base.path, index_class=index_class)
    source = bundle
    if fold_in is not None:
        full_version, _ = parse_version(base.version)
        if full_version != base.version:
            source = open_bundle(get_version(engine, full_version).path, index_class=index_class)
    if new_items is None:
        since = (source.parts.watermark or {}).get("max_item_updated_at")
        new_items = read_new_catalogue_items(engine, source.parts.model.feature_names, since)
    parts = extend_with_new_items(source, new_items)
    n_new = parts.notes["patch"]["new_items"] if parts is not None else 0
    # what the alias's version lacks (a rebuilt patch re-adds what an earlier patch added already)
    have = set(bundle.parts.items.item_ids.tolist())
    missing = 0 if parts is None else sum(1 for i in parts.items.item_ids.tolist() if i not in have)
    reason = f"patch: {n_new} new items"
    folded = None
    if fold_in is not None:
        folded, record = fold_in(source, parts if parts is not None else source.parts, bundle, missing > 0)
        if folded is not None:
            reason += (f", {record.get('fresh_items', 0)} first bought since {source.version} folded in from "
                       f"{record.get('lines', 0)} purchase lines")
    if folded is None and missing == 0:
        return None
    parts = as_patch(source, folded if folded is not None else parts, n_new)
    parts.notes["patch"]["replaces"] = base.version
    store = as_store(root if root is not None else Path(base.path).parent)
    existing = {v.version for v in list_versions(engine)} | set(store.versions())
    version = patch_version_name(base.version, existing)
    try:
        return publish(engine, store, parts, version, alias=alias, reason=reason,
                       action="patch", on_step=on_step, expected=base.version)
    except AliasMovedError as exc:
        log.warning("patch %s registered but not served: %s", version, exc)
        return None


# --------------------------------------------------------------------------- reconcile
@dataclass
class ReconcileReport:
    registered_orphans: list[str] = field(default_factory=list)
    removed_staging: list[str] = field(default_factory=list)
    marked_missing: list[str] = field(default_factory=list)
    restored: list[str] = field(default_factory=list)
    damaged: dict[str, str] = field(default_factory=dict)  # folder -> problem (left in place)

    @property
    def changed(self) -> bool:
        return bool(self.registered_orphans or self.removed_staging or self.marked_missing or self.restored)


def reconcile(engine: Engine, root, stale_after_s: float = 600.0) -> ReconcileReport:
    """Make the registry agree with the bundle folders under `root`.

    Staging folders older than `stale_after_s` (an unfinished publish) are
    removed; complete bundles without a row are registered as `orphan`;
    damaged folders are reported and left alone; rows whose folder is gone
    are marked `missing` (and restored when it comes back intact).
    """
    ensure_schema(engine)
    store = as_store(root)
    report = ReconcileReport()
    for name, age in store.staging():
        if age >= stale_after_s:
            store.discard_staging(name)
            report.removed_staging.append(name)
    rows = {v.version: v for v in list_versions(engine)}
    for version in store.versions():
        if version in rows:
            continue
        try:
            read_manifest(store.local_folder(version))
            register_version(engine, store.local_folder(version), status="orphan", location=store.location(version))
            report.registered_orphans.append(version)
        except (BundleCorruptError, BundleError, RegistryError) as exc:
            report.damaged[version] = str(exc)
    on_disk = set(store.versions())
    for version, info in rows.items():
        here = version in on_disk if info.path == store.location(version) else Path(info.path).is_dir()
        if not here and info.status != "missing":
            set_status(engine, version, "missing", "bundle folder not found by reconcile")
            report.marked_missing.append(version)
        elif here and info.status == "missing":
            try:
                verify_bundle(Path(info.path))
            except BundleError as exc:
                report.damaged[version] = str(exc)
                continue
            set_status(engine, version, "published", "folder found again by reconcile")
            report.restored.append(version)
    return report
