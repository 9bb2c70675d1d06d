"""Reading input files and validating rows, vectorised.

Every input row ends up in exactly one place: the clean frame that goes to the
database, or the rejects frame with a reason code, the field and a sentence.
File-level problems (missing file, wrong encoding, missing column, no rows)
raise `InputFileError`, which the CLI prints as one paragraph.
"""
from __future__ import annotations

import contextlib
import csv
import datetime as dt
import decimal
import gzip
import hashlib
import io
import itertools
import json
import math
import zipfile
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

csv.field_size_limit(64 << 20)  # a long title is a value, not a malformed file

_TRUE = {"true", "t", "1", "yes", "y"}
_FALSE = {"false", "f", "0", "no", "n"}


@dataclass
class InputFile:
    path: Path
    sha256: str
    frame: pd.DataFrame  # raw values as read
    # CSV rows whose field count differs from the header's: row position -> the row's fields
    ragged: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    decimal: str = "."
    header_fields: int = 0

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
    # purchase lines identical in every column: {"mode": reject|keep|sum, "rows": n, "merged": n}
    identical_lines: dict = field(default_factory=dict)

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


_DELIMITERS = [",", ";", "\t", "|"]
_DELIMITER_NAMES = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe"}


def _open_text(stack: contextlib.ExitStack, path: Path, suffix: str, codec: str):
    if suffix == ".csv.gz":
        return stack.enter_context(io.TextIOWrapper(stack.enter_context(gzip.open(path, "rb")),
                                                    encoding=codec, newline=""))
    if suffix == ".csv.zip":
        archive = stack.enter_context(zipfile.ZipFile(path))
        members = [n for n in archive.namelist() if not n.endswith("/")]
        if len(members) != 1:
            raise InputFileError(path, f"is a zip archive with {len(members)} files",
                                 hint="Put exactly one CSV file in the archive.")
        return stack.enter_context(io.TextIOWrapper(stack.enter_context(archive.open(members[0])),
                                                    encoding=codec, newline=""))
    return stack.enter_context(open(path, encoding=codec, newline=""))


def detect_delimiter(header_line: str) -> str:
    """The header line's delimiter: a comma when it has one, else the most frequent of ; tab |."""
    if "," in header_line:
        return ","
    counts = {d: header_line.count(d) for d in _DELIMITERS[1:]}
    best = max(counts, key=counts.get)
    return best if counts[best] else ","


def _read_csv(path: Path, suffix: str, codec: str, delimiter: str | None) -> tuple[pd.DataFrame, dict, list]:
    """Every CSV value as text; rows whose field count differs from the header's are kept aside.

    Returns (frame, ragged {row position: the row's fields}, notes). Python's csv reader is
    used instead of pandas' because pandas takes surplus leading fields of the first row as
    an index and silently shifts every column.
    """
    notes = []
    with contextlib.ExitStack() as stack:
        fh = _open_text(stack, path, suffix, codec)
        first = fh.readline()
        if not first.strip():
            raise InputFileError(path, "has no header and no rows" if not first else "starts with an empty line "
                                 "instead of the header", hint="Export the table again with a header row.")
        if delimiter is None:
            delimiter = detect_delimiter(first)
            if delimiter != ",":
                notes.append(f"{path}: the header line is {_DELIMITER_NAMES[delimiter]}-separated, so the file was "
                             f"read with delimiter {delimiter!r} (pass --delimiter to choose another).")
        reader = csv.reader(itertools.chain([first], fh), delimiter=delimiter, quotechar='"', doublequote=True,
                            strict=False)
        try:
            header = next(reader)
            width = len(header)
            records, ragged = [], {}
            for record in reader:
                if not record:
                    continue  # a blank line is not a row
                if len(record) != width:
                    ragged[len(records)] = record
                    record = (record + [""] * width)[:width]
                records.append(record)
        except csv.Error as exc:
            raise InputFileError(path, f"is not a well-formed CSV near line {reader.line_num} ({exc})",
                                 hint="Check the quoting on that line.") from None
    names = [str(c).strip() or f"unnamed_{k + 1}" for k, c in enumerate(header)]
    seen = set()
    for name in names:
        if name in seen:
            raise InputFileError(path, f"has the column {name!r} twice in its header", field=name,
                                 hint="Rename one of them.")
        seen.add(name)
    columns = list(zip(*records)) if records else [()] * width
    frame = pd.DataFrame({name: pd.Series(col, dtype=object) for name, col in zip(names, columns)})
    return frame, ragged, notes


def read_table(path: str | Path, *, encoding: str = "utf-8", delimiter: str | None = None,
               decimal: str = ".") -> InputFile:
    """Read a CSV or Parquet file (by extension) with every CSV value kept as text.

    delimiter: None detects it from the header line (a note says so when it is not a comma);
    decimal: the decimal mark of numbers in a CSV ("." or ",").
    """
    path = Path(path)
    if not path.exists():
        raise InputFileError(path, "does not exist", hint="Check the path (it is relative to the current folder).")
    if path.is_dir():
        raise InputFileError(path, "is a folder, not a file")
    if path.stat().st_size == 0:
        raise InputFileError(path, "is empty (0 bytes)", hint="Export the table again with a header row.")
    if decimal not in {".", ","}:
        raise InputFileError(path, f"--decimal {decimal!r} is not a decimal mark", hint="Use --decimal . or --decimal ,.")
    if delimiter in {"\\t", "tab", "TAB"}:
        delimiter = "\t"
    if delimiter is not None and (len(delimiter) != 1 or delimiter in {'"', "\n", "\r"}):
        raise InputFileError(path, f"--delimiter {delimiter!r} is not one character",
                             hint="For example --delimiter ';' (or --delimiter tab).")
    suffix = "".join(path.suffixes[-2:]).lower() if path.suffix.lower() in {".gz", ".zip"} else path.suffix.lower()
    sha = sha256_of(path)
    ragged, notes = {}, []
    if suffix in {".parquet", ".pq"}:
        try:
            frame = pd.read_parquet(path)
        except Exception as exc:
            raise InputFileError(path, f"cannot be read as Parquet ({exc})") from None
    elif suffix in {".csv", ".csv.gz", ".csv.zip", ".txt"}:
        codec = "utf-8-sig" if encoding.lower().replace("_", "-") in {"utf-8", "utf8"} else encoding
        try:
            frame, ragged, notes = _read_csv(path, suffix, codec, delimiter)
        except LookupError:
            raise InputFileError(path, f"--encoding {encoding!r} is not a known text encoding",
                                 hint="For example --encoding latin-1 or --encoding cp1252.") from None
        except UnicodeDecodeError as exc:
            raw = path.read_bytes() if suffix in {".csv", ".txt"} else b""
            if raw:
                try:
                    raw.decode(codec)
                except UnicodeDecodeError as exact:
                    raise _decode_error(path, exact, raw, encoding) from None
            raise InputFileError(path, f"is not valid {encoding} ({exc})",
                                 hint="Re-save it as UTF-8 or pass --encoding.") from None
    else:
        raise InputFileError(path, f"has an unknown extension {suffix!r}",
                             hint="Use .csv (optionally .csv.gz) or .parquet.")
    frame.columns = [str(c).strip() for c in frame.columns]
    if len(frame) == 0:
        raise InputFileError(path, "has a header but no data rows", hint="Export the table again with its rows.")
    return InputFile(path=path, sha256=sha, frame=frame, ragged=ragged, notes=notes, decimal=decimal,
                     header_fields=len(frame.columns))


def require_columns(source: InputFile, columns: list[str], what: str) -> None:
    missing = [c for c in columns if c not in source.frame.columns]
    if missing:
        found = list(source.frame.columns)
        hint = (f"Found columns: {', '.join(repr(c) for c in found)}. Rename the column or create a view/export "
                f"with these names (see the README, 'Load your data').")
        joined = " ".join(found)
        other = [d for d in _DELIMITERS if d in joined]
        if other:
            hint += (f" The header holds {_DELIMITER_NAMES[other[0]]}s: if the file is "
                     f"{_DELIMITER_NAMES[other[0]]}-separated, pass --delimiter {other[0]!r} "
                     "(and --decimal , for numbers written 1,99).")
        raise InputFileError(
            source.path, f"is missing the required column{'s' if len(missing) > 1 else ''} "
                         f"{', '.join(repr(c) for c in missing)} of a {what} file", field=missing[0], hint=hint)


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


def parse_number(values: pd.Series, decimal: str = ".") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """float64 values (NaN where blank), not-a-number mask, NaN/infinite mask.

    Infinite includes values too large for a float (1e400). With decimal=",", "1,99" is 1.99
    and a value with a "." is not a number (it could be a thousands separator).
    """
    empty = blank(values)
    if pd.api.types.is_bool_dtype(values):
        return np.full(len(values), np.nan), ~empty, np.zeros(len(values), bool)
    if values.dtype == object or pd.api.types.is_string_dtype(values):
        text = values.astype("string").str.strip()
        if decimal == ",":
            has_dot = text.str.contains(".", regex=False).fillna(False).to_numpy(dtype=bool)
            text = text.str.replace(",", ".", regex=False).where(~has_dot, "not a number")
        numbers = pd.to_numeric(text.where(~pd.Series(empty, index=values.index)), errors="coerce")
    else:
        numbers = pd.to_numeric(values, errors="coerce")
    numbers = np.asarray(pd.Series(numbers).to_numpy(dtype=np.float64, na_value=np.nan), dtype=np.float64)
    lowered = values.astype("string").str.strip().str.lower()
    literal_nan = lowered.isin(["nan", "-nan", "+nan"]).fillna(False).to_numpy(dtype=bool)
    not_number = ~empty & np.isnan(numbers) & ~literal_nan
    nan_or_inf = ~empty & (np.isinf(numbers) | literal_nan)
    return np.where(empty | nan_or_inf, np.nan, numbers), not_number, nan_or_inf


def number_detail(column: str, values: pd.Series, decimal: str = "."):
    """A function of row positions giving "price '1,99' is not a number" sentences, with a hint."""
    def detail(positions):
        out = []
        for p in positions:
            value = values.iloc[p]
            text = f"{column} {value!r} is not a number"
            if decimal == "." and isinstance(value, str) and "," in value:
                text += " (a decimal comma? pass --decimal ,)"
            elif decimal == "," and isinstance(value, str) and "." in value:
                text += " (with --decimal , a '.' is not allowed: it could be a thousands separator)"
            out.append(text)
        return out
    return detail


DAYFIRST_FORMATS = [f"%d{sep}%m{sep}%Y{time}" for sep in "/.-" for time in ("", " %H:%M", " %H:%M:%S")]
EARLIEST_PLAUSIBLE = pd.Timestamp("1970-01-01", tz="UTC")
TIMESTAMP_HINT = ("use ISO 8601, e.g. 2024-03-01T14:05:00Z, or name the file's format with --date-format "
                  "'%d/%m/%Y %H:%M' or --dayfirst")


def parse_timestamp(values: pd.Series, *, date_format: str | None = None,
                    dayfirst: bool = False) -> tuple[pd.Series, np.ndarray]:
    """UTC timestamps (naive values are taken as UTC), and the unparseable mask.

    Text is read as ISO 8601 only, unless the user names the format (date_format, a strptime
    pattern) or dayfirst (day/month/year with / . or - and an optional time). A format is
    never guessed row by row: 12/01/2026 is not a timestamp without one of those.
    """
    empty = blank(values)
    if pd.api.types.is_datetime64_any_dtype(values):
        ts = pd.to_datetime(values, utc=True)
    elif pd.api.types.is_numeric_dtype(values):
        ts = pd.Series(pd.NaT, index=values.index, dtype="datetime64[us, UTC]")
    else:
        text = values.astype("string").str.strip()
        if date_format:
            ts = pd.to_datetime(text, utc=True, format=date_format, errors="coerce")
        elif dayfirst:
            ts = pd.Series(pd.NaT, index=values.index, dtype="datetime64[us, UTC]")
            for fmt in DAYFIRST_FORMATS:
                todo = (ts.isna().to_numpy() & ~empty)
                if not todo.any():
                    break
                parsed = pd.to_datetime(text[todo], utc=True, format=fmt, errors="coerce")
                ts[todo] = parsed
        else:
            ts = pd.to_datetime(text, utc=True, format="ISO8601", errors="coerce")
    bad = ts.isna().to_numpy() & ~empty
    return ts, bad


def implausible_timestamps(ts: pd.Series, now: pd.Timestamp | None = None) -> tuple[np.ndarray, callable]:
    """Timestamps before 1970 or more than a day after the load time, and a detail function."""
    now = now or pd.Timestamp.now(tz="UTC")
    latest = now + pd.Timedelta(days=1)
    values = pd.to_datetime(ts, utc=True)
    known = values.notna().to_numpy()
    early = known & (values < EARLIEST_PLAUSIBLE).fillna(False).to_numpy(dtype=bool)
    late = known & (values > latest).fillna(False).to_numpy(dtype=bool)

    def detail(positions, column):
        return [f"{column} {values.iloc[p].isoformat()} is "
                + ("before 1970" if early[p] else f"more than a day after this load ({now:%Y-%m-%d %H:%M} UTC)")
                + ": not a plausible purchase or catalogue time" for p in positions]
    return early | late, detail


_INT32_MAX = 2_147_483_647


def quantity_out_of_range(qty: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return np.isfinite(qty) & (np.abs(qty) > _INT32_MAX)


def _type_name(value) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "boolean"
    if isinstance(value, (list, tuple, np.ndarray)):
        return "list"
    if isinstance(value, dict):
        return "struct/map"
    if isinstance(value, (float, np.floating)):
        return "non-whole number"
    return type(value).__name__


def parse_key_text(values: pd.Series, column: str) -> tuple[pd.Series, np.ndarray, callable]:
    """Ids, categories, brands: trimmed text (None where blank), the bad mask, and a detail function.

    Text and whole numbers are accepted (a float column of whole numbers, as Parquet writes an
    integer column with a missing value, gives "9101", not "9101.0"); booleans, lists, structs
    and fractional numbers are rejected naming the column's type.
    """
    dtype = str(values.dtype)
    n = len(values)
    empty = blank(values) if not values.dtype == object else None
    if (values.dtype == object and pd.api.types.infer_dtype(values, skipna=True) in ("string", "empty")) or (
            values.dtype != object and pd.api.types.is_string_dtype(values)):
        return as_text(values), np.zeros(n, bool), lambda pos: []
    if pd.api.types.is_bool_dtype(values):
        bad = ~values.isna().to_numpy()
        text = pd.Series([None] * n, index=values.index, dtype=object)
        return text, bad, lambda pos: [f"{column} {values.iloc[p]!r} is a boolean (the column's type is {dtype}); "
                                       "ids, categories and brands must be text or whole numbers" for p in pos]
    if pd.api.types.is_integer_dtype(values):
        text = values.astype("string").astype(object)
        return text.where(values.notna(), None), np.zeros(n, bool), lambda pos: []
    if pd.api.types.is_float_dtype(values):
        x = values.to_numpy(dtype=np.float64, na_value=np.nan)
        with np.errstate(invalid="ignore"):
            whole = np.isfinite(x) & (np.floor(x) == x) & (np.abs(x) < 2 ** 53)
        bad = ~np.isnan(x) & ~whole
        text = [str(int(v)) if w else None for v, w in zip(x, whole)]
        return (pd.Series(text, index=values.index, dtype=object), bad,
                lambda pos: [f"{column} {x[p]!r} is not a whole number (the column's type is {dtype}); "
                             "ids, categories and brands must be text or whole numbers" for p in pos])
    if pd.api.types.is_datetime64_any_dtype(values):
        bad = ~values.isna().to_numpy()
        return (pd.Series([None] * n, index=values.index, dtype=object), bad,
                lambda pos: [f"{column} is a timestamp (the column's type is {dtype}); "
                             "ids, categories and brands must be text or whole numbers" for p in pos])
    # object (or category) columns holding Python values: decide value by value
    out, bad, kinds = [None] * n, np.zeros(n, bool), {}
    for k, value in enumerate(values.astype(object).tolist()):
        if value is None or (isinstance(value, (float, np.floating)) and math.isnan(value)) or value is pd.NA:
            continue
        if isinstance(value, str):
            value = value.strip()
            out[k] = value or None
        elif isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
            out[k] = str(int(value))
        elif isinstance(value, (float, np.floating)) and math.isfinite(value) and float(value).is_integer():
            out[k] = str(int(value))
        else:
            bad[k] = True
            kinds[k] = _type_name(value)
    return (pd.Series(out, index=values.index, dtype=object), bad,
            lambda pos: [f"{column} {values.iloc[p]!r} is a {kinds[p]} value (the column's type is {dtype}); "
                         "ids, categories and brands must be text or whole numbers" for p in pos])


def reject_key_text(f: pd.DataFrame, rejects: "RejectCollector", column: str) -> pd.Series:
    """parse_key_text, with the bad values rejected (reason invalid_type); returns the text."""
    text, bad, detail = parse_key_text(f[column], column)
    rejects.add(bad, column, "invalid_type", detail)
    return text


MAX_ID_BYTES = 512  # the purchases natural key is one btree entry (at most ~2.7 kB)


def reject_long_ids(text: pd.Series, rejects: "RejectCollector", column: str) -> None:
    lengths = text.str.len().fillna(0).to_numpy()
    suspects = np.flatnonzero(lengths > MAX_ID_BYTES // 4)
    if not len(suspects):
        return
    too_long = np.zeros(len(text), bool)
    for p in suspects:
        too_long[p] = len(text.iloc[p].encode("utf-8")) > MAX_ID_BYTES
    rejects.add(too_long, column, "value_too_long",
                lambda pos: [f"{column} is {len(text.iloc[p].encode('utf-8')):,} bytes long; ids are at most "
                             f"{MAX_ID_BYTES} bytes" for p in pos])


def reject_unreadable_rows(source: InputFile, rejects: "RejectCollector") -> None:
    """Rows that cannot be stored as written: a wrong number of fields, or a NUL character."""
    if source.ragged:
        mask = np.zeros(source.rows, bool)
        mask[list(source.ragged)] = True
        width = source.header_fields
        rejects.add(mask, None, "wrong_field_count",
                    lambda pos: [f"the row has {len(source.ragged[p])} fields but the header has {width} "
                                 "(an unquoted delimiter inside a value? quote that value)" for p in pos])
    for column in source.frame.columns:
        values = source.frame[column]
        if values.dtype == object or pd.api.types.is_string_dtype(values):
            nul = values.astype("string").str.contains("\x00", regex=False).fillna(False).to_numpy(dtype=bool)
            rejects.add(nul, column, "nul_character",
                        f"{column} contains a NUL character (byte 0x00), which Postgres text cannot store")


def json_value(value):
    """A value of a Parquet/CSV cell as JSON (None for missing); ValueError when it has no JSON form."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, str):
        return value.strip() or None
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        if math.isnan(value):
            return None
        if not math.isfinite(value):
            raise ValueError("is infinite")
        return float(value)
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return [json_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): json_value(v) for k, v in value.items()}
    if isinstance(value, (pd.Timestamp, dt.datetime, dt.date)):
        return value.isoformat()
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("is binary data, not text") from None
    if isinstance(value, decimal.Decimal):
        if not value.is_finite():
            raise ValueError("is not finite")
        return int(value) if value == value.to_integral_value() else float(value)
    return str(value)


def parse_bool(values: pd.Series, default: bool) -> tuple[np.ndarray, np.ndarray]:
    empty = blank(values)
    if pd.api.types.is_bool_dtype(values):
        return values.fillna(default).to_numpy(dtype=bool), np.zeros(len(values), bool)
    text = values.astype("string").str.strip().str.lower()
    is_true = text.isin(_TRUE).to_numpy(dtype=bool)
    is_false = text.isin(_FALSE).to_numpy(dtype=bool)
    bad = ~empty & ~is_true & ~is_false
    return np.where(empty, default, is_true), bad


def _raw_safe(value):
    """A rejected row as jsonb accepts it: no NaN/Infinity, no NUL characters (shown as \\x00)."""
    if isinstance(value, dict):
        return {str(k): _raw_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_raw_safe(v) for v in (value.tolist() if isinstance(value, np.ndarray) else value)]
    if isinstance(value, str):
        return value.replace("\x00", "\\x00")
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else (None if math.isnan(value) else str(value))
    if isinstance(value, (np.integer, np.bool_)):
        return value.item()
    if value is None or isinstance(value, (bool, int)):
        return value
    return str(value)


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
            "raw": [json.dumps(_raw_safe({"fields": self.source.ragged[p]} if p in self.source.ragged else r),
                               default=str, ensure_ascii=False)
                    for p, r in zip(positions, raw_rows.to_dict("records"))],
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
