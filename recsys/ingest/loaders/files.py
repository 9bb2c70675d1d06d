"""Reading input files and validating rows, vectorised.

Every input row ends up in exactly one place: the clean frame that goes to the
database, or the rejects frame with a reason code, the field and a sentence.
File-level problems (missing file, wrong encoding, missing column, no rows)
raise `InputFileError`, which the CLI prints as one paragraph.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from recsys.data.dataset import from_frames
from recsys.errors import InputFileError

REJECT_COLUMNS = ["file_path", "file_sha256", "kind", "row_number", "field", "reason", "detail", "raw"]

ITEM_COLUMNS = ["item_id", "category", "brand", "price", "title", "in_stock", "created_at"]
PURCHASE_COLUMNS = ["user_id", "item_id", "purchased_at", "order_id", "quantity", "unit_price"]
REQUIRED_ITEM_COLUMNS = ["item_id", "category"]
REQUIRED_PURCHASE_COLUMNS = ["user_id", "item_id", "purchased_at"]

_TRUE = {"true", "t", "1", "yes", "y"}
_FALSE = {"false", "f", "0", "no", "n"}


@dataclass
class InputFile:
    path: Path
    sha256: str
    frame: pd.DataFrame  # raw values as read

    @property
    def rows(self) -> int:
        return len(self.frame)

    def describe(self) -> dict:
        return {"path": str(self.path), "sha256": self.sha256, "rows": self.rows}


@dataclass
class LoadFrames:
    """What a reader hands the database loader: clean rows plus rejected rows."""

    source: str
    files: list[InputFile]
    items: pd.DataFrame  # ITEM_COLUMNS + attributes (JSON text), one row per item_id
    purchases: pd.DataFrame  # PURCHASE_COLUMNS + line_no, file_path, file_sha256, row_number
    rejects: pd.DataFrame  # REJECT_COLUMNS
    side_features: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # heuristics a person should know about
    # the user's items file; None when an adapter derives the catalogue (every column then present)
    items_file: InputFile | None = None

    @property
    def input_rows(self) -> int:
        return sum(f.rows for f in self.files)

    def to_dataset(self):
        """The in-memory Dataset these rows would extract to (no database): for tests and notebooks."""
        items = self.items.copy()
        if self.side_features:
            attributes = [json.loads(a) for a in items["attributes"]]
            for name in self.side_features:
                items[name] = [a.get(name) for a in attributes]
        return from_frames(items, self.purchases, side_features=self.side_features)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _decode_error(path: Path, exc: UnicodeDecodeError, raw: bytes, encoding: str) -> InputFileError:
    line = raw[: exc.start].count(b"\n") + 1
    return InputFileError(
        path, f"is not valid {encoding}: byte 0x{raw[exc.start]:02x} at offset {exc.start} cannot be decoded",
        row=line - 1 if line > 1 else None, field=None,
        hint=f"(line {line} of the file). Re-save the file as UTF-8, or pass --encoding with the file's "
             "real encoding (for example --encoding latin-1).")


def read_table(path: str | Path, *, encoding: str = "utf-8") -> InputFile:
    """Read a CSV or Parquet file (by extension) with every CSV value kept as text."""
    path = Path(path)
    if not path.exists():
        raise InputFileError(path, "does not exist", hint="Check the path (it is relative to the current folder).")
    if path.is_dir():
        raise InputFileError(path, "is a folder, not a file")
    if path.stat().st_size == 0:
        raise InputFileError(path, "is empty (0 bytes)", hint="Export the table again with a header row.")
    suffix = "".join(path.suffixes[-2:]).lower() if path.suffix.lower() in {".gz", ".zip"} else path.suffix.lower()
    sha = sha256_of(path)
    if suffix in {".parquet", ".pq"}:
        try:
            frame = pd.read_parquet(path)
        except Exception as exc:
            raise InputFileError(path, f"cannot be read as Parquet ({exc})") from None
    elif suffix in {".csv", ".csv.gz", ".csv.zip", ".txt"}:
        codec = "utf-8-sig" if encoding.lower().replace("_", "-") in {"utf-8", "utf8"} else encoding
        try:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[], encoding=codec,
                                skipinitialspace=False)
        except UnicodeDecodeError as exc:
            raw = path.read_bytes() if suffix == ".csv" else b""
            if raw:
                try:
                    raw.decode(codec)
                except UnicodeDecodeError as exact:
                    raise _decode_error(path, exact, raw, encoding) from None
            raise InputFileError(path, f"is not valid {encoding} ({exc})",
                                 hint="Re-save it as UTF-8 or pass --encoding.") from None
        except pd.errors.EmptyDataError:
            raise InputFileError(path, "has no header and no rows", hint="Export the table again with a header row.") from None
        except pd.errors.ParserError as exc:
            raise InputFileError(path, f"is not a well-formed CSV ({exc})",
                                 hint="Check quoting and the number of fields on that line.") from None
    else:
        raise InputFileError(path, f"has an unknown extension {suffix!r}",
                             hint="Use .csv (optionally .csv.gz) or .parquet.")
    frame.columns = [str(c).strip() for c in frame.columns]
    if len(frame) == 0:
        raise InputFileError(path, "has a header but no data rows", hint="Export the table again with its rows.")
    return InputFile(path=path, sha256=sha, frame=frame)


def require_columns(source: InputFile, columns: list[str], what: str) -> None:
    missing = [c for c in columns if c not in source.frame.columns]
    if missing:
        raise InputFileError(
            source.path, f"is missing the required column{'s' if len(missing) > 1 else ''} "
                         f"{', '.join(repr(c) for c in missing)} of a {what} file", field=missing[0],
            hint=f"Found columns: {', '.join(source.frame.columns)}. Rename the column or create a view/export "
                 f"with these names (see the README, 'Load your data').")


# --- value parsing: each returns (parsed values, bad mask) --------------------------------------

def blank(values: pd.Series) -> np.ndarray:
    if values.dtype == object or pd.api.types.is_string_dtype(values):
        text = values.astype("string")
        return (text.isna() | (text.str.strip() == "")).to_numpy(dtype=bool)
    return values.isna().to_numpy(dtype=bool)


def as_text(values: pd.Series) -> pd.Series:
    """Trimmed text, None where blank."""
    text = values.astype("string").str.strip()
    text = text.where(~pd.Series(blank(values), index=values.index))
    return text.astype(object).where(text.notna(), None)


def parse_number(values: pd.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """float64 values (NaN where blank), not-a-number mask, NaN/inf-literal mask."""
    empty = blank(values)
    numbers = pd.to_numeric(values.where(~empty) if values.dtype == object else values, errors="coerce")
    numbers = numbers.to_numpy(dtype=np.float64, na_value=np.nan)
    text = values.astype("string").str.strip().str.lower()
    literal_nan = text.isin(["nan", "inf", "-inf", "infinity", "-infinity"]).to_numpy(dtype=bool)
    not_number = ~empty & np.isnan(numbers) & ~literal_nan
    nan_or_inf = (~empty & ~np.isfinite(np.nan_to_num(numbers, nan=0.0))) | literal_nan
    return np.where(empty, np.nan, numbers), not_number, nan_or_inf


def parse_timestamp(values: pd.Series) -> tuple[pd.Series, np.ndarray]:
    """UTC timestamps (naive values are taken as UTC), and the unparseable mask."""
    empty = blank(values)
    if pd.api.types.is_datetime64_any_dtype(values):
        ts = pd.to_datetime(values, utc=True)
    else:
        text = values.astype("string").str.strip()
        ts = pd.to_datetime(text, utc=True, format="ISO8601", errors="coerce")
        retry = ts.isna().to_numpy() & ~empty
        if retry.any():
            ts = ts.copy()
            ts[retry] = pd.to_datetime(text[retry], utc=True, format="mixed", errors="coerce")
    bad = ts.isna().to_numpy() & ~empty
    return ts, bad


def parse_bool(values: pd.Series, default: bool) -> tuple[np.ndarray, np.ndarray]:
    empty = blank(values)
    if pd.api.types.is_bool_dtype(values):
        return values.fillna(default).to_numpy(dtype=bool), np.zeros(len(values), bool)
    text = values.astype("string").str.strip().str.lower()
    is_true = text.isin(_TRUE).to_numpy(dtype=bool)
    is_false = text.isin(_FALSE).to_numpy(dtype=bool)
    bad = ~empty & ~is_true & ~is_false
    return np.where(empty, default, is_true), bad


class RejectCollector:
    """Collects rejected rows for one file; the first reason found for a row wins."""

    def __init__(self, source: InputFile, kind: str):
        self.source, self.kind = source, kind
        self.rejected = np.zeros(source.rows, dtype=bool)
        self.parts: list[pd.DataFrame] = []

    def add(self, mask: np.ndarray, field: str | None, reason: str, detail) -> None:
        """detail: a sentence, or a function of the row positions giving one per row."""
        mask = np.asarray(mask, dtype=bool) & ~self.rejected
        if not mask.any():
            return
        positions = np.flatnonzero(mask)
        self.rejected |= mask
        details = detail(positions) if callable(detail) else [detail] * len(positions)
        raw_rows = self.source.frame.iloc[positions].astype(object)
        raw_rows = raw_rows.where(raw_rows.notna(), None)  # NaN is not JSON
        self.parts.append(pd.DataFrame({
            "file_path": str(self.source.path),
            "file_sha256": self.source.sha256,
            "kind": self.kind,
            "row_number": positions + 1,
            "field": field,
            "reason": reason,
            "detail": list(details),
            "raw": [json.dumps(r, default=str, ensure_ascii=False) for r in raw_rows.to_dict("records")],
        }))

    def frame(self) -> pd.DataFrame:
        if not self.parts:
            return pd.DataFrame({c: pd.Series(dtype=object) for c in REJECT_COLUMNS})
        return pd.concat(self.parts, ignore_index=True)


def reject_duplicate_rows(source: InputFile, rejects: RejectCollector, columns: list[str]) -> None:
    """Exact repeats of an earlier row (same values in `columns`) are rejected, pointing at the first."""
    frame = source.frame[columns].astype("string").fillna("")
    duplicated = frame.duplicated(keep="first").to_numpy()
    if not duplicated.any():
        return
    first_row = frame.groupby(columns, sort=False, dropna=False).ngroup().to_numpy()
    first_pos = pd.Series(np.arange(len(frame))).groupby(first_row).transform("min").to_numpy()
    rejects.add(duplicated, None, "duplicate_row",
                lambda pos: [f"exact repeat of row {first_pos[p] + 1}" for p in pos])


def empty_rejects() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object) for c in REJECT_COLUMNS})
