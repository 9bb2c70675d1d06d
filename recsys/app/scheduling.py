"""The deployments `recsys schedule` serves (also described in prefect.yaml)."""
from __future__ import annotations

import os

from prefect import serve
from prefect.schedules import Cron

from flows.diagnose import diagnose_flow
from flows.refresh_new_items import refresh_new_items
from flows.train_and_publish import train_and_publish


def build_deployments(nightly: str = "0 2 * * *", hourly: str = "0 * * * *", weekly: str = "0 6 * * 1",
                      timezone: str = "UTC", database_url: str | None = None) -> list:
    # The URL is not baked into deployments (it may hold a password): the serving
    # process's RECSYS_DATABASE_URL applies unless a parameter overrides it.
    params = {"database_url": None}
    return [
        train_and_publish.to_deployment(
            name="nightly", schedule=Cron(nightly, timezone=timezone), tags=["recsys"],
            parameters={**params, "wait_for_lock_s": 3600.0},
            description="Extract, evaluate, train EGES, compress, publish and promote."),
        refresh_new_items.to_deployment(
            name="hourly", schedule=Cron(hourly, timezone=timezone), tags=["recsys"], parameters=params,
            description="Cold-start vectors for new catalogue items in a patch version."),
        diagnose_flow.to_deployment(
            name="weekly", schedule=Cron(weekly, timezone=timezone), tags=["recsys"],
            parameters={**params, "compare_methods": True},
            description="Graph-readiness report as an artifact."),
    ]


def serve_deployments(**kwargs) -> None:
    if kwargs.get("database_url"):
        os.environ["RECSYS_DATABASE_URL"] = kwargs["database_url"]
    serve(*build_deployments(**kwargs), pause_on_shutdown=False)
