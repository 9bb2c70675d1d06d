"""Write validated input frames into Postgres: COPY into staging tables, then upsert.

One transaction per load: a failure anywhere leaves the database as it was.
Items upsert on item_id (a row changes only when a value changed, so a reload
changes nothing); purchase lines insert on their natural key and are skipped
when already present. Every input row is counted as loaded, already present
or rejected; rejected rows are kept in `load_rejects` with a reason.
"""
from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass, field

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from recsys.errors import UserError
from recsys.ingest.loaders.files import REJECT_COLUMNS, LoadFrames
from recsys.ingest.migrate import migrate

LOAD_LOCK_KEY = 0x5EC5_0002  # one load at a time per database
MISSING_ITEM_CATEGORY = "unknown"

OPTIONAL_ITEM_COLUMNS = ["brand", "price", "title", "in_stock", "created_at", "attributes"]


@dataclass
class LoadReport:
    load_id: int
    source: str
    input_rows: int
    items_inserted: int = 0
    items_updated: int = 0
    items_unchanged: int = 0
    items_created_for_purchases: int = 0
    purchases_inserted: int = 0
    purchases_already_present: int = 0
    # purchase lines identical in every column to an earlier one (--duplicate-lines)
    identical_lines: int = 0
    identical_mode: str = "reject"
    purchases_merged: int = 0  # identical lines summed into the first (--duplicate-lines sum)
    rejected: dict[str, int] = field(default_factory=dict)  # reason -> rows
    reject_examples: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    item_rows_in_files: int = 0  # rows of an items file (0 for adapters that derive the catalogue)

    @property
    def rejected_rows(self) -> int:
        return sum(self.rejected.values())

    @property
    def accounted_rows(self) -> int:
        loaded_items = self.items_inserted + self.items_updated + self.items_unchanged if self.item_rows_in_files else 0
        return (loaded_items + self.purchases_inserted + self.purchases_already_present + self.purchases_merged
                + self.rejected_rows)

    def as_dict(self) -> dict:
        return {
            "load_id": self.load_id, "source": self.source, "input_rows": self.input_rows,
            "items_inserted": self.items_inserted, "items_updated": self.items_updated,
            "items_unchanged": self.items_unchanged,
            "items_created_for_purchases": self.items_created_for_purchases,
            "purchases_inserted": self.purchases_inserted,
            "purchases_already_present": self.purchases_already_present,
            "identical_lines": self.identical_lines, "duplicate_lines": self.identical_mode,
            "purchases_merged": self.purchases_merged,
            "rejected": dict(self.rejected), "rejected_rows": self.rejected_rows,
            "accounted_rows": self.accounted_rows, "seconds": round(self.seconds, 2),
        }

    def to_text(self) -> str:
        lines = [f"Load {self.load_id} ({self.source}): {self.input_rows:,} input rows in {self.seconds:.1f} s"]
        if self.item_rows_in_files or self.items_inserted or self.items_updated:
            lines.append(f"  items:     {self.items_inserted:,} new, {self.items_updated:,} updated, "
                         f"{self.items_unchanged:,} unchanged")
        if self.items_created_for_purchases:
            lines.append(f"  items created for purchases (--create-missing-items, category "
                         f"{MISSING_ITEM_CATEGORY!r}): {self.items_created_for_purchases:,}")
        purchases = f"  purchases: {self.purchases_inserted:,} new, {self.purchases_already_present:,} already loaded"
        if self.purchases_merged:
            purchases += f", {self.purchases_merged:,} summed into an identical earlier line"
        lines.append(purchases)
        if self.identical_lines:
            lines.append("  identical lines: " + {
                "reject": f"{self.identical_lines:,} purchase lines repeat an earlier line exactly and were rejected "
                          "(--duplicate-lines reject, the default; if your shop exports one line per unit, "
                          "--duplicate-lines keep or sum counts them)",
                "keep": f"{self.identical_lines:,} purchase lines repeat an earlier line exactly and were kept as "
                        "separate lines (--duplicate-lines keep)",
                "sum": f"{self.identical_lines:,} purchase lines repeat an earlier line exactly and were added to "
                       "its quantity (--duplicate-lines sum)"}[self.identical_mode])
        lines.append(f"  rejected:  {self.rejected_rows:,} rows" + (":" if self.rejected else ""))
        for reason, count in sorted(self.rejected.items(), key=lambda kv: -kv[1]):
            lines.append(f"    {reason:<24} {count:,}")
        for example in self.reject_examples:
            lines.append(f"    e.g. {example}")
        if self.rejected:
            lines.append(f"  every rejected row is in table load_rejects (load_id = {self.load_id}); "
                         f"`recsys rejects --load {self.load_id}` lists them")
        lines.append(f"  accounted: {self.accounted_rows:,} of {self.input_rows:,} input rows")
        lines.extend(f"  note: {note}" for note in self.notes)
        return "\n".join(lines)


def _copy(cursor, table: str, frame: pd.DataFrame, columns: list[str]) -> None:
    """COPY in CSV format with COPY's default NULL, the unquoted empty field: a missing value
    is written as nothing, and any text ("\\N" included) reaches Postgres as written. The
    loaders store blank text as missing, so no value is the empty string."""
    buffer = io.StringIO()
    frame[columns].to_csv(buffer, index=False, header=False, na_rep="", date_format="%Y-%m-%dT%H:%M:%S%z")
    buffer.seek(0)
    cols = ", ".join(columns)
    cursor.copy_expert(f"COPY {table} ({cols}) FROM STDIN WITH (FORMAT csv)", buffer)


def _epoch_micros(values: pd.Series) -> pd.Series:
    """Timestamps as integer microseconds since the epoch (nullable): far cheaper to COPY than text."""
    ts = pd.to_datetime(values, utc=True)
    micros = ts.dt.tz_convert("UTC").dt.tz_localize(None).astype("datetime64[us]").astype("int64")
    return micros.astype("Int64").where(ts.notna().to_numpy(), pd.NA)


def load_frames(engine: Engine, frames: LoadFrames, *, create_missing_items: bool = False,
                strict: bool = False) -> LoadReport:
    """Write `frames` in one transaction; with `strict`, any rejected row aborts the load unchanged."""
    started = time.perf_counter()
    migrate(engine)
    items_file = frames.items_file
    item_rows_in_files = items_file.rows if items_file else 0
    # only the columns an items file has are updated (a file without `brand` keeps the known brands)
    present_optional = ([c for c in OPTIONAL_ITEM_COLUMNS if c in items_file.frame.columns or c == "attributes"]
                        if items_file else list(OPTIONAL_ITEM_COLUMNS))

    with engine.begin() as conn:
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": LOAD_LOCK_KEY})
        load_id = conn.execute(sa.text(
            "INSERT INTO loads (source, files, options) VALUES (:s, CAST(:f AS jsonb), CAST(:o AS jsonb)) "
            "RETURNING load_id"),
            {"s": frames.source, "f": json.dumps([f.describe() for f in frames.files]),
             "o": json.dumps({"create_missing_items": create_missing_items, "strict": strict,
                              "side_features": frames.side_features})}).scalar_one()
        report = LoadReport(load_id=load_id, source=frames.source, input_rows=frames.input_rows,
                            notes=list(frames.notes), item_rows_in_files=item_rows_in_files)
        identical = frames.identical_lines or {}
        report.identical_lines = int(identical.get("rows", 0))
        report.identical_mode = identical.get("mode", "reject")
        report.purchases_merged = int(identical.get("merged", 0))
        raw = conn.connection.dbapi_connection
        cursor = raw.cursor()
        for name in frames.side_features:
            conn.execute(sa.text("INSERT INTO side_features (name) VALUES (:n) ON CONFLICT DO NOTHING"), {"n": name})

        # --- items -----------------------------------------------------------------------
        if len(frames.items):
            cursor.execute(
                "CREATE TEMP TABLE stage_items_raw (item_id text, category text, brand text, price numeric, "
                "title text, in_stock boolean, created_us bigint, attributes jsonb) ON COMMIT DROP")
            items = frames.items.copy()
            items["created_us"] = _epoch_micros(items["created_at"])
            _copy(cursor, "stage_items_raw", items,
                  ["item_id", "category", "brand", "price", "title", "in_stock", "created_us", "attributes"])
            cursor.execute("CREATE TEMP TABLE stage_items ON COMMIT DROP AS SELECT item_id, category, brand, price, "
                           "title, in_stock, timestamptz 'epoch' + created_us * interval '1 microsecond' AS created_at, attributes "
                           "FROM stage_items_raw")
            set_columns = ["category", *[c for c in present_optional if c != "created_at"]]
            assignments = [f"{c} = EXCLUDED.{c}" for c in set_columns]
            compare_new = [f"EXCLUDED.{c}" for c in set_columns]
            compare_old = [f"items.{c}" for c in set_columns]
            if "created_at" in present_optional:
                # a blank created_at never erases a known one
                assignments.append("created_at = coalesce(EXCLUDED.created_at, items.created_at)")
                compare_new.append("coalesce(EXCLUDED.created_at, items.created_at)")
                compare_old.append("items.created_at")
            insert_columns = ["item_id", *set_columns] + (["created_at"] if "created_at" in present_optional else [])
            select_columns = [c if c != "in_stock" else "coalesce(in_stock, true)" for c in insert_columns]
            select_columns = [c if c != "attributes" else "coalesce(attributes, '{}'::jsonb)" for c in select_columns]
            cursor.execute(
                f"INSERT INTO items ({', '.join(insert_columns)}) "
                f"SELECT {', '.join(select_columns)} FROM stage_items "
                f"ON CONFLICT (item_id) DO UPDATE SET {', '.join(assignments)}, updated_at = now() "
                f"WHERE ({', '.join(compare_old)}) IS DISTINCT FROM ({', '.join(compare_new)}) "
                "RETURNING (xmax = 0)")
            flags = [row[0] for row in cursor.fetchall()]
            report.items_inserted = sum(flags)
            report.items_updated = len(flags) - report.items_inserted
            report.items_unchanged = len(items) - len(flags)

        # --- purchases -------------------------------------------------------------------
        if len(frames.purchases):
            cursor.execute(
                "CREATE TEMP TABLE stage_purchases_raw (user_id text, item_id text, purchased_us bigint, "
                "order_id text, quantity integer, unit_price numeric, line_no integer, row_number integer) "
                "ON COMMIT DROP")
            purchases = frames.purchases
            staged = pd.DataFrame({"purchased_us": _epoch_micros(purchases["purchased_at"])})
            for column in ["user_id", "item_id", "order_id", "quantity", "unit_price", "line_no", "row_number"]:
                staged[column] = purchases[column].to_numpy()
            _copy(cursor, "stage_purchases_raw", staged,
                  ["user_id", "item_id", "purchased_us", "order_id", "quantity", "unit_price", "line_no", "row_number"])
            # one purchases file per load: its path and checksum are constants, not staged per row
            cursor.execute(
                "CREATE TEMP TABLE stage_purchases ON COMMIT DROP AS SELECT user_id, item_id, "
                "timestamptz 'epoch' + purchased_us * interval '1 microsecond' AS purchased_at, order_id, quantity, unit_price, line_no, "
                "%s::text AS file_path, %s::text AS file_sha256, row_number FROM stage_purchases_raw",
                (str(purchases["file_path"].iloc[0]), str(purchases["file_sha256"].iloc[0])))
            if create_missing_items:
                cursor.execute(
                    "INSERT INTO items (item_id, category) SELECT DISTINCT s.item_id, %s FROM stage_purchases s "
                    "WHERE NOT EXISTS (SELECT 1 FROM items i WHERE i.item_id = s.item_id) ON CONFLICT DO NOTHING",
                    (MISSING_ITEM_CATEGORY,))
                report.items_created_for_purchases = cursor.rowcount
            rejected_item_ids = frames.rejects.loc[frames.rejects["kind"] == "item", "raw"]
            rejected_item_ids = sorted({json.loads(r).get("item_id") for r in rejected_item_ids} - {None})
            cursor.execute(
                "CREATE TEMP TABLE stage_unknown ON COMMIT DROP AS "
                "SELECT s.* FROM stage_purchases s WHERE NOT EXISTS "
                "(SELECT 1 FROM items i WHERE i.item_id = s.item_id)")
            unknown = cursor.rowcount
            if unknown:
                cursor.execute(
                    "INSERT INTO load_rejects (load_id, file_path, file_sha256, kind, row_number, field, reason, "
                    "detail, raw) SELECT %s, file_path, file_sha256, 'purchase', row_number, 'item_id', "
                    "CASE WHEN item_id = ANY(%s) THEN 'item_rejected' ELSE 'unknown_item' END, "
                    "CASE WHEN item_id = ANY(%s) THEN 'item ' || quote_literal(item_id) || "
                    "' was rejected in the items file of this load' ELSE 'item ' || quote_literal(item_id) || "
                    "' is not in the catalogue (load it in the items file, or pass --create-missing-items)' END, "
                    "json_build_object('user_id', user_id, 'item_id', item_id, 'purchased_at', purchased_at, "
                    "'order_id', order_id, 'quantity', quantity, 'unit_price', unit_price) "
                    "FROM stage_unknown ON CONFLICT (file_sha256, kind, row_number) DO NOTHING",
                    (load_id, rejected_item_ids, rejected_item_ids))
                cursor.execute("SELECT CASE WHEN item_id = ANY(%s) THEN 'item_rejected' ELSE 'unknown_item' END, "
                               "count(*) FROM stage_unknown GROUP BY 1", (rejected_item_ids,))
                for reason, count in cursor.fetchall():
                    report.rejected[reason] = report.rejected.get(reason, 0) + count
                cursor.execute("SELECT row_number, detail FROM (SELECT row_number, 'item ' || quote_literal(item_id) "
                               "|| ' is not in the catalogue' AS detail FROM stage_unknown ORDER BY row_number "
                               "LIMIT 1) x")
                for row_number, detail in cursor.fetchall():
                    report.reject_examples.append(f"{purchases['file_path'].iloc[0]}, row {row_number}, "
                                                  f"field 'item_id': {detail}")
            cursor.execute(
                "INSERT INTO purchases (user_id, item_id, purchased_at, order_id, quantity, unit_price, line_no, "
                "load_id) SELECT user_id, item_id, purchased_at, order_id, quantity, unit_price, line_no, %s "
                "FROM stage_purchases s WHERE EXISTS (SELECT 1 FROM items i WHERE i.item_id = s.item_id) "
                # key order keeps the unique-index insertions local
                "ORDER BY user_id, item_id, purchased_at, coalesce(order_id, ''), line_no "
                "ON CONFLICT ON CONSTRAINT purchases_natural_key DO NOTHING", (load_id,))
            report.purchases_inserted = cursor.rowcount
            report.purchases_already_present = len(purchases) - unknown - report.purchases_inserted

        # --- rows rejected while reading ---------------------------------------------------
        if len(frames.rejects):
            cursor.execute("CREATE TEMP TABLE stage_rejects (file_path text, file_sha256 text, kind text, "
                           "row_number integer, field text, reason text, detail text, raw jsonb) ON COMMIT DROP")
            _copy(cursor, "stage_rejects", frames.rejects, REJECT_COLUMNS)
            cursor.execute(f"INSERT INTO load_rejects (load_id, {', '.join(REJECT_COLUMNS)}) "
                           f"SELECT %s, {', '.join(REJECT_COLUMNS)} FROM stage_rejects "
                           "ON CONFLICT (file_sha256, kind, row_number) DO NOTHING", (load_id,))
            for reason, count in frames.rejects["reason"].value_counts().items():
                report.rejected[reason] = report.rejected.get(reason, 0) + int(count)
            for _, first in frames.rejects.drop_duplicates("reason").head(5).iterrows():
                field_part = f", field {first['field']!r}" if first["field"] else ""
                report.reject_examples.insert(
                    0, f"{first['file_path']}, row {first['row_number']}{field_part}: {first['detail']}")

        if strict and report.rejected_rows:
            raise UserError(
                f"--strict: {report.rejected_rows:,} input rows would be rejected, so nothing was loaded "
                f"(the database is unchanged). " + "; ".join(report.reject_examples[:3]) +
                ". Fix these rows, or load without --strict to keep the good rows and record the rejected ones.")
        report.seconds = time.perf_counter() - started
        conn.execute(sa.text("UPDATE loads SET finished_at = now(), counts = CAST(:c AS jsonb) WHERE load_id = :l"),
                     {"c": json.dumps(report.as_dict()), "l": load_id})
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("ANALYZE items"))
        conn.execute(sa.text("ANALYZE purchases"))
    report.seconds = time.perf_counter() - started
    return report
