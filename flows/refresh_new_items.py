"""Hourly flow: the production version refreshed without retraining, as a patch version.

Items added to the catalogue since the version become queryable from their
side features; items first bought since the version get vectors learned from
those purchases and become returnable neighbours; every co-purchase list
gains the new purchases (recsys/jobs/refresh.py). `recsys refresh` runs it once.
"""
from __future__ import annotations

import json

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from recsys.config import get_settings
from recsys.ingest.db import get_engine
from recsys.jobs.refresh import RefreshConfig, refresh
from recsys.serving.runlock import publish_lock


@task(cache_policy=NO_CACHE, retries=3, retry_delay_seconds=[5, 20, 60])
def publish_refresh(database_url: str | None, exclude_users: tuple[str, ...]) -> tuple[str | None, dict]:
    settings = get_settings(database_url=database_url)
    return refresh(get_engine(settings), settings.resolved_artifact_root, settings,
                   RefreshConfig(exclude_users=tuple(exclude_users)))


@flow(name="refresh-new-items", log_prints=True)
def refresh_new_items(database_url: str | None = None, exclude_users: list[str] | None = None) -> str | None:
    """Publish `<production>.pN`; None when nothing is new (or there is no production version yet)."""
    logger = get_run_logger()
    with publish_lock(get_settings(database_url=database_url), wait_s=600):
        version, record = publish_refresh(database_url, tuple(exclude_users or ()))
    if record:
        logger.info("purchases since the version: %s", json.dumps({k: v for k, v in record.items() if k != "items"},
                                                                  default=str))
    if version is None:
        logger.info("nothing new since the production version (or no production version yet): nothing to publish")
    else:
        logger.info("patch version %s is now production", version)
    return version
