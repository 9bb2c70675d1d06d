"""`recsys export`: every item's top k neighbours in a Postgres table, swapped in atomically.

    item_id text, rank integer, neighbor_id text, score real, version text
    PRIMARY KEY (item_id, rank)                        -- a product page: WHERE item_id = $1 ORDER BY rank

One transaction: a new table is filled with COPY (the rows come from the client's
batch path, a few thousand items per index search), indexed and analysed, then the
old table is dropped and the new one renamed to the name. The table appears under its
name only at COMMIT, so a reader sees the old table or the new one, complete, never a
half-written one (a query that reaches the old table while the swap commits waits for
it and then reads the new table). The grants on the old table are given to the new one.

The table's comment records what it holds (version, k, rows): rerunning for the same
version and k changes nothing. A table of that name that recsys did not write is never
replaced.
"""
from __future__ import annotations

import csv
import io
import json
import secrets
import time
from dataclasses import dataclass, field

import sqlalchemy as sa
import psycopg2.errors
from psycopg2 import sql
from sqlalchemy.engine import Engine

from recsys.errors import UserError
from recsys.serving.bundle import open_bundle
from recsys.serving.client import Client, NoVersionError, UnknownItemError
from recsys.serving.registry import get_alias

EXPORT_MARK = "recsys export"  # the table comment starts with it: {"recsys export": 1, "version": ..., ...}
PG_NAME_BYTES = 63
CHUNK_ITEMS = 2048

CREATE_TABLE = """
CREATE TABLE {table} (
    item_id     text    NOT NULL,
    rank        integer NOT NULL,
    neighbor_id text    NOT NULL,
    score       real    NOT NULL,
    version     text    NOT NULL
)"""
COPY_ROWS = "COPY {table} (item_id, rank, neighbor_id, score, version) FROM STDIN WITH (FORMAT csv)"
ADD_KEY = "ALTER TABLE {table} ADD CONSTRAINT {key} PRIMARY KEY (item_id, rank)"
FIND_TABLE = """
SELECT c.oid, c.relkind, obj_description(c.oid, 'pg_class') AS comment
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %(schema)s AND c.relname = %(name)s"""
TABLE_GRANTS = """
SELECT CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee) END AS grantee,
       a.privilege_type, a.is_grantable
FROM pg_class c, aclexplode(c.relacl) a
WHERE c.oid = %(oid)s AND a.grantee <> c.relowner"""
LOCK_EXPORT = "SELECT pg_advisory_xact_lock(hashtextextended(%(key)s, 0))"


@dataclass
class ExportReport:
    table: str  # schema.name
    version: str
    k: int
    rows: int
    items: int
    unchanged: bool = False  # the table already held this version's top k
    skipped: list[str] = field(default_factory=list)  # items the version cannot answer (no vector, no features)
    seconds: float = 0.0


def _short(name: str, limit: int) -> str:
    """`name` cut to `limit` bytes of UTF-8 (Postgres names are at most 63 bytes)."""
    return name.encode()[:limit].decode(errors="ignore")


def _marker(comment: str | None) -> dict | None:
    try:
        mark = json.loads(comment) if comment else None
    except ValueError:
        return None
    return mark if isinstance(mark, dict) and EXPORT_MARK in mark else None


class _CsvRows(io.TextIOBase):
    """A read()-able stream of CSV rows for COPY, produced a chunk of items at a time."""

    def __init__(self, chunks):
        self._chunks, self._buffer, self.rows = chunks, "", 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> str:
        while size < 0 or len(self._buffer) < size:
            rows = next(self._chunks, None)
            if rows is None:
                break
            out = io.StringIO()
            csv.writer(out, lineterminator="\n").writerows(rows)
            self.rows += len(rows)
            self._buffer += out.getvalue()
        if size < 0:
            size = len(self._buffer)
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data


def _neighbour_rows(client: Client, item_ids: list[str], k: int, version: str, skipped: list[str],
                    chunk: int):
    """Rows (item, rank, neighbour, score, version) for every item, `chunk` items per batch query."""
    for start in range(0, len(item_ids), chunk):
        ids = item_ids[start:start + chunk]
        try:  # arrays: the same results without building a Neighbor object for each of them
            arrays = client.similar_batch(ids, k, as_arrays=True)
        except UnknownItemError:
            raise
        except UserError:  # an item this model cannot answer (no trained vector, no side features): one by one
            results = []
            for item_id in ids:
                try:
                    results.append(client.similar(item_id, k))
                except UnknownItemError:
                    raise
                except UserError:
                    skipped.append(item_id)
                    results.append([])
            yield [(item_id, n.rank, n.item_id, f"{n.score:.7g}", version)
                   for item_id, neighbors in zip(ids, results) for n in neighbors]
            continue
        names, scores, counts = arrays.item_ids.tolist(), arrays.scores.tolist(), arrays.counts.tolist()
        yield [(item_id, rank + 1, names[j][rank], f"{scores[j][rank]:.7g}", version)
               for j, item_id in enumerate(ids) for rank in range(counts[j])]


def export_neighbours(engine: Engine, table: str, k: int = 50, alias: str = "production", schema: str | None = None,
                      *, chunk: int = CHUNK_ITEMS, verify: bool = True, index_class=None,
                      force: bool = False) -> ExportReport:
    """Write every item's top k of the alias's version into `schema.table` (see the module docstring)."""
    started = time.perf_counter()
    if not table or len(table.encode()) > PG_NAME_BYTES:
        raise UserError(f"--table must be a name of 1 to {PG_NAME_BYTES} bytes, got {table!r}.")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise UserError(f"--k must be a positive integer, got {k!r}.")
    info = get_alias(engine, alias)
    if info is None:
        raise NoVersionError(f"No {alias} version yet: run `recsys train` to train and publish one, then export.")
    with engine.connect() as conn:
        schema = schema or conn.execute(sa.text("SELECT current_schema()")).scalar()
    if not schema:
        raise UserError("The connection has no current schema (search_path is empty): pass --schema NAME.")
    qualified = f"{schema}.{table}"

    def held(cursor) -> tuple[int | None, dict | None]:
        """(oid of the existing table, its mark when it already holds this export, else None)."""
        cursor.execute(FIND_TABLE, {"schema": schema, "name": table})
        row = cursor.fetchone()
        if row is None:
            return None, None
        oid, relkind, comment = row
        mark = _marker(comment)
        if relkind not in ("r", "p") or mark is None:
            raise UserError(f"{qualified} exists and was not written by `recsys export` (its comment does not say "
                            "so); it is left alone. Choose another --table, or drop it yourself.")
        if force or mark.get("version") != info.version or mark.get("k") != k:
            return oid, None
        cursor.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, table)))
        return oid, (mark if cursor.fetchone()[0] == mark.get("rows") else None)

    def unchanged(mark: dict) -> ExportReport:
        return ExportReport(qualified, info.version, k, int(mark.get("rows", 0)), int(mark.get("items", 0)),
                            unchanged=True, seconds=time.perf_counter() - started)

    with engine.connect() as conn:  # the common case of a rerun: nothing to do, nothing locked
        raw = conn.connection.dbapi_connection
        with raw.cursor() as cursor:
            _, mark = held(cursor)
        raw.rollback()
    if mark is not None:
        return unchanged(mark)

    bundle = open_bundle(info.path, verify=verify, index_class=index_class)  # before any lock is taken
    client = Client(bundle, verify=verify, index_class=index_class)
    item_ids = bundle.parts.items.item_ids.tolist()
    skipped: list[str] = []
    token = secrets.token_hex(4)
    new_name = _short(table, PG_NAME_BYTES - 14) + f"__new_{token}"
    new_table = sql.Identifier(schema, new_name)
    target = sql.Identifier(schema, table)

    with engine.begin() as conn:
        raw = conn.connection.dbapi_connection
        with raw.cursor() as cursor:
            cursor.execute(LOCK_EXPORT, {"key": f"recsys export {qualified}"})  # one export per table at a time
            old_oid, mark = held(cursor)  # again: another export may have finished meanwhile
            if mark is not None:
                return unchanged(mark)
            cursor.execute("SELECT 1 FROM pg_namespace WHERE nspname = %(s)s", {"s": schema})
            if cursor.fetchone() is None:
                cursor.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
            cursor.execute(sql.SQL(CREATE_TABLE).format(table=new_table))
            stream = _CsvRows(_neighbour_rows(client, item_ids, k, info.version, skipped, chunk))
            cursor.copy_expert(sql.SQL(COPY_ROWS).format(table=new_table).as_string(raw), stream, size=1 << 20)
            key_name = _short(table, PG_NAME_BYTES - 5) + "_pkey"
            temp_key = _short(new_name, PG_NAME_BYTES - 5) + "_pkey"
            cursor.execute(sql.SQL(ADD_KEY).format(table=new_table, key=sql.Identifier(temp_key)))
            cursor.execute(sql.SQL("ANALYZE {}").format(new_table))
            if old_oid is not None:
                cursor.execute(TABLE_GRANTS, {"oid": old_oid})
                for grantee, privilege, grantable in cursor.fetchall():
                    cursor.execute(sql.SQL("GRANT {} ON {} TO {}{}").format(
                        sql.SQL(privilege), new_table, sql.SQL("PUBLIC") if grantee is None
                        else sql.Identifier(grantee), sql.SQL(" WITH GRANT OPTION" if grantable else "")))
                try:
                    cursor.execute(sql.SQL("DROP TABLE {}").format(target))
                except psycopg2.errors.DependentObjectsStillExist as exc:  # views on the table
                    detail = str(getattr(exc, "pgerror", None) or exc).strip().splitlines()[0]
                    raise UserError(f"Cannot replace {qualified}: {detail}. Objects that depend on the table "
                                    "(views) would be dropped with it; query the table directly, or drop "
                                    "them first. Nothing was changed.") from None
            cursor.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(new_table, sql.Identifier(table)))
            cursor.execute(sql.SQL("ALTER INDEX {} RENAME TO {}").format(sql.Identifier(schema, temp_key),
                                                                        sql.Identifier(key_name)))
            mark = {EXPORT_MARK: 1, "version": info.version, "k": k, "rows": stream.rows, "alias": alias,
                    "items": len(item_ids) - len(skipped),
                    "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            cursor.execute(sql.SQL("COMMENT ON TABLE {} IS {}").format(target, sql.Literal(json.dumps(mark))))
    return ExportReport(qualified, info.version, k, stream.rows, len(item_ids) - len(skipped), False, skipped,
                        time.perf_counter() - started)

