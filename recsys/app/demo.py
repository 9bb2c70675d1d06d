"""`recsys demo`: the main job end to end on the embedded default database."""
from __future__ import annotations

import datetime as dt
import shlex
import time
from pathlib import Path

import numpy as np

from flows.train_and_publish import train_and_publish
from recsys.app.common import price_as_written
from recsys.config import get_settings
from recsys.data.sessions import make_baskets
from recsys.data.synthetic import ShopConfig, generate_shop
from recsys.errors import UserError
from recsys.ingest.db import get_engine
from recsys.ingest.extract import extract_configured
from recsys.ingest.load import load_frames
from recsys.ingest.loaders import generic, online_retail, tafeng
from recsys.serving.client import Client

DEFAULT_PATHS = {
    "tafeng": Path("../shared/data/tafeng/ta_feng.csv.zip"),
    "online-retail": Path("../shared/data/online_retail/online_retail.parquet"),
}


def load_demo_data(engine, data: str, data_path: Path | None, seed: int, echo=print):
    """Load the chosen shop into the database (idempotent) and return the load report."""
    settings = get_settings()
    if data == "synthetic":
        shop = generate_shop(ShopConfig(seed=seed))
        folder = Path(settings.home) / "demo" / f"synthetic-seed{seed}"
        items_path, purchases_path = shop.write_csv(folder)
        echo(f"Generated a synthetic shop (seed {seed}): {len(shop.items):,} items, "
             f"{len(shop.purchases):,} purchase lines -> {folder}")
        frames = generic.read_frames(items_path, purchases_path, side_features=shop.extra_side_features)
    else:
        path = data_path or DEFAULT_PATHS[data]
        if not Path(path).exists():
            raise UserError(f"The {data} file {path} does not exist. Pass --data-path (see ../shared/data/README.md).")
        frames = (tafeng if data == "tafeng" else online_retail).read_frames(path)
    report = load_frames(engine, frames)
    echo(report.to_text())
    return report


def summarise(ds) -> str:
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


def describe_neighbours(client, neighbours) -> list[str]:
    lines = []
    for n in neighbours:
        price = f"{n.price:.2f}" if n.price is not None and n.price == n.price else "?"
        shared = ", ".join((n.why or {}).get("shared", [])) or "-"
        lines.append(f"    {n.rank:>2}. {n.item_id:<16} {n.score:8.3f}  {str(n.category)[:18]:<18} "
                     f"{str(n.brand)[:12]:<12} {price:>8}  shares: {shared}")
    return lines


def show_similar_items(engine, ds, database_url: str | None, echo=print, n_warm: int = 3, k: int = 5) -> list[str]:
    """Similar items for the most bought item of three different categories, and one new product.

    Returns the `recsys` commands that ask the same questions, with this shop's ids."""
    client = Client.from_registry(database_url=database_url)
    counts = np.bincount(ds.purchase_item, minlength=ds.n_items)
    picked, categories = [], set()
    for item in np.argsort(-counts, kind="stable"):
        category = int(ds.category.codes[item])
        if category not in categories:
            picked.append(int(item))
            categories.add(category)
        if len(picked) == n_warm:
            break
    for item in picked:
        item_id = str(ds.item_ids[item])
        neighbours = client.similar(item_id, k=k)
        attention = (neighbours[0].why or {}).get("query_attention", {}) if neighbours else {}
        weights = ", ".join(f"{name} {w:.2f}" for name, w in attention.items())
        echo(f"\nSimilar to {item_id} (category {ds.category.values[ds.category.codes[item]]}, bought "
             f"{counts[item]:,} times; attention: {weights}):")
        for line in describe_neighbours(client, neighbours):
            echo(line)
    # a brand-new product: the side features of the first catalogue item never bought, else a made-up one
    never = np.flatnonzero(counts == 0)
    if len(never):
        item = int(never[-1])
        category = ds.category.values[ds.category.codes[item]]
        brand = ds.brand.values[ds.brand.codes[item]] if ds.brand.codes[item] else None
        price = price_as_written(float(ds.price[item])) if np.isfinite(ds.price[item]) else None
        extras = {sf.name: sf.values[sf.codes[item]] for sf in ds.extra_features if sf.codes[item]}
        label = f"new item {ds.item_ids[item]} (no purchases)"
    else:
        category, brand, price, extras = ds.category.values[1], None, None, {}
        label = "a new product"
    neighbours = client.similar_to_new_item(category=category, brand=brand, price=price, k=k, **extras)
    features = ", ".join(f"{k_}={v}" for k_, v in {"category": category, "brand": brand, "price": price,
                                                    **extras}.items() if v is not None)
    echo(f"\nSimilar to {label}, from its side features alone ({features}):")
    for line in describe_neighbours(client, neighbours):
        echo(line)
    client.close()
    new_item = " ".join([f"--category {shlex.quote(str(category))}"]
                        + ([f"--brand {shlex.quote(str(brand))}"] if brand is not None else [])
                        + ([f"--price {price:g}"] if price is not None else [])
                        + [f"--feature {shlex.quote(f'{name}={value}')}" for name, value in extras.items()])
    first = shlex.quote(str(ds.item_ids[picked[0]])) if picked else None
    commands = ([f"recsys similar {first} -k 10", f"recsys similar {first} -k 10 --same-category --in-stock-only"]
                if first else [])
    return commands + [f"recsys similar {new_item} -k 10", "recsys versions", "recsys evaluate --max-queries 2000"]


def run_demo(*, data: str = "synthetic", data_path: Path | None = None, seed: int = 0,
             database_url: str | None = None, echo=print) -> None:
    import logging
    import os

    started = time.perf_counter()
    settings = get_settings(database_url=database_url)
    engine = get_engine(settings)
    url = engine.url.render_as_string(hide_password=False)
    echo(f"Database: {engine.url.render_as_string(hide_password=True)}")
    load_demo_data(engine, data, data_path, seed, echo=echo)
    ds = extract_configured(settings)
    echo(summarise(ds))
    loaded = time.perf_counter()

    echo("\nRunning the train-and-publish flow (evaluate against baselines, train EGES, compress, publish) ...")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    logging.getLogger("prefect").setLevel(logging.WARNING)
    result = train_and_publish(database_url=url, config={"seed": seed})
    if result.get("cached"):
        echo(f"Data unchanged since version {result['version']}: reusing it (recsys train --force retrains).")
    else:
        status = "promoted to production" if result["promoted"] else "kept as candidate (gates failed)"
        echo(f"Published version {result['version']}: {status}.")
        echo(result["report"])
        echo("Stages (s): " + ", ".join(f"{k} {v:.1f}" for k, v in result["stages"].items()))
    commands = show_similar_items(engine, ds, url, echo=echo)
    total = time.perf_counter() - started
    echo(f"\nDemo finished in {total:.0f} s (load {loaded - started:.0f} s, flow and queries "
         f"{total - (loaded - started):.0f} s). Try next, with this shop's ids:")
    for command in commands:
        echo(f"  {command}")
