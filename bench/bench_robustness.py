"""The attack table of docs/robustness.md: fake accounts injected into a real shop's training period.

    python bench/bench_robustness.py [--data tafeng] [--model shipped,counts] [--shipped-cells all|clean]
                                     [--max-queries 5000] [--out docs/robustness-latest.jsonl]

For each cell (attack shape x size x defences) the training period of the
evaluation split (the last 15% of purchases by time held out) gets fake
accounts (recsys/evaluation/attacks.py), the model is fitted on it, and the
bench measures (one JSON line per cell):

* promotion: the share of the 100 most bought items whose top 20 holds the
  pushed target, and its mean rank there;
* clean warm and cold Recall@20 (and warm coverage@20) on the real test
  period, the same queries for every cell.

Defences (each alone and all together): "exclusion" (accounts the rules of
recsys/data/accounts.py flag are left out), "distinct users" (co-purchase
weights count accounts, not baskets), "edge cap" (one account adds at most
1 to a graph edge). Models: the shipped ranking (EGES+PQ+graph, as the
flow builds it, blend chosen on the attacked data's validation tail) and
bought-together counts. EGES+PQ fits are shared between cells whose
training data and graph settings are equal.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, log, machine  # noqa: E402
from evaluate_datasets import dataset  # noqa: E402

DEFENCES = {  # name -> (exclude suspicious accounts, distinct-user co-purchases, per-account graph edge cap,
    #                 distinct accounts an edge needs, graph user weighting)
    "none": (False, False, None, 1, "uniform"),
    "exclusion": (True, False, None, 1, "uniform"),
    "distinct users": (False, True, None, 1, "uniform"),
    "edge cap": (False, False, 1.0, 1, "uniform"),
    "two users per edge": (False, False, None, 2, "uniform"),
    "inverse activity": (False, False, None, 1, "inverse_activity"),
    "all": (True, True, 1.0, 1, "uniform"),  # the defaults
}
CLEAN = ("clean", 0.0)
# (shape, share) -> defences measured; the shipped model's cells (the counts run every defence everywhere)
SHIPPED_CELLS = {
    CLEAN: ("none", "distinct users", "edge cap", "all"),
    ("bandwagon", 0.005): ("none", "all"),
    ("bandwagon", 0.01): ("none", "exclusion", "distinct users", "all"),
    ("bandwagon", 0.02): ("none", "all"),
    ("burst", 0.01): ("none", "all"),
    ("heavy", 0.01): ("none", "distinct users", "all"),
}
COUNT_SHARES = (0.001, 0.005, 0.01, 0.02)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="tafeng")
    parser.add_argument("--model", default="shipped,counts")
    parser.add_argument("--max-queries", type=int, default=5000)
    parser.add_argument("--shipped-cells", default="all", choices=("all", "clean"),
                        help="the shipped model's cells: all of SHIPPED_CELLS, or the clean data's only (defence costs)")
    parser.add_argument("--cells", default=None,
                        help="only these attack cells, e.g. heavy:0.01,clean:0 (both models)")
    parser.add_argument("--defences", default=None,
                        help="comma-separated defences (DEFENCES) instead of each cell's own list")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    import numpy as np

    from recsys.data.accounts import AccountConfig, screen_accounts, without_excluded
    from recsys.evaluation.attacks import AttackConfig, inject, promotion
    from recsys.evaluation.protocol import EvalConfig, prepare
    from recsys.jobs.pipeline import PipelineConfig
    from recsys.recommenders.baselines import BoughtTogetherRecommender
    from recsys.recommenders.blended import BlendedRecommender
    from recsys.recommenders.compressed import CompressedRecommender
    from recsys.recommenders.eges import EGESRecommender

    def emit_cell(record: dict) -> None:
        emit({**record, **machine()}, args.out)

    models = set(args.model.split(","))
    for name in args.data.split(","):
        ds = dataset(name)
        config = EvalConfig(max_queries=args.max_queries, include_link_prediction=False)
        prep = prepare(ds, config)  # the clean test period: the same queries for every cell
        clean_train = prep.split.train
        attacks = {CLEAN: None}
        shapes = sorted({*SHIPPED_CELLS} | {(s, x) for s in ("bandwagon", "burst", "heavy") for x in COUNT_SHARES})
        for shape, share in shapes:
            if shape != "clean":
                attacks[(shape, share)] = inject(clean_train, AttackConfig(shape=shape, share=share))
        target = next(a for a in attacks.values() if a is not None).target
        popular = next(a for a in attacks.values() if a is not None).popular
        screens = {}

        def training_data(cell, exclude: bool):
            attack = attacks[cell]
            data = clean_train if attack is None else attack.data
            if not exclude:
                return data, None
            if cell not in screens:
                screens[cell] = screen_accounts(data, AccountConfig(), config.session_gap_s)
            screen = screens[cell]
            caught = None if attack is None else int(np.isin(screen.excluded_users, attack.fake_users).sum())
            return without_excluded(data, screen), {"excluded_accounts": int(len(screen.excluded_users)),
                                                    "excluded_lines": screen.n_excluded_lines,
                                                    "fake_accounts_excluded": caught,
                                                    "by_reason": screen.by_reason}

        def measure(model_name, rec, cell, defence, screen, started, extra=None):
            in_pool = prep.warm
            attack = attacks[cell]
            promo = promotion(rec.score_warm, target, popular, in_pool)
            warm = score(rec, prep, ds, config, warm=True)
            cold = score(rec, prep, ds, config, warm=False)
            emit_cell({"bench": "robustness", "data": name, "model": model_name, "attack": cell[0], "share": cell[1],
                  "fake_accounts": 0 if attack is None else int(len(attack.fake_users)),
                  "fake_lines": 0 if attack is None else attack.n_fake_lines,
                  "target_item": str(ds.item_ids[target]), "defence": defence, **promo,
                  "warm_recall@20": warm.recall[20], "warm_coverage@20": warm.coverage[20], "warm_tail_recall@20": warm.tail_recall[20],
                  "cold_recall@20": cold.recall[20], "screen": screen,
                  "seconds": round(time.perf_counter() - started, 1), **(extra or {})})

        wanted = None
        if args.cells:
            wanted = {(c.split(":")[0], float(c.split(":")[1])) for c in args.cells.split(",")}

        def selected(cell) -> bool:
            return wanted is None or cell in wanted

        if "counts" in models:
            for cell in filter(selected, attacks):
                for defence in ("none", "exclusion", "distinct users", "all"):
                    started = time.perf_counter()
                    exclude, distinct = DEFENCES[defence][:2]
                    data, screen = training_data(cell, exclude)
                    rec = BoughtTogetherRecommender(config.session_gap_s, distinct_users=distinct)
                    rec.fit(data)
                    measure("bought-together counts", rec, cell, defence, screen, started)
        if "shipped" in models:
            bases = {}
            cells = SHIPPED_CELLS if args.shipped_cells == "all" else {CLEAN: SHIPPED_CELLS[CLEAN]}
            cells = {cell: defences for cell, defences in cells.items() if selected(cell)}
            chosen = args.defences.split(",") if args.defences else None
            for cell, defences in cells.items():
                for defence in chosen or defences:
                    started = time.perf_counter()
                    exclude, distinct, cap, min_users, weighting = DEFENCES[defence]
                    data, screen = training_data(cell, exclude)
                    settings = PipelineConfig.from_dict({
                        "train": {"num_threads": args.threads},
                        "graph": {"max_user_edge_weight": cap, "min_edge_users": min_users,
                                  "user_weighting": weighting},
                        "blend": {"distinct_users": distinct, "validation_queries": args.max_queries},
                        "evaluation": {"max_queries": args.max_queries, "include_link_prediction": False}})
                    key = (cell, exclude, cap, min_users, weighting)
                    if key not in bases:
                        eges = EGESRecommender(dataclasses.replace(settings.train, mode="eges"), settings.scoring,
                                               name="EGES", graph=settings.graph,
                                               session_gap_s=config.session_gap_s, progress=False)
                        base = CompressedRecommender(eges, settings.index)
                        base.fit(data)
                        bases[key] = base
                    rec = BlendedRecommender(bases[key], settings.blend, session_gap_s=config.session_gap_s)
                    rec.fit(data)
                    measure("EGES+PQ+graph", rec, cell, defence, screen, started)
                    log(f"{name} {cell} {defence}: done in {time.perf_counter() - started:.0f}s")


def score(rec, prep, ds, config, warm: bool):
    from recsys.evaluation.metrics import score_queries

    queries = prep.warm_queries if warm else prep.cold_queries
    return score_queries(rec.score_warm if warm else rec.score_cold, queries, prep.columns, ds.n_items,
                         config.ks, mask_anchor=warm, chunk_bytes=config.chunk_bytes,
                         name=getattr(rec, "name", ""))


if __name__ == "__main__":
    main()
