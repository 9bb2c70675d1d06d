"""The rows of every evaluation table, by name: the one list `recsys evaluate`, the nightly flow
and `recsys diagnose` build their recommenders from.

Adding a baseline is its class (in `baselines.py` or a file of its own) plus
one `Row` line below. A row that reuses another row's fit (the compressed
index reuses EGES's model) names it in `needs`: asking for it brings that row
along, evaluated first.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

from recsys.data.graph import GraphConfig
from recsys.embed.train import TrainConfig
from recsys.evaluation.protocol import EvalConfig, Recommender
from recsys.recommenders.baselines import (BoughtTogetherRecommender, CategoryPopularityRecommender,
                                           ItemCFRecommender, MatrixFactorizationRecommender,
                                           PopularityRecommender)
from recsys.recommenders.blended import BlendConfig, BlendedRecommender
from recsys.recommenders.classic import EASERecommender, RP3betaRecommender
from recsys.recommenders.compressed import CompressedRecommender
from recsys.recommenders.eges import EGESRecommender, ScorerConfig
from recsys.recommenders.lightgcn import LightGCNRecommender
from recsys.serving.index import IndexConfig

SHIPPED_ROW = "EGES+PQ+graph"  # the ranking a published version serves; the promotion gates read it


class RowSettings(Protocol):
    """What the rows are built from (`recsys.jobs.pipeline.PipelineConfig` is one)."""

    train: TrainConfig
    scoring: ScorerConfig
    graph: GraphConfig
    index: IndexConfig
    blend: BlendConfig
    evaluation: EvalConfig


@dataclass(frozen=True)
class Row:
    name: str
    build: Callable[[RowSettings, dict[str, Recommender]], Recommender]  # (settings, rows built so far)
    nightly: bool = True  # evaluated by the nightly flow (recsys evaluate runs every row)
    needs: tuple[str, ...] = ()


def _embedding(settings: RowSettings, mode: str, name: str) -> EGESRecommender:
    return EGESRecommender(dataclasses.replace(settings.train, mode=mode), settings.scoring, name=name,
                           graph=settings.graph, session_gap_s=settings.evaluation.session_gap_s)


ROWS: tuple[Row, ...] = (
    Row("popularity", lambda s, _: PopularityRecommender()),
    Row("category popularity", lambda s, _: CategoryPopularityRecommender()),
    Row("bought-together counts", lambda s, _: BoughtTogetherRecommender(s.evaluation.session_gap_s)),
    Row("item-CF (cosine)", lambda s, _: ItemCFRecommender(s.evaluation.session_gap_s)),
    Row("matrix factorisation", lambda s, _: MatrixFactorizationRecommender(session_gap_s=s.evaluation.session_gap_s,
                                                                             seed=s.evaluation.seed)),
    Row("RP3beta", lambda s, _: RP3betaRecommender(session_gap_s=s.evaluation.session_gap_s,
                                                   seed=s.evaluation.seed), nightly=False),
    Row("EASE", lambda s, _: EASERecommender(session_gap_s=s.evaluation.session_gap_s,
                                             seed=s.evaluation.seed), nightly=False),
    Row("LightGCN", lambda s, _: LightGCNRecommender(session_gap_s=s.evaluation.session_gap_s,
                                                     seed=s.evaluation.seed), nightly=False),
    Row("BGE", lambda s, _: _embedding(s, "bge", "BGE"), nightly=False),
    Row("GES", lambda s, _: _embedding(s, "ges", "GES"), nightly=False),
    Row("EGES", lambda s, _: _embedding(s, "eges", "EGES")),
    Row("EGES+PQ", lambda s, built: CompressedRecommender(built["EGES"], s.index, name="EGES+PQ"), needs=("EGES",)),
    Row(SHIPPED_ROW, lambda s, built: BlendedRecommender(built["EGES+PQ"], s.blend, name=SHIPPED_ROW,
                                                         session_gap_s=s.evaluation.session_gap_s),
        needs=("EGES+PQ",)),
)
ROW_NAMES = tuple(r.name for r in ROWS)
NIGHTLY_ROWS = tuple(r.name for r in ROWS if r.nightly)


def _with_needs(names: Sequence[str]) -> set[str]:
    by_name = {r.name.lower(): r for r in ROWS}
    unknown = [n for n in names if n.lower() not in by_name]
    if unknown:
        raise ValueError(f"unknown evaluation rows {list(unknown)}; rows are: {', '.join(ROW_NAMES)}")
    wanted, todo = set(), [n.lower() for n in names]
    while todo:  # with the rows they reuse, and theirs
        name = todo.pop()
        if name not in wanted:
            wanted.add(name)
            todo += [need.lower() for need in by_name[name].needs]
    return wanted


def row_groups(names: Sequence[str]) -> list[tuple[str, ...]]:
    """These rows (with the rows they reuse) as independent groups, in lineup order: rows linked by `needs`
    share a group, and each group can be fitted and scored apart from the others (a task each on a cluster)."""
    wanted = _with_needs(names)
    group_of: dict[str, int] = {}
    groups: list[list[str]] = []
    for row in ROWS:
        if row.name.lower() not in wanted:
            continue
        joined = {group_of[n.lower()] for n in row.needs}
        if not joined:
            group_of[row.name.lower()] = len(groups)
            groups.append([row.name])
            continue
        first, *rest = sorted(joined)
        for other in rest:  # a row needing two groups joins them
            groups[first] += groups[other]
            for n in groups[other]:
                group_of[n.lower()] = first
            groups[other] = []
        groups[first].append(row.name)
        group_of[row.name.lower()] = first
    order = {r.name: i for i, r in enumerate(ROWS)}
    return [tuple(sorted(g, key=order.get)) for g in groups if g]


def build_rows(names: Sequence[str], settings: RowSettings, run_chunks=None,
               train_processes: int = 1) -> list[Recommender]:
    """The recommenders of these rows (names matched case-insensitively), in lineup order.

    run_chunks: where the embedding rows' walk chunks run (recsys.data.walks.iter_walks; None: here);
    train_processes: data-parallel training ranks of the embedding rows (recsys/embed/distributed.py).
    """
    wanted = _with_needs(names)
    built: dict[str, Recommender] = {}
    for row in ROWS:
        if row.name.lower() in wanted:
            built[row.name] = row.build(settings, built)
            if isinstance(built[row.name], EGESRecommender):
                built[row.name].run_chunks = run_chunks
                built[row.name].train_processes = train_processes
    return list(built.values())
