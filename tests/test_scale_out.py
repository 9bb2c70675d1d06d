"""Scale-out on existing engines: walk chunks on a real local Dask cluster give the single-process walks."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from distributed import Client, LocalCluster

from recsys.data.graph import ItemGraph
from recsys.data.walks import CHUNK_WALKS, generate_walks
from recsys.jobs.dask_walks import DaskChunkRunner


def random_graph(n: int, degree: int, seed: int) -> ItemGraph:
    rng = np.random.default_rng(seed)
    src = rng.integers(0, n, n * degree // 2)
    dst = rng.integers(0, n, n * degree // 2)
    keep = src != dst
    w = rng.gamma(1.0, 1.0, keep.sum()).astype(np.float32) + 0.1
    m = sp.coo_matrix((w, (src[keep], dst[keep])), shape=(n, n)).tocsr()
    m = (m + m.T).tocsr()
    m.sort_indices()
    return ItemGraph(n, m.indptr.astype(np.int64), m.indices.astype(np.int32), m.data.astype(np.float32))


@pytest.fixture(scope="module")
def cluster():
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=40) as local, Client(local) as client:
        yield client


def test_walks_on_two_dask_workers_equal_the_single_process_walks(cluster):
    graph = random_graph(3 * CHUNK_WALKS // 2, 6, seed=3)  # two chunks a round
    runner = DaskChunkRunner(client=cluster)
    single = generate_walks(graph, walk_length=8, walks_per_node=3, seed=11)
    dask = generate_walks(graph, walk_length=8, walks_per_node=3, seed=11, run_chunks=runner)
    np.testing.assert_array_equal(dask, single)
    assert runner.chunks_run == 3 * 2
    processed = cluster.run(lambda dask_worker: len(dask_worker.data) + len(dask_worker.state.tasks))
    assert len(processed) == 2  # both workers took part (hold the scattered graph at least)
    assert not np.array_equal(generate_walks(graph, 8, 3, seed=12, run_chunks=runner), single)


def test_a_model_trained_with_walks_from_the_cluster_is_the_single_process_model(cluster):
    from recsys.data.synthetic import ShopConfig, generate_shop
    from recsys.data.graph import build_item_graph
    from recsys.data.sessions import make_baskets
    from recsys.embed.train import TrainConfig, train_embeddings

    ds = generate_shop(ShopConfig(n_items=400, n_users=300, n_baskets=1500, seed=5)).to_dataset()
    graph = build_item_graph(ds, make_baskets(ds, 3600))
    config = TrainConfig(dim=16, epochs=2, num_threads=1, walks_per_node=4, seed=2)
    single = train_embeddings(ds, graph, config, progress=False)
    dask = train_embeddings(ds, graph, config, progress=False, run_chunks=DaskChunkRunner(client=cluster))
    np.testing.assert_array_equal(dask.item_vectors, single.item_vectors)


def test_a_worker_killed_mid_run_loses_no_walk():
    """A worker process dies while a round is being walked: Dask reruns its chunks on the other worker
    (the graph was scattered to both), and the walks are still the single-process ones."""
    import os

    graph = random_graph(3 * CHUNK_WALKS // 2, 6, seed=4)
    single = generate_walks(graph, walk_length=6, walks_per_node=4, seed=1)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=50) as local, Client(local) as client:
        from recsys.data.walks import iter_walks

        runner = DaskChunkRunner(client=client)
        batches = iter_walks(graph, 6, 4, seed=1, batch_size=CHUNK_WALKS // 4, run_chunks=runner)
        got = [next(batches)]
        victim = sorted(client.scheduler_info()["workers"])[0]
        try:
            client.run(lambda: os._exit(1), workers=[victim])
        except Exception:  # the worker dies before it can answer
            pass
        got += list(batches)
        assert victim not in client.scheduler_info()["workers"]  # it died (its nanny started another)
    np.testing.assert_array_equal(np.concatenate(got), single)


@pytest.fixture(scope="module")
def small_shop():
    from recsys.data.synthetic import ShopConfig, generate_shop

    return generate_shop(ShopConfig(n_items=1500, n_users=1200, n_baskets=8000, seed=8)).to_dataset()


def test_two_training_processes_reach_the_recall_of_one(small_shop):
    """torch.distributed data-parallel training (gloo, 2 CPU processes): each rank trains on its share of
    the walks, updates summed every epoch; warm Recall@20 within noise of one process."""
    from recsys.embed.train import TrainConfig
    from recsys.evaluation.protocol import EvalConfig, evaluate
    from recsys.recommenders.eges import EGESRecommender, ScorerConfig
    from recsys.vectors import Scorer

    config = TrainConfig(dim=32, epochs=4, num_threads=1, seed=1)
    rows = []
    for processes in (1, 2):
        rec = EGESRecommender(config, ScorerConfig(warm="inout_prior", cold="inout_prior"),
                              name=f"EGES x{processes}", train_processes=processes)
        rows.append(rec)
    report = evaluate(small_shop, rows, EvalConfig(max_queries=2000, include_link_prediction=False))
    one, two = (row.warm.recall[20] for row in report.rows)
    assert two.__class__ is float and one > 0.1
    assert abs(two - one) / one < 0.05, (one, two)
    assert rows[1].trained.stats["train_processes"] == 2 and rows[1].trained.stats["update_sums"] == 4 * 16


def test_a_training_rank_that_dies_ends_the_training_with_a_clear_error(small_shop):
    import signal
    import threading
    import time

    import psutil

    from recsys.data.graph import build_item_graph
    from recsys.data.sessions import make_baskets
    from recsys.embed.distributed import train_data_parallel
    from recsys.embed.train import TrainConfig

    graph = build_item_graph(small_shop, make_baskets(small_shop, 3600))
    outcome = {}

    def run():
        try:
            train_data_parallel(small_shop, graph, TrainConfig(dim=16, epochs=200, num_threads=1), 2)
        except RuntimeError as exc:
            outcome["error"] = str(exc)

    before = {p.pid for p in psutil.Process().children(recursive=True)}  # e.g. another test's Dask workers
    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.time() + 60
    while time.time() < deadline:
        ranks = [p for p in psutil.Process().children(recursive=True)
                 if p.pid not in before and "spawn" in " ".join(p.cmdline())]
        if len(ranks) >= 2:
            break
        time.sleep(0.2)
    time.sleep(3)  # inside training
    ranks[-1].send_signal(signal.SIGKILL)
    thread.join(120)
    assert not thread.is_alive()
    assert "died" in outcome.get("error", "") or "raised" in outcome.get("error", ""), outcome


def test_training_ranks_walk_on_the_dask_cluster(cluster, small_shop):
    from recsys.data.graph import build_item_graph
    from recsys.data.sessions import make_baskets
    from recsys.embed.distributed import train_data_parallel
    from recsys.embed.train import TrainConfig

    graph = build_item_graph(small_shop, make_baskets(small_shop, 3600))
    runner = DaskChunkRunner(client=cluster)
    trained = train_data_parallel(small_shop, graph, TrainConfig(dim=16, epochs=2, num_threads=1), 2,
                                  run_chunks=runner)
    # noise pre-pass (4 rounds) on every rank, 2 epochs x 10 rounds shared between them: one chunk a round
    assert trained.stats["walk_chunks_by_ranks"] == runner.chunks_run == 2 * 4 + 2 * 10


def test_evaluation_queries_scored_on_two_dask_workers_equal_the_single_process_metrics(cluster, small_shop):
    """Each row's scoring job is scattered once, query chunks run as tasks, their metric sums merge."""
    from recsys.evaluation.protocol import EvalConfig, evaluate
    from recsys.jobs.dask_queries import DaskQueryRunner
    from recsys.jobs.pipeline import PipelineConfig, evaluation_rows

    config = PipelineConfig.from_dict({"eval_rows": ["popularity", "bought-together counts", "EGES", "EGES+PQ"],
                                       "train": {"dim": 16, "epochs": 1, "walks_per_node": 4, "num_threads": 1},
                                       "index": {"recall_queries": 0},
                                       "evaluation": {"max_queries": 600, "include_link_prediction": False,
                                                      "chunk_bytes": 4 * small_shop.n_items * 3 * 50}})
    single = evaluate(small_shop, evaluation_rows(config), config.evaluation)
    runner = DaskQueryRunner(cluster)
    on_dask = evaluate(small_shop, evaluation_rows(config), config.evaluation, run_ranges=runner)
    assert runner.chunks_run >= 4 * 2 * 2 and not runner.not_shipped  # 50 queries a chunk, every row shipped
    for a, b in zip(single.rows, on_dask.rows):
        for segment in ("warm", "cold"):
            x, y = getattr(a, segment), getattr(b, segment)
            assert x.n_queries == y.n_queries
            for k in x.recall:
                assert x.recall[k] == pytest.approx(y.recall[k], rel=1e-12)
                assert x.coverage[k] == y.coverage[k] and x.tail_recall[k] == pytest.approx(y.tail_recall[k])
            assert x.mrr == pytest.approx(y.mrr, rel=1e-12)


@pytest.mark.parametrize("factory", ["IVF8,PQ4", "PQ8x4fs"])
def test_index_shards_filled_on_two_dask_workers_equal_the_shards_filled_here(cluster, factory):
    """A sharded index's shards as Dask tasks (the trained index scattered once, a task a shard): the same
    codes, byte for byte, as the shards filled in one process."""
    import faiss

    from recsys.jobs.dask_index import DaskShardFiller
    from recsys.serving.shards import ShardedCodes

    vectors = np.random.default_rng(0).normal(size=(3000, 16)).astype(np.float32)
    trained = faiss.index_factory(16, factory)
    trained.train(vectors)
    filler = DaskShardFiller(cluster)
    here, there = ShardedCodes.fill(trained, vectors, 3), ShardedCodes.fill(trained, vectors, 3, filler)
    assert filler.shards_run == 3
    np.testing.assert_array_equal(here.bounds, there.bounds)
    for a, b in zip(here.shards, there.shards):
        np.testing.assert_array_equal(faiss.serialize_index(a), faiss.serialize_index(b))
    queries = vectors[:50]
    np.testing.assert_array_equal(here.search(queries, 10)[1], there.search(queries, 10)[1])


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _second_machine(rendezvous, processes: int = 1):
    """What another machine runs: torchrun without the job, joining the rendezvous."""
    import subprocess
    import sys

    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", *rendezvous.torchrun_args(processes),
                             "-m", "recsys.embed.distributed"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)


def test_training_ranks_of_two_machines_meet_through_torchrun(small_shop):
    """`recsys train --train-nodes 2 --rdzv-endpoint ...`: this machine's torchrun holds the job, the other
    machine's (here a second torchrun on loopback) receives it at the c10d rendezvous; the model is the one
    2 ranks on one machine train (each rank's share and the sums do not depend on where the ranks run)."""
    from recsys.data.graph import build_item_graph
    from recsys.data.sessions import make_baskets
    from recsys.embed.distributed import Rendezvous, train_data_parallel, train_on_torchrun
    from recsys.embed.train import TrainConfig

    graph = build_item_graph(small_shop, make_baskets(small_shop, 3600))
    config = TrainConfig(dim=16, epochs=2, num_threads=1, seed=3)
    rendezvous = Rendezvous(f"127.0.0.1:{_free_port()}", nodes=2, run_id="test-two-machines", join_timeout_s=120)
    other = _second_machine(rendezvous)
    try:
        trained = train_on_torchrun(small_shop, graph, config, 1, rendezvous)
        assert other.wait(60) == 0, other.stderr.read().decode()[-2000:]
    finally:
        if other.poll() is None:
            other.kill()
    assert trained.stats["train_processes"] == 2 and trained.stats["train_nodes"] == 2
    assert trained.stats["update_sums"] == 2 * 16
    one_machine = train_data_parallel(small_shop, graph, config, 2)
    np.testing.assert_array_equal(trained.item_vectors, one_machine.item_vectors)


def test_a_machine_that_dies_mid_training_ends_the_torchrun_training_with_a_clear_error(small_shop, monkeypatch):
    import signal
    import time

    from recsys.data.graph import build_item_graph
    from recsys.data.sessions import make_baskets
    from recsys.embed.distributed import Rendezvous, train_on_torchrun
    from recsys.embed.train import TrainConfig

    import threading

    import psutil

    graph = build_item_graph(small_shop, make_baskets(small_shop, 3600))
    rendezvous = Rendezvous(f"127.0.0.1:{_free_port()}", nodes=2, run_id="test-dies", join_timeout_s=60)
    monkeypatch.setenv("RECSYS_RANK_TIMEOUT_S", "30")  # both machines' ranks: a lost peer fails them within 30 s
    other = _second_machine(rendezvous)
    outcome = {}

    def kill_when_training():
        deadline = time.time() + 120
        while time.time() < deadline:  # the other machine's rank has started (torchrun spawned it)
            try:
                ranks = [p for p in psutil.Process(other.pid).children(recursive=True)
                         if "recsys.embed.distributed" in " ".join(p.cmdline()) or "spawn" in " ".join(p.cmdline())]
            except psutil.NoSuchProcess:
                return
            if ranks:
                break
            time.sleep(0.2)
        time.sleep(8)  # the job received, inside training (200 epochs take minutes)
        # the machine dies: its torchrun and the rank it started (torchrun gives its ranks sessions of their own)
        machine = psutil.Process(other.pid)
        for proc in [*machine.children(recursive=True), machine]:
            try:
                proc.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass

    killer = threading.Thread(target=kill_when_training)
    killer.start()
    started = time.time()
    try:
        train_on_torchrun(small_shop, graph, TrainConfig(dim=16, epochs=200, num_threads=1), 1, rendezvous)
    except RuntimeError as exc:
        outcome["error"] = str(exc)
    killer.join()
    assert "torchrun failed" in outcome.get("error", ""), outcome
    assert time.time() - started < 240


def test_a_sharded_index_survives_a_copy_to_another_process():
    """A cluster's tasks copy a sharded index with pickle: faiss.IndexShards cannot be, its shards can."""
    import pickle

    import faiss

    from recsys.serving.shards import ShardedCodes

    vectors = np.random.default_rng(1).normal(size=(2000, 8)).astype(np.float32)
    trained = faiss.index_factory(8, "IVF4,PQ2")
    trained.train(vectors)
    sharded = ShardedCodes.fill(trained, vectors, 2)
    copy = pickle.loads(pickle.dumps(sharded))
    np.testing.assert_array_equal(copy.bounds, sharded.bounds)
    np.testing.assert_array_equal(copy.search(vectors[:20], 5)[1], sharded.search(vectors[:20], 5)[1])


def test_training_on_several_machines_needs_a_rendezvous_endpoint():
    from flows.train_and_publish import rendezvous_of
    from recsys.errors import UserError

    assert rendezvous_of(1, None) is None
    with pytest.raises(UserError, match="--rdzv-endpoint HOST:PORT"):
        rendezvous_of(2, None)
    with pytest.raises(UserError, match="HOST:PORT"):
        rendezvous_of(2, "10.0.0.5")
    with pytest.raises(UserError, match=">= 1"):
        rendezvous_of(0, None)
    meet = rendezvous_of(3, "10.0.0.5:29400")
    args = meet.torchrun_args(4)
    assert meet.nodes == 3 and "--nnodes=3" in args and "--nproc-per-node=4" in args
    assert "--rdzv-endpoint=10.0.0.5:29400" in args and "--rdzv-backend=c10d" in args
