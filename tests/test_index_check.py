"""The run checks its own index: layouts against exact search on validation queries, and the promotion gate."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import sqlalchemy as sa

from recsys.jobs.index_check import (CheckQueries, IndexCheckConfig, candidate_layouts, check_indexes, choose_layout,
                                     segment_loss)
from recsys.serving import registry as R
from recsys.serving.index import IndexConfig, build_scorer_indexes
from recsys.vectors import Scorer
from test_registry import V1, V2, V3, metrics, publish

N, DIM = 12_000, 16
WARM, COLD = Scorer("inout_prior", 0.4), Scorer("inout_prior", 0.75)


@pytest.fixture(scope="module")
def model():
    """Vectors shaped like EGES's: communities in the item and context tables, side-feature vectors near them,
    a Zipf popularity; queries whose targets are items of the anchor's community (what co-purchases are)."""
    rng = np.random.default_rng(0)
    n_communities = 60
    centres = rng.normal(size=(n_communities, DIM)).astype(np.float32)
    community = rng.integers(0, n_communities, N)
    item = centres[community] + 0.5 * rng.normal(size=(N, DIM)).astype(np.float32)
    context = centres[community] + 0.5 * rng.normal(size=(N, DIM)).astype(np.float32)
    side = centres[community] + 0.3 * rng.normal(size=(N, DIM)).astype(np.float32)
    log_pop = np.log1p(rng.zipf(1.4, N).clip(max=5000)).astype(np.float32)
    members = [np.flatnonzero(community == c) for c in range(n_communities)]

    def queries(n: int):
        anchors = rng.choice(N, n, replace=False)
        targets = [rng.choice(members[community[a]], 5, replace=False) for a in anchors]
        indptr = np.concatenate([[0], np.cumsum([len(t) for t in targets])])
        return anchors, indptr, np.concatenate(targets)

    check_queries = CheckQueries.from_item_queries(np.arange(N), side, queries(600), queries(300))
    return item, context, log_pop, side, check_queries


def test_segment_loss_separates_noise_from_loss():
    rng = np.random.default_rng(1)
    exact = rng.random(5000)
    same = segment_loss(exact, exact)
    assert same["loss"] == 0 and same["measured_loss"] == 0
    worse = segment_loss(exact, exact * 0.9)  # every query loses 10%
    assert worse["loss"] == pytest.approx(0.1, abs=1e-4) and worse["measured_loss"] > 0.09
    few = segment_loss(np.array([1.0, 0.0, 1.0]), np.array([0.0, 0.0, 1.0]))  # one hit of three queries
    assert few["loss"] == pytest.approx(0.5) and few["measured_loss"] == 0.0  # not beyond sampling noise


def test_layouts_of_each_scale():
    assert list(candidate_layouts(5000)) == ["small"]
    flat = candidate_layouts(100_000)
    assert list(flat)[0] == "fs1+pq16" and all(c.factory == "auto" for c in flat.values())
    assert all(c.ivf_min_items == 1 for c in candidate_layouts(2_000_000).values())
    forced = IndexConfig(factory="PQ4")
    assert candidate_layouts(100_000, forced) == {"configured": forced}


def test_the_smallest_layout_within_the_loss_ships(model):
    item, context, log_pop, side, queries = model
    check = choose_layout(item, context, log_pop, lambda: side, WARM, COLD, queries,
                          IndexCheckConfig(max_loss=0.01), IndexConfig(recall_queries=0))
    record = check.record
    assert record["layout"] == check.layout == record["candidates"][-1]["layout"]
    assert record["within_max_loss"] and record["measured_loss"] <= 0.01
    for segment in ("warm", "cold"):
        assert 0 < record[segment]["exact"] <= 1 and 0 < record[segment]["index"] <= 1
        assert record[segment]["n_queries"] == (600 if segment == "warm" else 300)
    assert record["bytes_per_item"] > 0 and "cold" not in check.indexes  # one copy of the candidate codes
    tried = [c["layout"] for c in record["candidates"]]
    assert tried == list(candidate_layouts(N))[:len(tried)]
    # the record's numbers are the shipped indexes' own
    again = check_indexes(check.indexes, WARM, COLD, item, context, log_pop, queries)
    assert again["warm"]["index"] == record["warm"]["index"]


def test_a_layout_that_loses_recall_is_not_promoted(model, engine, tmp_path):
    item, context, log_pop, side, queries = model
    coarse = IndexConfig(factory="PQ2x4", query_factory="PQ2x4", recall_queries=0)  # 1 byte an item a side
    check = choose_layout(item, context, log_pop, lambda: side, WARM, COLD, queries, IndexCheckConfig(), coarse)
    record = check.record
    assert record["layout"] == "configured" and not record["within_max_loss"]
    assert record["measured_loss"] > 0.02, record
    gates = R.Gates()
    failures = R.check_gates({**metrics(0.3, 0.1), "index_check": record}, None, gates)
    assert len(failures) == 1 and "shipped index" in failures[0] and "--allow-index-loss" in failures[0]
    bad = json.dumps({**metrics(0.3, 0.1), "index_check": record})
    for version in (V1, V2):
        publish(engine, tmp_path, version, warm=0.3, cold=0.1)
        with engine.begin() as conn:  # the check's record in the version's metrics, as the flow stores it
            conn.execute(sa.text("UPDATE model_versions SET metrics = CAST(:m AS jsonb) WHERE version = :v"),
                         {"m": bad, "v": version})
    with pytest.raises(R.GateFailedError, match="shipped index"):
        R.promote(engine, V1, gates)
    assert R.get_alias(engine, "production") is None
    R.promote(engine, V2, dataclasses.replace(gates, max_index_loss=None))  # recsys train --allow-index-loss
    assert R.get_alias(engine, "production").version == V2
    publish(engine, tmp_path, V3, warm=0.3, cold=0.1)  # no index_check (older versions): not gated
    R.promote(engine, V3, gates)
    assert R.get_alias(engine, "production").version == V3


def test_cold_queries_share_the_warm_candidate_codes(model):
    item, context, log_pop, side, queries = model
    indexes = build_scorer_indexes(item, context, log_pop, lambda: side, WARM, COLD, IndexConfig(recall_queries=0))
    assert list(indexes) == ["warm"]
    other = build_scorer_indexes(item, context, log_pop, lambda: side, Scorer("cosine"), COLD,
                                 IndexConfig(recall_queries=0))
    assert list(other) == ["warm", "cold"]  # another candidate matrix: a second copy
