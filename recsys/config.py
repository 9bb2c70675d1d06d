"""Configuration from the environment (RECSYS_*), overridable per command."""
from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RECSYS_", extra="ignore")

    # SQLAlchemy URL of the user's Postgres (postgresql+psycopg2://...). When unset,
    # an embedded Postgres server is started under `home` and reused by later commands.
    database_url: str | None = None
    home: Path = Field(default_factory=lambda: Path("~/.recsys").expanduser())
    # Where version bundles are written; default: <home>/artifacts.
    artifact_root: Path | None = None
    # Relations the extraction reads. A view in the user's database that exposes our
    # column names under these names is the documented way to use existing tables.
    items_relation: str = "items"
    purchases_relation: str = "purchases"

    @property
    def resolved_artifact_root(self) -> Path:
        return Path(self.artifact_root).expanduser() if self.artifact_root else self.home / "artifacts"

    @property
    def embedded_pgdata(self) -> Path:
        return self.home / "pgdata"


def get_settings(**overrides) -> Settings:
    """Settings from the environment, with explicit (non-None) overrides on top."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})
