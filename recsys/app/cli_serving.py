"""Serving commands of the `recsys` CLI: similar, versions, promote, rollback, refresh, reconcile.

`register(main)` adds them to the click group of recsys.app.cli.
"""
from __future__ import annotations

import json

import click

from recsys.app.common import database_option, engine_for, price_as_written, user_errors
from recsys.errors import UserError


def _format_price(price) -> str:
    return "-" if price is None else f"{price:,.2f}"


def _print_neighbors(neighbors, echo=click.echo) -> None:
    if not neighbors:
        echo("  (no item matches the filters)")
        return
    width = max(len(n.item_id) for n in neighbors)
    for n in neighbors:
        shared = ", ".join(n.why.get("shared", ())) or "-"
        stock = "" if n.in_stock else "  out of stock"
        echo(f"  {n.rank:>3}. {n.item_id:<{width}}  {n.score:8.4f}  {n.category or '-'} / {n.brand or '-'}  "
             f"price {_format_price(n.price)}  shares: {shared}{stock}")


def _neighbors_json(neighbors) -> list[dict]:
    return [{"item_id": n.item_id, "score": n.score, "rank": n.rank, "category": n.category, "brand": n.brand,
             "price": price_as_written(n.price), "in_stock": n.in_stock,
             "why": {k: (dict(v) if hasattr(v, "items") else v) for k, v in n.why.items()}} for n in neighbors]


def register(main: click.Group) -> None:
    """Add the serving commands to the `recsys` group."""
    @main.command()
    @click.argument("item_id", required=False)
    @click.option("-k", "k", default=10, show_default=True, type=click.IntRange(min=1), help="How many items.")
    @click.option("--category", help="New-item query: the new product's category (with no ITEM_ID).")
    @click.option("--brand", help="New-item query: its brand.")
    @click.option("--price", type=click.FloatRange(min=0), help="New-item query: its price.")
    @click.option("--feature", "features", multiple=True, metavar="NAME=VALUE",
                  help="New-item query: an extra side feature (repeatable).")
    @click.option("--in-stock-only", is_flag=True, help="Only items in stock.")
    @click.option("--exclude", multiple=True, metavar="ITEM_ID", help="Never return this item (repeatable).")
    @click.option("--same-category/--other-category", "same_category", default=None,
                  help="Only items of the same (or another) category as the query.")
    @click.option("--same-brand/--other-brand", "same_brand", default=None,
                  help="Only items of the same (or another) brand as the query.")
    @click.option("--min-price", type=click.FloatRange(min=0))
    @click.option("--max-price", type=click.FloatRange(min=0))
    @click.option("--alias", default="production", show_default=True, type=click.Choice(["production", "candidate"]))
    @click.option("--bundle", "bundle_path", type=click.Path(file_okay=False, exists=True),
                  help="Query this bundle folder instead of the registry's alias.")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
    @database_option
    @user_errors
    def similar(item_id, k, category, brand, price, features, in_stock_only, exclude, same_category, same_brand,
                min_price, max_price, alias, bundle_path, as_json, database_url):
        """Similar items from the production version.

        \b
        recsys similar ITEM_ID [-k 10] [--in-stock-only] [--same-category]
        recsys similar --category C [--brand B] [--price P] [-k 10]   (a new product)
        """
        from recsys.serving.client import Client

        if item_id is None and category is None:
            raise UserError("Give an ITEM_ID, or describe a new product with --category C [--brand B] [--price P].")
        if item_id is not None and (category or brand or price is not None or features):
            raise UserError("--category/--brand/--price/--feature describe a new product; do not combine them "
                            "with an ITEM_ID.")
        extras = {}
        for spec in features:
            name, sep, value = spec.partition("=")
            if not sep or not name:
                raise UserError(f"--feature expects NAME=VALUE, got {spec!r}.")
            extras[name] = value
        filters = dict(exclude=list(exclude), in_stock_only=in_stock_only, same_category=same_category,
                       same_brand=same_brand, min_price=min_price, max_price=max_price)
        if bundle_path:
            client = Client.open(bundle_path)
        else:
            client = Client.from_registry(alias, engine=engine_for(database_url), refresh_interval_s=None)
        try:
            if item_id is not None:
                neighbors = client.similar(item_id, k, **filters)
                title = f"Items similar to {item_id} (version {client.version}):"
            else:
                neighbors = client.similar_to_new_item(category=category, brand=brand, price=price, k=k,
                                                       **filters, **extras)
                title = (f"Items similar to a new product (category={category!r}, brand={brand!r}, "
                         f"price={price!r}; version {client.version}):")
        except ValueError as exc:
            raise UserError(str(exc)) from None
        if as_json:
            click.echo(json.dumps({"version": client.version, "neighbors": _neighbors_json(neighbors)}, indent=2))
            return
        click.echo(title)
        if neighbors and neighbors[0].why.get("note"):
            click.echo(f"  Note: {neighbors[0].why['note']}")
        _print_neighbors(neighbors)
        if len(neighbors) < k:
            reason = getattr(neighbors, "reason", None)
            click.echo(f"  {reason}" if reason else f"  Only {len(neighbors)} item(s) match the filters.")

    @main.command()
    @click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
    @database_option
    @user_errors
    def versions(as_json, database_url):
        """Published versions, their metrics and aliases."""
        from recsys.serving.registry import list_versions

        infos = list_versions(engine_for(database_url))
        if as_json:
            click.echo(json.dumps([{"version": i.version, "status": i.status, "kind": i.kind,
                                    "parent_version": i.parent_version, "created_at": i.created_at.isoformat(),
                                    "aliases": list(i.aliases), "path": i.path, "metrics": i.metrics}
                                   for i in infos], indent=2))
            return
        if not infos:
            click.echo("No versions yet: run `recsys train` to train and publish one.")
            return
        click.echo(f"{'version':<30} {'kind':<5} {'status':<9} {'warm R@20':>9} {'cold R@20':>9}  aliases")
        def recall(info, segment):  # "-" for a segment without queries (a 0.0000 there would be no measurement)
            seg = (info.metrics or {}).get(segment)
            if isinstance(seg, dict) and seg.get("n_queries") == 0:
                return None
            return info.recall_at(segment)

        for i in infos:
            warm, cold = recall(i, "warm"), recall(i, "cold")
            click.echo(f"{i.version:<30} {i.kind:<5} {i.status:<9} "
                       f"{'-' if warm is None else f'{warm:.4f}':>9} {'-' if cold is None else f'{cold:.4f}':>9}  "
                       f"{', '.join(i.aliases)}")

    @main.command()
    @click.argument("version")
    @click.option("--force", is_flag=True, help="Promote even if a quality gate fails.")
    @click.option("--min-warm-recall", default=0.0, show_default=True, type=click.FloatRange(0, 1),
                  help="Gate: warm Recall@20 floor.")
    @click.option("--min-cold-recall", default=0.0, show_default=True, type=click.FloatRange(0, 1),
                  help="Gate: cold Recall@20 floor.")
    @click.option("--max-drop", default=0.05, show_default=True, type=click.FloatRange(0, 1),
                  help="Gate: largest relative drop of warm/cold Recall@20 versus production.")
    @database_option
    @user_errors
    def promote(version, force, min_warm_recall, min_cold_recall, max_drop, database_url):
        """Point the production alias at VERSION (after the quality gates)."""
        from recsys.serving.registry import Gates, get_alias, promote as promote_version

        engine = engine_for(database_url)
        before = get_alias(engine, "production")
        info = promote_version(engine, version, Gates(min_warm_recall, min_cold_recall, max_drop), force=force)
        if before is not None and before.version == info.version:
            click.echo(f"{version} is already production.")
        else:
            click.echo(f"production: {before.version if before else '(none)'} -> {info.version}")

    @main.command()
    @click.option("--reason", default="", help="Recorded in the alias history.")
    @database_option
    @user_errors
    def rollback(reason, database_url):
        """Point production back at the version it served before."""
        from recsys.serving.registry import get_alias, rollback as rollback_alias

        engine = engine_for(database_url)
        before = get_alias(engine, "production")
        target = rollback_alias(engine, "production", reason)
        click.echo(f"production: {before.version if before else '(none)'} -> {target}")

    @main.command()
    @click.option("--exclude-user", "exclude_users", multiple=True,
                  help="An account whose purchases are never folded in (repeatable).")
    @database_option
    @user_errors
    def refresh(exclude_users, database_url):
        """Run the hourly refresh once now: new catalogue items and the purchases since the production
        version folded into a patch version (no retraining)."""
        from flows.refresh_new_items import refresh_new_items

        version = refresh_new_items(database_url=database_url, exclude_users=list(exclude_users))
        if version is None:
            click.echo("Nothing new since the production version (or no production version yet): nothing published.")
            return
        from recsys.serving.registry import get_version

        notes = get_version(engine_for(database_url), version).notes or {}
        patch, folded = notes.get("patch", {}), notes.get("refresh", {})
        click.echo(f"production: {version} (patch of {patch.get('parent_version')}): "
                   f"{patch.get('new_items', 0)} new catalogue items")
        if folded:
            click.echo(f"  purchases since the version: {folded.get('lines', 0)} lines by {folded.get('accounts', 0)} "
                       f"accounts; {folded.get('fresh_items', 0)} items first bought since then folded in "
                       f"({folded.get('too_few_buyers', 0)} left for fewer than {folded.get('min_buyers')} buyers); "
                       f"{folded.get('lists_updated', 0)} co-purchase lists updated")

    @main.command()
    @click.option("--artifact-root", type=click.Path(file_okay=False),
                  help="Bundle folder root (default: $RECSYS_ARTIFACT_ROOT or $RECSYS_HOME/artifacts).")
    @click.option("--stale-after", default=600.0, show_default=True,
                  help="Seconds after which an unfinished staging folder is removed.")
    @database_option
    @user_errors
    def reconcile(artifact_root, stale_after, database_url):
        """Make the registry agree with the bundle folders after a crash."""
        from recsys.config import get_settings
        from recsys.serving.registry import reconcile as reconcile_registry

        settings = get_settings(database_url=database_url)
        root = artifact_root or settings.resolved_artifact_root
        report = reconcile_registry(engine_for(database_url), root, stale_after_s=stale_after)
        for label, names in (("registered as orphan", report.registered_orphans),
                             ("removed unfinished", report.removed_staging),
                             ("marked missing", report.marked_missing), ("restored", report.restored)):
            if names:
                click.echo(f"{label}: {', '.join(names)}")
        for name, problem in report.damaged.items():
            click.echo(f"damaged (left in place): {name}: {problem}")
        if not report.changed and not report.damaged:
            click.echo(f"Registry and {root} agree.")
