"""Hourly flow: items added to the catalogue since the production version become
queryable (cold-start vectors from their side features) in a patch version,
without retraining."""
from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from recsys.config import get_settings
from recsys.ingest.db import get_engine
from recsys.serving.registry import publish_patch as publish
from recsys.serving.runlock import publish_lock


@task(cache_policy=NO_CACHE, retries=3, retry_delay_seconds=[5, 20, 60])
def publish_patch(database_url: str | None) -> str | None:
    settings = get_settings(database_url=database_url)
    return publish(get_engine(settings), settings.resolved_artifact_root)


@flow(name="refresh-new-items", log_prints=True)
def refresh_new_items(database_url: str | None = None) -> str | None:
    """Publish `<production>.pN` with the catalogue's new items; None when there is nothing new."""
    logger = get_run_logger()
    with publish_lock(get_settings(database_url=database_url), wait_s=600):
        version = publish_patch(database_url)
    if version is None:
        logger.info("no new catalogue items (or no production version yet): nothing to publish")
    else:
        logger.info("patch version %s is now production", version)
    return version
