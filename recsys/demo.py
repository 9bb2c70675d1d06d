"""`recsys demo`: the main job end to end on the embedded default database."""
from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import numpy as np

from recsys.config import get_settings
from recsys.errors import UserError

DEFAULT_PATHS = {
    "tafeng": Path("../shared/data/tafeng/ta_feng.csv.zip"),
    "online-retail": Path("../shared/data/online_retail/online_retail.parquet"),
}


def load_demo_data(engine, data: str, data_path: Path | None, seed: int, echo=print):
    """Load the chosen shop into the database (idempotent) and return the load report."""
    from recsys.load import load_frames

    settings = get_settings()
    if data == "synthetic":
        from recsys.loaders.generic import read_frames
        from recsys.synthetic import ShopConfig, generate_shop

        shop = generate_shop(ShopConfig(seed=seed))
        folder = Path(settings.home) / "demo" / f"synthetic-seed{seed}"
        items_path, purchases_path = shop.write_csv(folder)
        echo(f"Generated a synthetic shop (seed {seed}): {len(shop.items):,} items, "
             f"{len(shop.purchases):,} purchase lines -> {folder}")
        frames = read_frames(items_path, purchases_path, side_features=shop.extra_side_features)
    else:
        path = data_path or DEFAULT_PATHS[data]
        if not Path(path).exists():
            raise UserError(f"The {data} file {path} does not exist. Pass --data-path (see ../shared/data/README.md).")
        if data == "tafeng":
            from recsys.loaders.tafeng import read_frames
        else:
            from recsys.loaders.online_retail import read_frames
        frames = read_frames(path)
    report = load_frames(engine, frames)
    echo(report.to_text())
    return report


def summarise(ds) -> str:
    from recsys.sessions import make_baskets

    baskets = make_baskets(ds)
    n_baskets = int(baskets.max()) + 1 if len(baskets) else 0
    first = dt.datetime.fromtimestamp(int(ds.purchase_time.min()), dt.timezone.utc) if ds.n_purchases else None
    last = dt.datetime.fromtimestamp(int(ds.purchase_time.max()), dt.timezone.utc) if ds.n_purchases else None
    bought = np.bincount(ds.purchase_item, minlength=ds.n_items)
    lines = [
        f"Shop: {ds.n_items:,} items, {ds.n_users:,} users, {ds.n_purchases:,} purchase lines, "
        f"{n_baskets:,} baskets ({ds.n_purchases / max(n_baskets, 1):.1f} lines each)",
    ]
    if first:
        lines.append(f"  purchases from {first:%Y-%m-%d} to {last:%Y-%m-%d}")
    lines.append(f"  items never bought: {int((bought == 0).sum()):,}; top 10% of items take "
                 f"{np.sort(bought)[::-1][: max(1, ds.n_items // 10)].sum() / max(bought.sum(), 1):.0%} of lines")
    features = ", ".join(f"{sf.name} ({sf.cardinality - 1:,} values)" for sf in ds.side_features())
    lines.append(f"  side features: {features}, price ({int(np.isfinite(ds.price).sum()):,} items priced)")
    return "\n".join(lines)


def run_demo(*, data: str = "synthetic", data_path: Path | None = None, seed: int = 0,
             database_url: str | None = None, echo=print) -> None:
    from recsys.db import get_engine
    from recsys.extract import extract_dataset

    started = time.perf_counter()
    settings = get_settings(database_url=database_url)
    engine = get_engine(settings)
    echo(f"Database: {engine.url.render_as_string(hide_password=True)}")
    load_demo_data(engine, data, data_path, seed, echo=echo)
    ds = extract_dataset(engine, items_relation=settings.items_relation,
                         purchases_relation=settings.purchases_relation)
    echo(summarise(ds))
    echo(f"Demo finished in {time.perf_counter() - started:.1f} s.")
