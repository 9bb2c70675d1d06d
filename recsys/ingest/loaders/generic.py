"""`recsys load --items ITEMS --purchases PURCHASES`: the generic CSV/Parquet import."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from recsys.errors import InputFileError
from recsys.ingest.loaders.files import (
    ITEM_COLUMNS, PURCHASE_COLUMNS, REQUIRED_ITEM_COLUMNS, REQUIRED_PURCHASE_COLUMNS,
    _INT32_MAX, TIMESTAMP_HINT, InputFile, LoadFrames, RejectCollector, as_text, blank, empty_rejects,
    implausible_timestamps, json_value, number_detail, parse_bool, parse_number, parse_timestamp,
    quantity_out_of_range, read_table, reject_duplicate_rows, reject_key_text, reject_long_ids,
    reject_unreadable_rows, require_columns,
)


DUPLICATE_LINES = ("reject", "keep", "sum")
DEFAULT_DUPLICATE_LINES = "reject"


def clean_items(source: InputFile, side_features: list[str] = (), *, date_format: str | None = None,
                dayfirst: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Validate an items table; return (clean items, rejects)."""
    require_columns(source, REQUIRED_ITEM_COLUMNS, "items")
    for name in side_features:
        if name not in source.frame.columns:
            raise InputFileError(source.path, f"has no column {name!r} for --side-feature {name}", field=name,
                                 hint=f"Found columns: {', '.join(source.frame.columns)}.")
        if name in ITEM_COLUMNS:
            raise InputFileError(source.path, f"--side-feature {name} names a built-in column", field=name,
                                 hint="category, brand and price are side features already; "
                                      "declare only extra columns.")
    f = source.frame
    n = len(f)
    rejects = RejectCollector(source, "item")
    col = lambda name: f[name] if name in f.columns else pd.Series([None] * n, index=f.index, dtype=object)
    reject_unreadable_rows(source, rejects)

    ids = reject_key_text(f, rejects, "item_id")
    rejects.add(blank(f["item_id"]), "item_id", "missing_item_id", "item_id is empty")
    reject_long_ids(ids, rejects, "item_id")
    category = reject_key_text(f, rejects, "category")
    rejects.add(blank(f["category"]), "category", "missing_category", "category is empty (it is required)")
    brand = reject_key_text(f, rejects, "brand") if "brand" in f.columns else col("brand")
    for name in side_features:
        reject_key_text(f, rejects, name)
    price, not_number, nan_or_inf = parse_number(col("price"), source.decimal)
    rejects.add(not_number, "price", "invalid_price", number_detail("price", col("price"), source.decimal))
    rejects.add(nan_or_inf, "price", "nan_price",
                lambda pos: [f"price {col('price').iloc[p]!r} is NaN or infinite; leave it empty when unknown"
                             for p in pos])
    rejects.add(price < 0, "price", "negative_price",
                lambda pos: [f"price {price[p]:g} is negative" for p in pos])
    in_stock, bad_bool = parse_bool(col("in_stock"), default=True)
    rejects.add(bad_bool, "in_stock", "invalid_in_stock",
                lambda pos: [f"in_stock {f['in_stock'].iloc[p]!r} is not true/false" for p in pos])
    created, bad_ts = parse_timestamp(col("created_at"), date_format=date_format, dayfirst=dayfirst)
    rejects.add(bad_ts, "created_at", "invalid_timestamp",
                lambda pos: [f"created_at {f['created_at'].iloc[p]!r} is not a timestamp ({TIMESTAMP_HINT})"
                             for p in pos])
    implausible, implausible_detail = implausible_timestamps(created)
    rejects.add(implausible, "created_at", "implausible_timestamp", lambda pos: implausible_detail(pos, "created_at"))
    title = col("title")
    if title.dtype == object and pd.api.types.infer_dtype(title, skipna=True) not in ("string", "empty"):
        title = reject_key_text(f, rejects, "title")
    extra = [c for c in f.columns if c not in ITEM_COLUMNS]
    attributes, bad_attr, attr_detail = _attributes(f, extra)
    rejects.add(bad_attr, None, "invalid_attribute", attr_detail)
    reject_duplicate_rows(source, rejects, list(f.columns))

    # The same item_id twice with different values: keep the first, reject the rest.
    dup_id = ids.duplicated(keep="first").to_numpy() & ~rejects.rejected & ids.notna().to_numpy()
    if dup_id.any():
        kept = ~rejects.rejected
        first_pos = {}
        for pos in np.flatnonzero(kept):
            first_pos.setdefault(ids.iloc[pos], pos)
        rejects.add(dup_id, "item_id", "duplicate_item_id",
                    lambda pos: [f"item_id {ids.iloc[p]!r} already appears in row {first_pos.get(ids.iloc[p], p) + 1} "
                                 "with different values" for p in pos])

    keep = ~rejects.rejected
    items = pd.DataFrame({
        "item_id": ids[keep].to_numpy(dtype=object),
        "category": category[keep].to_numpy(dtype=object),
        "brand": as_text(brand)[keep].to_numpy(dtype=object),
        "price": price[keep],
        "title": as_text(title)[keep].to_numpy(dtype=object),
        "in_stock": in_stock[keep],
        "created_at": created[keep].reset_index(drop=True),
        "attributes": [a for a, k in zip(attributes, keep) if k],
    })
    return items, rejects.frame()


def _attributes(f: pd.DataFrame, extra: list[str]) -> tuple[list[str], np.ndarray, callable]:
    """The extra columns of each row as a JSON object (missing values left out).

    CSV values are text; Parquet values keep their JSON type (numbers, booleans, lists,
    objects). A value with no JSON form (an infinite number, binary data) rejects the row.
    """
    n = len(f)
    bad, why = np.zeros(n, bool), {}
    if not extra:
        return ["{}"] * n, bad, lambda pos: []
    all_text = all((f[c].dtype == object and pd.api.types.infer_dtype(f[c], skipna=True) in ("string", "empty"))
                   or (f[c].dtype != object and pd.api.types.is_string_dtype(f[c])) for c in extra)
    out = []
    if all_text:
        attrs = f[extra].astype("string").apply(lambda s: s.str.strip())
        for row in attrs.to_dict("records"):
            out.append(json.dumps({k: v for k, v in row.items() if v is not None and v == v and v != ""},
                                  ensure_ascii=False, sort_keys=True))
        return out, bad, lambda pos: []
    columns = {c: f[c].astype(object).tolist() for c in extra}
    for k in range(n):
        row = {}
        for c in extra:
            try:
                value = json_value(columns[c][k])
            except ValueError as exc:
                bad[k], why[k] = True, f"attribute {c!r} {columns[c][k]!r} {exc}"
                break
            if value is not None:
                row[c] = value
        out.append("{}" if bad[k] else json.dumps(row, ensure_ascii=False, sort_keys=True))
    return out, bad, lambda pos: [why[p] for p in pos]


def clean_purchases(source: InputFile, *, date_format: str | None = None, dayfirst: bool = False,
                    duplicate_lines: str = DEFAULT_DUPLICATE_LINES) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Validate a purchases table; return (clean purchase lines, rejects, identical-line counts).

    duplicate_lines: what to do with a line identical to an earlier one in every column:
    "reject" it (pointing at the first), "keep" it as one more line, or "sum" it into the
    first line's quantity.
    """
    if duplicate_lines not in DUPLICATE_LINES:
        raise ValueError(f"duplicate_lines must be one of {DUPLICATE_LINES}, got {duplicate_lines!r}")
    require_columns(source, REQUIRED_PURCHASE_COLUMNS, "purchases")
    f = source.frame
    n = len(f)
    rejects = RejectCollector(source, "purchase")
    col = lambda name: f[name] if name in f.columns else pd.Series([None] * n, index=f.index, dtype=object)
    reject_unreadable_rows(source, rejects)

    user_id = reject_key_text(f, rejects, "user_id")
    rejects.add(blank(f["user_id"]), "user_id", "missing_user_id", "user_id is empty")
    reject_long_ids(user_id, rejects, "user_id")
    item_id = reject_key_text(f, rejects, "item_id")
    rejects.add(blank(f["item_id"]), "item_id", "missing_item_id", "item_id is empty")
    reject_long_ids(item_id, rejects, "item_id")
    order_id = reject_key_text(f, rejects, "order_id") if "order_id" in f.columns else as_text(col("order_id"))
    reject_long_ids(order_id, rejects, "order_id")
    ts, bad_ts = parse_timestamp(f["purchased_at"], date_format=date_format, dayfirst=dayfirst)
    rejects.add(blank(f["purchased_at"]), "purchased_at", "missing_timestamp", "purchased_at is empty")
    rejects.add(bad_ts, "purchased_at", "invalid_timestamp",
                lambda pos: [f"purchased_at {f['purchased_at'].iloc[p]!r} is not a timestamp ({TIMESTAMP_HINT})"
                             for p in pos])
    implausible, implausible_detail = implausible_timestamps(ts)
    rejects.add(implausible, "purchased_at", "implausible_timestamp",
                lambda pos: implausible_detail(pos, "purchased_at"))
    qty, qty_not_number, qty_nan = parse_number(col("quantity"), source.decimal)
    qty_blank = np.isnan(qty) & ~qty_not_number & ~qty_nan
    qty = np.where(qty_blank, 1.0, qty)
    rejects.add(qty_not_number, "quantity", "invalid_quantity", number_detail("quantity", col("quantity"), source.decimal))
    rejects.add(qty_nan, "quantity", "invalid_quantity",
                lambda pos: [f"quantity {col('quantity').iloc[p]!r} is NaN or infinite" for p in pos])
    with np.errstate(invalid="ignore"):
        rejects.add(np.nan_to_num(qty) != np.round(np.nan_to_num(qty)), "quantity", "invalid_quantity",
                    lambda pos: [f"quantity {qty[p]:g} is not a whole number" for p in pos])
    rejects.add(qty <= 0, "quantity", "non_positive_quantity",
                lambda pos: [f"quantity {qty[p]:g} is not positive (returns are not purchases)" for p in pos])
    rejects.add(quantity_out_of_range(qty), "quantity", "quantity_out_of_range",
                lambda pos: [f"quantity {qty[p]:.0f} is out of range (at most {_INT32_MAX:,})" for p in pos])
    price, price_not_number, price_nan = parse_number(col("unit_price"), source.decimal)
    rejects.add(price_not_number, "unit_price", "invalid_price",
                number_detail("unit_price", col("unit_price"), source.decimal))
    rejects.add(price_nan, "unit_price", "nan_price",
                lambda pos: [f"unit_price {col('unit_price').iloc[p]!r} is NaN or infinite; leave it empty when "
                             "unknown" for p in pos])
    rejects.add(price < 0, "unit_price", "negative_price",
                lambda pos: [f"unit_price {price[p]:g} is negative" for p in pos])
    merged = np.zeros(n, bool)
    if duplicate_lines == "reject":
        before = int(rejects.rejected.sum())
        reject_duplicate_rows(source, rejects, list(f.columns))
        identical_rows = int(rejects.rejected.sum()) - before
    else:
        valid = ~rejects.rejected
        repeats, first_pos = _identical_lines(f, valid)
        if duplicate_lines == "sum" and repeats.any():
            totals = pd.Series(qty[valid]).groupby(first_pos[valid]).sum()
            too_big = totals.index[totals > _INT32_MAX].to_numpy()
            if len(too_big):
                in_big = np.isin(first_pos, too_big) & valid
                rejects.add(in_big, "quantity", "quantity_out_of_range",
                            lambda pos: [f"the identical lines of row {first_pos[p] + 1} add up to more than "
                                         f"{_INT32_MAX:,} units" for p in pos])
                repeats &= ~in_big
            fine = totals.index[totals <= _INT32_MAX].to_numpy()
            qty = qty.copy()
            qty[fine] = totals.loc[fine].to_numpy()
            merged = repeats.copy()
        identical_rows = int(repeats.sum())
    identical = {"mode": duplicate_lines, "rows": identical_rows, "merged": int(merged.sum())}
    return (_purchase_frame(source, rejects, ts, qty, price, order_id, user_id=user_id, item_id=item_id,
                            skip=merged), rejects.frame(), identical)


def _identical_lines(f: pd.DataFrame, candidates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows identical in every column to an earlier candidate row, and each row's first position."""
    frame = f.astype("string").fillna("")
    group = frame.groupby(list(frame.columns), sort=False, dropna=False).ngroup().to_numpy()
    positions = np.arange(len(frame))
    masked = np.where(candidates, positions, len(frame))
    first_pos = pd.Series(masked).groupby(group).transform("min").to_numpy()
    repeats = candidates & (first_pos != positions)
    return repeats, first_pos


def _purchase_frame(source: InputFile, rejects: RejectCollector, ts: pd.Series, qty: np.ndarray,
                    price: np.ndarray, order_id: pd.Series, user_id=None, item_id=None, skip=None) -> pd.DataFrame:
    keep = ~rejects.rejected if skip is None else ~rejects.rejected & ~skip
    f = source.frame
    purchases = pd.DataFrame({
        "user_id": (as_text(f["user_id"]) if user_id is None else user_id)[keep].to_numpy(dtype=object),
        "item_id": (as_text(f["item_id"]) if item_id is None else item_id)[keep].to_numpy(dtype=object),
        "purchased_at": ts[keep].reset_index(drop=True),
        "order_id": order_id[keep].to_numpy(dtype=object),
        "quantity": qty[keep].astype(np.int64),
        "unit_price": price[keep],
        "file_path": str(source.path),
        "file_sha256": source.sha256,
        "row_number": np.flatnonzero(keep) + 1,
    })
    return add_line_numbers(purchases)


def add_line_numbers(purchases: pd.DataFrame) -> pd.DataFrame:
    """line_no = k-th line with the same (user, item, time, order): part of the natural key."""
    key = [purchases["user_id"], purchases["item_id"], purchases["purchased_at"],
           purchases["order_id"].fillna("")]
    purchases["line_no"] = purchases.groupby(key, sort=False, dropna=False).cumcount().astype(np.int64)
    return purchases


def read_frames(items_path: str | Path | None, purchases_path: str | Path | None, *,
                side_features: list[str] = (), encoding: str = "utf-8", delimiter: str | None = None,
                decimal: str = ".", date_format: str | None = None, dayfirst: bool = False,
                duplicate_lines: str = DEFAULT_DUPLICATE_LINES) -> LoadFrames:
    """Read and validate the user's files. Either may be omitted (catalogue-only or purchases-only load).

    delimiter (None: detected from the header line), decimal, date_format / dayfirst and
    duplicate_lines are the `recsys load` options of the same names (see the README).
    """
    if items_path is None and purchases_path is None:
        raise InputFileError("(no file)", "nothing to load", hint="Pass --items and/or --purchases.")
    if date_format and dayfirst:
        raise InputFileError("(options)", "--date-format and --dayfirst cannot be combined",
                             hint="--date-format names the whole format; --dayfirst is a shorthand for day/month/year.")
    files, reject_parts, items_file, notes = [], [], None, []
    items = pd.DataFrame(columns=[*ITEM_COLUMNS, "attributes"])
    purchases = pd.DataFrame(columns=[*PURCHASE_COLUMNS, "line_no", "file_path", "file_sha256", "row_number"])
    identical = {"mode": duplicate_lines, "rows": 0, "merged": 0}
    if items_path is not None:
        source = read_table(items_path, encoding=encoding, delimiter=delimiter, decimal=decimal)
        items, rejected = clean_items(source, list(side_features), date_format=date_format, dayfirst=dayfirst)
        files.append(source)
        items_file = source
        reject_parts.append(rejected)
        notes.extend(source.notes)
    if purchases_path is not None:
        source = read_table(purchases_path, encoding=encoding, delimiter=delimiter, decimal=decimal)
        purchases, rejected, identical = clean_purchases(source, date_format=date_format, dayfirst=dayfirst,
                                                         duplicate_lines=duplicate_lines)
        files.append(source)
        reject_parts.append(rejected)
        notes.extend(source.notes)
    parts = [r for r in reject_parts if len(r)]
    rejects = pd.concat(parts, ignore_index=True) if parts else empty_rejects()
    return LoadFrames(source="files", files=files, items=items, purchases=purchases, rejects=rejects,
                      side_features=list(side_features), items_file=items_file, notes=notes,
                      identical_lines=identical)
