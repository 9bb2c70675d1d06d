"""Numbered plain-SQL migrations from sql/, applied once each under an advisory lock."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from recsys.errors import UserError

# Any constant shared by every recsys process: serialises concurrent migrators.
MIGRATION_LOCK_KEY = 0x5EC5_0001


@dataclass(frozen=True)
class Migration:
    version: str  # "001"
    name: str  # "001_catalogue_and_purchases.sql"
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def available_migrations() -> list[Migration]:
    folder = resources.files("recsys.sql")
    found = []
    for entry in folder.iterdir():
        name = entry.name
        if name.endswith(".sql") and name[:3].isdigit():
            found.append(Migration(version=name[:3], name=name, sql=entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"two migrations share a number: {versions}")
    return found


def migrate(engine: Engine) -> list[str]:
    """Apply pending migrations; return the names applied. Safe to call concurrently."""
    applied_now = []
    with engine.begin() as conn:
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK_KEY})
        conn.execute(sa.text(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version text PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"))
        done = {row.version: row for row in conn.execute(
            sa.text("SELECT version, name, checksum FROM schema_migrations"))}
        for migration in available_migrations():
            previous = done.get(migration.version)
            if previous is not None:
                if previous.checksum != migration.checksum:
                    raise UserError(
                        f"Migration {migration.name} was changed after it was applied to this database "
                        f"(applied as {previous.name}). Migrations are immutable: add a new numbered file instead.")
                continue
            conn.exec_driver_sql(migration.sql)
            conn.execute(sa.text("INSERT INTO schema_migrations (version, name, checksum) VALUES (:v, :n, :c)"),
                         {"v": migration.version, "n": migration.name, "c": migration.checksum})
            applied_now.append(migration.name)
    return applied_now
