"""The Prefect flows end to end on a Ta-Feng slice against the embedded Postgres."""
from __future__ import annotations

import io
import zipfile

import pytest
import sqlalchemy as sa

from conftest import TAFENG

pytestmark = pytest.mark.skipif(not TAFENG.exists(), reason="../shared/data is not next to the repo")

SLICE_ROWS = 60_000
SMALL = {"train": {"dim": 16, "walks_per_node": 4, "epochs": 1}, "evaluation": {"max_queries": 300},
         "eval_rows": ["popularity", "bought-together counts", "EGES", "EGES+PQ", "EGES+PQ+graph"],
         "index": {"recall_queries": 0}, "blend": {"validation_queries": 2000}}


@pytest.fixture(scope="module")
def tafeng_slice(tmp_path_factory):
    """The first 60,000 lines of Ta-Feng (about three weeks) as a CSV file."""
    with zipfile.ZipFile(TAFENG) as archive:
        name = archive.namelist()[0]
        with archive.open(name) as fh:
            lines = io.TextIOWrapper(fh, encoding="utf-8-sig").readlines()[: SLICE_ROWS + 1]
    path = tmp_path_factory.mktemp("tafeng") / "ta_feng_slice.csv"
    path.write_text("".join(lines), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def shop(pg_url, tafeng_slice, tmp_path_factory, prefect_harness):
    """A clean database holding the slice, and an artifact root; yields (engine, url)."""
    from recsys.ingest.db import get_engine
    from recsys.ingest.load import load_frames
    from recsys.ingest.loaders.tafeng import read_frames
    from recsys.ingest.migrate import migrate

    engine = get_engine(url=pg_url)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP SCHEMA public CASCADE"))
        conn.execute(sa.text("CREATE SCHEMA public"))
    migrate(engine)
    report = load_frames(engine, read_frames(tafeng_slice))
    assert report.accounted_rows == SLICE_ROWS
    mp = pytest.MonkeyPatch()
    mp.setenv("RECSYS_ARTIFACT_ROOT", str(tmp_path_factory.mktemp("artifacts")))
    mp.setenv("RECSYS_DATABASE_URL", pg_url)
    yield engine, pg_url
    mp.undo()


@pytest.fixture(scope="module")
def first_run(shop):
    from flows.train_and_publish import train_and_publish

    engine, url = shop
    return train_and_publish(database_url=url, config=SMALL)


def test_flow_publishes_and_promotes_a_version_the_client_answers_from(shop, first_run):
    from recsys import Client
    from recsys.serving.registry import get_alias

    engine, url = shop
    assert first_run["cached"] is False and first_run["promoted"] is True
    production = get_alias(engine, "production")
    assert production.version == first_run["version"]
    assert production.metrics["warm"]["recall"]["20"] > 0
    assert set(production.metrics["rows"]) >= {"popularity", "bought-together counts", "EGES", "EGES+PQ",
                                                "EGES+PQ+graph"}
    assert production.metrics["name"] == "EGES+PQ+graph"  # the shipped row is what the gates read
    assert set(first_run["stages"]) >= {"extract", "evaluate", "train", "compress+publish", "promote", "total"}
    client = Client.from_registry(database_url=url)
    from recsys.blend import FEATURES

    assert set(client.manifest["graph"]["warm"]["weights"]) == set(FEATURES)
    # the run checked its index against exact search, and the gate read it
    check = client.manifest["index_check"]
    assert check["layout"] and check["bytes_per_item"] > 0 and check["candidates"]
    for segment in ("warm", "cold"):
        assert 0 < check[segment]["exact"] <= 1 and 0 <= check[segment]["index"] <= 1
    assert production.metrics["index_check"]["layout"] == check["layout"] == first_run["index_check"]["layout"]
    assert list(client.manifest["indexes"]) == ["warm"]  # new-item queries share the warm candidate codes
    with engine.connect() as conn:
        popular = conn.execute(sa.text("SELECT item_id FROM purchases GROUP BY 1 ORDER BY count(*) DESC, 1 "
                                       "LIMIT 1")).scalar()
    neighbours = client.similar(popular, k=5)
    assert len(neighbours) == 5 and popular not in [n.item_id for n in neighbours]
    cold = client.similar_to_new_item(category="100205", price=30.0, k=5)
    assert len(cold) == 5


def test_flow_creates_report_and_table_artifacts_and_plots(shop, first_run):
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from recsys.serving.registry import get_version

    async def read(key):
        async with get_client() as client:
            return await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))

    report = asyncio.run(read("recsys-run-report"))
    table = asyncio.run(read("recsys-metrics"))
    # other tests' flow runs share the Prefect test server: this run's report is the one naming its version
    ours = [r for r in report if first_run["version"] in r.data]
    assert len(ours) == 1 and "bought-together counts" in ours[0].data and "warm tail R@20" in ours[0].data
    assert "Compressed index against exact search" in ours[0].data
    assert "Accounts left out of training" in ours[0].data  # the account screen's record, nothing deleted
    assert "accounts" in first_run and get_version(shop[0], first_run["version"]).metrics["accounts"] == \
        first_run["accounts"]
    assert any(first_run["version"] in (t.description or "") for t in table)
    path = get_version(shop[0], first_run["version"]).path
    for plot in ("plots/loss_curve.svg", "plots/attention_weights.svg"):
        assert (__import__("pathlib").Path(path) / plot).read_text().startswith("<svg")


def test_rerun_with_unchanged_data_does_not_retrain(shop, first_run):
    from flows.train_and_publish import train_and_publish

    again = train_and_publish(database_url=shop[1], config=SMALL)
    assert again["cached"] is True and again["version"] == first_run["version"]
    assert set(again["stages"]) == {"extract"}


def test_overlapping_runs_do_not_publish_at_the_same_time(shop, first_run):
    from flows.train_and_publish import train_and_publish
    from recsys.config import get_settings
    from recsys.serving.registry import list_versions
    from recsys.serving.runlock import RunInProgressError, publish_lock

    engine, url = shop
    before = len(list_versions(engine))
    with publish_lock(get_settings(database_url=url)):
        with pytest.raises(RunInProgressError, match="already running"):
            train_and_publish(database_url=url, config=SMALL, force=True)
    assert len(list_versions(engine)) == before


def test_database_down_at_extraction_retries_then_fails_cleanly(shop, first_run, monkeypatch):
    from prefect import task
    from prefect.cache_policies import NO_CACHE

    import flows.train_and_publish as module
    from recsys.errors import DatabaseUnavailableError
    from recsys.serving.registry import list_versions

    engine, url = shop
    before = len(list_versions(engine))
    attempts = []
    real_extract = module.extract.fn

    def extract_from_a_server_that_is_down(database_url):
        attempts.append(database_url)
        return real_extract("postgresql+psycopg2://shop:pw@127.0.0.1:1/shop")

    # same retry policy as the real task, without the backoff waits
    monkeypatch.setattr(module, "extract", task(extract_from_a_server_that_is_down, retries=3,
                                                retry_delay_seconds=0, cache_policy=NO_CACHE,
                                                retry_condition_fn=module._retry_on_database_errors))
    # the lock is taken on the working database; extraction then finds the server down
    with pytest.raises(DatabaseUnavailableError, match="cannot be reached"):
        module.train_and_publish(database_url=url, config=SMALL, force=True)
    assert len(attempts) == 4  # the first try and three retries
    assert len(list_versions(engine)) == before


def test_refresh_flow_makes_a_new_item_queryable(shop, first_run, tmp_path):
    from flows.refresh_new_items import refresh_new_items
    from recsys import Client
    from recsys.ingest.load import load_frames
    from recsys.ingest.loaders.generic import read_frames
    from recsys.serving.registry import get_alias

    engine, url = shop
    items = tmp_path / "new_items.csv"
    items.write_text("item_id,category,brand,price\nNEW-0001,100205,4710088,35\n")
    load_frames(engine, read_frames(items, None))
    version = refresh_new_items(database_url=url)
    assert version == f"{first_run['version']}.p1"
    assert get_alias(engine, "production").version == version
    client = Client.from_registry(database_url=url)
    neighbours = client.similar("NEW-0001", k=5)
    assert len(neighbours) == 5
    assert refresh_new_items(database_url=url) is None  # nothing new the second time


def test_a_local_dask_cluster_of_two_workers_walks_for_the_flow(shop, first_run):
    """`recsys train --dask-workers 2`: the walks' chunks run on a local cluster started for the run; the
    version is published, promoted and says how it was made."""
    from recsys import Client
    from recsys.jobs import pipeline
    from recsys.serving.registry import get_version

    engine, url = shop
    from flows.train_and_publish import train_and_publish

    # query chunks of about 30 queries, so each row's queries spread over the workers
    # and the index in 2 shards, filled as Dask tasks
    config = {**SMALL, "evaluation": {**SMALL["evaluation"], "chunk_bytes": 30 * 12 * 25_000},
              "index": {**SMALL.get("index", {}), "shards": 2}}
    result = train_and_publish(database_url=url, config=config, force=True, dask_workers=2)
    how = result["execution"]
    assert how["task_runner"] == "prefect-dask" and how["dask_workers"] == 2 and how["walk_chunks_on_dask"] > 0
    # the evaluation's row groups ran as Prefect tasks there, their query chunks as Dask tasks, every row
    # shipped (the shipped blend included)
    assert how["evaluation_tasks"] == [list(g) for g in pipeline.evaluation_groups(pipeline.PipelineConfig.from_dict(config))]
    assert len(how["evaluation_tasks"]) > 1
    assert how["query_chunks_on_dask"] > 0 and how["rows_scored_in_task"] == []
    assert how["index_shards_on_dask"] >= 2 and how["train_nodes"] == 1

    assert len(how["worker_peak_rss_mb"]) == 2 and all(mb > 0 for mb in how["worker_peak_rss_mb"].values())
    info = get_version(engine, result["version"])
    client = Client.open(info.path)
    assert client.manifest["execution"] == how
    # the table put together from the tasks has one process's rows, in lineup order
    assert list(info.metrics["rows"]) == list(get_version(engine, first_run["version"]).metrics["rows"])
    assert first_run["execution"]["task_runner"] == "local"
    # walks do not depend on where they ran: the same training as the single-process run, within the
    # training threads' noise (Hogwild updates land in another order)
    assert abs(result["metrics"]["warm_recall@20"] - first_run["metrics"]["warm_recall@20"]) < 0.05
