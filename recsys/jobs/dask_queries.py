"""The evaluation's query chunks on a Dask cluster: the `run_ranges` of `recsys.evaluation.metrics`.

Scoring is most of an evaluation at scale (859 s of the 1M-item flow, each
row ranking 5,000 queries per segment over every item). A row's scoring job
(`ScoreJob`: the fitted recommender's score function, its queries and the
candidate columns) is scattered to every worker once, each chunk of queries
is one task that returns the chunk's metric sums, and the sums are merged in
chunk order: the metrics equal one process's (sums of the same terms, the
coverage sets joined). A worker lost mid-row has its chunks rerun on the
others by the scheduler; the job is on every worker.
"""
from __future__ import annotations

from distributed.protocol.pickle import dumps

from recsys.evaluation.metrics import ScoreJob


def _score_range(job: ScoreJob, lo: int, hi: int):
    return job(lo, hi)


class DaskQueryRunner:
    """Runs a ScoreJob's query ranges as tasks of a distributed.Client's cluster."""

    def __init__(self, client):
        self.client = client
        self.chunks_run = 0
        self.not_shipped: list[str] = []  # rows scored in the flow's process instead

    def __call__(self, job: ScoreJob, ranges: list[tuple[int, int]]):
        if len(ranges) <= 1:  # nothing to spread: no scatter of a whole model for one chunk
            for lo, hi in ranges:
                yield job(lo, hi)
            return
        try:
            # serialised here first, where a failure can be caught: scattered from a task on a worker, the job
            # is only serialised when copied to the other workers, and a failure there is retried for ever
            dumps(job)
            shipped = self.client.scatter(job, broadcast=True, hash=False)
        except Exception as exc:  # a row whose fitted state does not serialise is scored here, as without Dask
            self.not_shipped.append(f"{job.name}: {type(exc).__name__}: {str(exc)[:200]}")
            for lo, hi in ranges:
                yield job(lo, hi)
            return
        futures = [self.client.submit(_score_range, shipped, lo, hi, pure=False) for lo, hi in ranges]
        try:
            for future in futures:
                yield future.result()
                self.chunks_run += 1
                future.release()
        finally:
            for future in futures:
                future.release()
            shipped.release()
