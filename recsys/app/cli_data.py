"""Data commands of the `recsys` CLI: generate (a synthetic shop to load).

`register(main)` adds them to the click group of recsys.app.cli. The generator
(numpy, pandas) is imported inside the command, so `recsys --help` stays fast.
"""
from __future__ import annotations

import math
import shlex
import time
from pathlib import Path

import click

from recsys.app.common import user_errors
from recsys.errors import UserError

MIN_ITEMS = 100  # 20 communities, each needs items on sale from the start
DEFAULT_LINES_PER_ITEM = 10
MAX_DEFAULT_LINES = 10_000_000
# Purchase lines per basket once repeated items fold into quantity (and a user's till
# baskets of one day into one visit): ~3.2 for shops of 3,000 items and more, fewer
# for tiny catalogues and many baskets per user. Up to 2M lines (seconds a try) the shop
# is generated again with the measured ratio until it is within 3% of --lines; above,
# the estimate is that close already.
LINES_PER_BASKET = 3.2
RECALIBRATE_UP_TO_LINES = 2_000_000
MAX_TRIES = 6
LINES_TOLERANCE = 0.03


def shop_shape(n_items: int) -> dict:
    """Catalogue shape derived from the item count (the 3,000-item demo shop and the
    1M-item benchmark shop are both on this rule)."""
    root = math.sqrt(n_items)
    return {
        "n_categories": max(30, round(0.3 * root)),
        "brands_per_category": min(20, max(5, round(0.02 * root))),
        "n_communities": max(20, n_items // 500),
    }


def default_lines(n_items: int) -> int:
    return min(DEFAULT_LINES_PER_ITEM * n_items, MAX_DEFAULT_LINES)


def baskets_for(lines: int, lines_per_basket: float = LINES_PER_BASKET) -> int:
    return max(1, round(lines / lines_per_basket))


def _generate(n_items: int, n_users: int | None, n_lines: int, seed: int):
    """The shop whose purchase log is closest to n_lines (deterministic for the arguments)."""
    from recsys.data.synthetic import ShopConfig, generate_shop

    ratio = LINES_PER_BASKET
    best = None
    for _ in range(MAX_TRIES if n_lines <= RECALIBRATE_UP_TO_LINES else 1):
        baskets = baskets_for(n_lines, ratio)
        users = min(n_users, baskets) if n_users is not None else max(1, min(n_items // 2, baskets))
        config = ShopConfig(seed=seed, n_items=n_items, n_users=users, n_baskets=baskets, **shop_shape(n_items))
        try:
            shop = generate_shop(config)
        except ValueError as exc:
            raise UserError(f"Cannot generate this shop: {exc}") from None
        if best is None or abs(len(shop.purchases) - n_lines) < abs(len(best.purchases) - n_lines):
            best = shop
        off = abs(len(shop.purchases) - n_lines) / n_lines
        if off <= LINES_TOLERANCE or len(shop.purchases) == 0:
            break
        ratio = len(shop.purchases) / baskets
        del shop
    return best


def register(main: click.Group) -> None:
    """Add the data commands to the `recsys` group."""
    @main.command()
    @click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
    @click.option("--items", "n_items", required=True, type=click.IntRange(min=MIN_ITEMS), metavar="N",
                  help=f"Catalogue size (at least {MIN_ITEMS}).")
    @click.option("--users", "n_users", type=click.IntRange(min=1), metavar="U",
                  help="Shoppers (default: N/2, at most one per basket).")
    @click.option("--lines", "n_lines", type=click.IntRange(min=10), metavar="L",
                  help=f"Purchase lines, about (default: {DEFAULT_LINES_PER_ITEM} per item, at most "
                       f"{MAX_DEFAULT_LINES:,}).")
    @click.option("--seed", default=0, show_default=True, help="Same seed, same arguments: byte-identical files.")
    @click.option("--format", "file_format", type=click.Choice(["csv", "parquet"]), default="csv",
                  show_default=True, help="File format of the two files.")
    @user_errors
    def generate(out_dir, n_items, n_users, n_lines, seed, file_format):
        """Write a synthetic shop (items and purchases) for `recsys load`.

        \b
        recsys generate shop --items 3000
        recsys generate big --items 1000000 --lines 10000000 --seed 7

        Writes OUT_DIR/items.csv and OUT_DIR/purchases.csv (or .parquet),
        replacing files of those names. The shop has shopping missions
        (communities of categories), brands, prices, a `color` column, Zipf
        popularity, baskets, and new items that have no purchases yet.

        \b
        Derived from N when not given:
          users       N/2 (never more than the baskets: every user shops)
          lines       10 per item, at most 10,000,000 (~3.2 lines a basket)
          categories  0.3 x sqrt(N), at least 30
          brands      0.02 x sqrt(N) per category, 5 to 20
          communities N/500, at least 20
        --lines is a target: the log comes within a few percent of it.
        """
        target = n_lines if n_lines is not None else default_lines(n_items)
        if n_users is not None and n_users > baskets_for(target):
            raise click.BadParameter(
                f"{n_users:,} users need at least {math.ceil(n_users * LINES_PER_BASKET):,} purchase lines "
                f"(every user shops at least once, ~{LINES_PER_BASKET} lines a basket); {target:,} lines make "
                f"about {baskets_for(target):,} baskets. Give more --lines or fewer --users.",
                param_hint="'--users'")

        started = time.perf_counter()
        shop = _generate(n_items, n_users, target, seed)
        generated_s = time.perf_counter() - started
        try:
            write = shop.write_parquet if file_format == "parquet" else shop.write_csv
            items_path, purchases_path = write(out_dir)
        except OSError as exc:
            raise UserError(f"Cannot write the shop to {out_dir}: {exc.strerror or exc}.") from None
        written_s = time.perf_counter() - started - generated_s

        config = shop.config
        n_buyers = shop.purchases["user_id"].nunique()
        width = max(len(str(items_path)), len(str(purchases_path)))
        click.echo(f"Generated a synthetic shop (seed {seed}) in {generated_s:.1f} s, wrote it in {written_s:.1f} s:")
        click.echo(f"  {str(items_path):<{width}}  {len(shop.items):>12,} rows  "
                   f"({config.n_categories:,} categories, {config.n_categories * config.brands_per_category:,} "
                   f"brands, {len(shop.new_item_ids):,} new items never bought)")
        click.echo(f"  {str(purchases_path):<{width}}  {len(shop.purchases):>12,} rows  "
                   f"({n_buyers:,} users, {config.n_baskets:,} baskets; target {target:,} lines)")
        side = " ".join(f"--side-feature {shlex.quote(name)}" for name in shop.extra_side_features)
        click.echo("Load it with:")
        click.echo(f"  recsys load --items {shlex.quote(str(items_path))} "
                   f"--purchases {shlex.quote(str(purchases_path))} {side}".rstrip())
