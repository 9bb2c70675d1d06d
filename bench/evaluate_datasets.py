"""The evaluation table of docs/evaluation.md: every row of the lineup on each data set, one JSON line each.

    python bench/evaluate_datasets.py [--data tafeng,online-retail,online-retail-generic,synthetic-a,synthetic-b]
                                      [--rows all] [--max-queries 20000] [--out docs/evaluation-latest.jsonl]

The same protocol and rows as `recsys evaluate --no-link-prediction` (all
rows of recsys/recommenders/lineup.py), on the Dataset the loaders produce
(what `recsys load` stores and `recsys evaluate` extracts), without the
database round trip. Data sets:

* tafeng, online-retail: the built-in adapters (../shared/data);
* online-retail-generic: the generic import of bench/online_retail_generic.py
  (category = stock code without trailing letters, price, title undeclared, no brand);
* synthetic-a: larger baskets, few categories (ShopConfig seed 11);
* synthetic-b: small baskets, many categories, a steeper popularity curve and
  more new items (ShopConfig seed 12).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
SYNTHETIC = {
    "synthetic-a": dict(seed=11, n_items=4000, n_users=2500, n_categories=12, n_baskets=12_000,
                        mean_basket_size=8.0, launched_share=0.2),
    "synthetic-b": dict(seed=12, n_items=5000, n_users=4000, n_categories=120, n_baskets=30_000,
                        mean_basket_size=2.5, popularity_exponent=1.3, launched_share=0.3, new_item_share=0.1),
}


def dataset(name: str):
    if name == "tafeng":
        from recsys.ingest.loaders.tafeng import read_frames

        return read_frames(SHARED / "tafeng" / "ta_feng.csv.zip").to_dataset()
    if name == "online-retail":
        from recsys.ingest.loaders.online_retail import read_frames

        return read_frames(SHARED / "online_retail" / "online_retail.parquet").to_dataset()
    if name == "online-retail-generic":
        from online_retail_generic import export

        from recsys.ingest.loaders.generic import read_frames

        folder = Path(tempfile.mkdtemp(prefix="or-generic-"))
        files = export(SHARED / "online_retail" / "online_retail.parquet", folder)
        return read_frames(files["items_csv"], files["purchases_csv"]).to_dataset()
    if name in SYNTHETIC:
        from recsys.data.synthetic import ShopConfig, generate_shop

        return generate_shop(ShopConfig(**SYNTHETIC[name])).to_dataset()
    raise SystemExit(f"unknown data set {name!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="tafeng,online-retail,online-retail-generic,synthetic-a,synthetic-b")
    parser.add_argument("--rows", default="all", help="comma-separated lineup rows, or 'all'")
    parser.add_argument("--max-queries", type=int, default=20000)
    parser.add_argument("--threads", type=int, default=None, help="EGES training threads (default: all cores)")
    parser.add_argument("--out", type=Path, help="append each data set's JSON line here too")
    args = parser.parse_args()

    from recsys.evaluation.protocol import evaluate
    from recsys.jobs.diagnose import DiagnoseConfig, diagnose
    from recsys.jobs.pipeline import PipelineConfig, evaluation_rows
    from recsys.recommenders.lineup import ROW_NAMES

    rows = list(ROW_NAMES) if args.rows == "all" else [r.strip() for r in args.rows.split(",") if r.strip()]
    for name in args.data.split(","):
        started = time.perf_counter()
        ds = dataset(name)
        config = PipelineConfig.from_dict({"eval_rows": rows, "train": {"num_threads": args.threads},
                                           "evaluation": {"max_queries": args.max_queries,
                                                          "include_link_prediction": False}})
        recommenders = evaluation_rows(config)
        report = evaluate(ds, recommenders, config.evaluation, log=lambda line: print(line, file=sys.stderr, flush=True))
        shipped = next((r for r in recommenders if getattr(r, "choice", None)), None)
        quick = diagnose(ds, DiagnoseConfig(compare_methods=False))  # the clustering heuristic, for the doc's table
        line = {"data": name, "table": report.to_table(), "report": report.to_dict(),
                "diagnose_quick": {"clustering": quick.clustering, "structure": quick.structure,
                                   "verdict": quick.verdict},
                "blend_choice": shipped.choice if shipped is not None else None,
                "seconds": round(time.perf_counter() - started, 1), **machine()}
        print(report.to_table(), file=sys.stderr, flush=True)
        text = json.dumps(line, default=str)
        print(text, flush=True)
        if args.out:
            with open(args.out, "a") as handle:
                handle.write(text + "\n")


if __name__ == "__main__":
    main()
