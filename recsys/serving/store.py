"""Where version folders live, how they are named, and how one is committed atomically.

A version name sorts by time: `YYYYMMDDTHHMMSSZ-<8 hex>`, and a patch of it
`<name>.pN`. `LocalStore` writes a version into `<root>/.tmp-<version>-<random>/`,
fsyncs it and renames it into place, so a version is complete or absent and
never replaced. Callers use only the small `BundleStore` interface, so an
object store can be added without touching them.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import os
import re
import secrets
import shutil
import time
from pathlib import Path
from typing import Callable, Iterable, Protocol

from recsys.errors import UserError

TEMP_PREFIX = ".tmp-"
VERSION_PATTERN = re.compile(r"^(\d{8}T\d{6}Z-[0-9a-f]{8})(?:\.p(\d+))?$")

StepCallback = Callable[[str], None]


# --------------------------------------------------------------------------- errors
class BundleError(UserError):
    """A bundle cannot be written or opened."""


class BundleExistsError(BundleError):
    """The version folder already exists: versions are immutable."""


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
            step(on_step, "staged")
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
        step(on_step, "renamed")
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


def step(on_step: StepCallback | None, name: str) -> None:
    if on_step is not None:
        on_step(name)
