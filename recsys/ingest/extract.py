"""Stream the catalogue and purchases out of Postgres into a columnar `Dataset`.

Server-side cursors fetch fixed-size chunks that are converted to numpy at once,
so peak memory follows the arrays, not one Python object per row. Users and
orders become dense integers inside Postgres; only the item ids, user ids and
the side-feature vocabularies come back as strings.
"""
from __future__ import annotations

import datetime as dt
from importlib import resources

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from tqdm.auto import tqdm

from recsys.config import Settings, get_settings
from recsys.data.dataset import MISSING, Dataset, SideFeature, Watermark
from recsys.ingest.db import get_engine

FAR_PAST = dt.datetime(1900, 1, 1, tzinfo=dt.timezone.utc)
FAR_FUTURE = dt.datetime(9999, 1, 1, tzinfo=dt.timezone.utc)

# what `recsys train` says when the data is too small (the CLI checks before the flow, the flow after extraction)
SMALLEST_TRAINABLE = (
    "The smallest trainable data: at least two purchase lines, and in the earlier 85% of them by time "
    "(the rest is the test period) at least one basket -- one order, or one user's purchases within an "
    "hour -- holding two different items, so that there are co-purchases to learn from. A useful model "
    "needs thousands of purchases.")


def _query(name: str) -> str:
    return resources.files("recsys.sql").joinpath(name).read_text(encoding="utf-8")


def relation_name(name: str) -> str:
    """Quote a possibly schema-qualified relation name safely."""
    parts = name.split(".")
    if not 1 <= len(parts) <= 2 or not all(parts):
        raise ValueError(f"not a relation name: {name!r}")
    return ".".join('"' + p.replace('"', '""') + '"' for p in parts)


def declared_side_features(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        exists = conn.execute(sa.text("SELECT to_regclass('side_features') IS NOT NULL")).scalar()
        if not exists:
            return []
        return [r[0] for r in conn.execute(sa.text("SELECT name FROM side_features ORDER BY name"))]


class _Encoder:
    """Incremental string -> code encoder (0 = missing), built chunk by chunk."""

    def __init__(self):
        self.lookup: dict[str, int] = {}

    def encode(self, values: list) -> np.ndarray:
        codes = np.empty(len(values), dtype=np.int32)
        lookup = self.lookup
        for k, value in enumerate(values):
            if value is None or value == "":
                codes[k] = 0
            else:
                code = lookup.get(value)
                if code is None:
                    code = lookup[value] = len(lookup) + 1
                codes[k] = code
        return codes

    def feature(self, name: str, codes: np.ndarray) -> SideFeature:
        # renumber so values are sorted: the same data gives the same codes whatever the chunking
        ordered = sorted(self.lookup)
        remap = np.zeros(len(self.lookup) + 1, dtype=np.int32)
        for new, value in enumerate(ordered, start=1):
            remap[self.lookup[value]] = new
        return SideFeature(name=name, codes=remap[codes], values=[MISSING, *ordered])


def extract_dataset(engine: Engine, *, items_relation: str = "items", purchases_relation: str = "purchases",
                    since: dt.datetime | None = None, until: dt.datetime | None = None,
                    side_features: list[str] | None = None, chunk_size: int = 100_000,
                    progress: bool = False) -> Dataset:
    """The whole catalogue plus purchases with since <= purchased_at < until."""
    if side_features is None:
        side_features = declared_side_features(engine)
    items_sql = relation_name(items_relation)
    purchases_sql = relation_name(purchases_relation)
    extra_columns = "".join(f", attributes->>'{name.replace(chr(39), chr(39) * 2)}'" for name in side_features)
    params = {"since": since or FAR_PAST, "until": until or FAR_FUTURE}

    with engine.connect() as conn:
        raw = conn.connection.dbapi_connection
        with raw.cursor() as cur:
            cur.execute(f"SELECT count(*), coalesce(max(extract(epoch FROM updated_at)), 0)::bigint FROM {items_sql}")
            n_items, max_updated = cur.fetchone()
            cur.execute(f"SELECT count(*), max(extract(epoch FROM purchased_at))::bigint FROM {purchases_sql} p "
                        f"WHERE purchased_at >= %(since)s AND purchased_at < %(until)s "
                        f"AND EXISTS (SELECT 1 FROM {items_sql} i WHERE i.item_id = p.item_id)", params)
            n_purchases, max_purchased = cur.fetchone()
            cur.execute(f"SELECT DISTINCT user_id COLLATE \"C\" AS u FROM {purchases_sql} p "
                        f"WHERE purchased_at >= %(since)s AND purchased_at < %(until)s "
                        f"AND EXISTS (SELECT 1 FROM {items_sql} i WHERE i.item_id = p.item_id) ORDER BY u", params)
            user_ids = np.array([r[0] for r in cur.fetchall()], dtype=object)

        item_ids = np.empty(n_items, dtype=object)
        price = np.empty(n_items, dtype=np.float32)
        in_stock = np.empty(n_items, dtype=bool)
        created = np.empty(n_items, dtype=np.int64)
        encoders = {name: _Encoder() for name in ["category", "brand", *side_features]}
        codes = {name: np.empty(n_items, dtype=np.int32) for name in encoders}
        bar = tqdm(total=n_items + n_purchases, unit="row", desc="extract", disable=not progress)
        with raw.cursor(name="recsys_items") as cur:
            cur.itersize = chunk_size
            cur.execute(_query("extract_items.sql").format(items=items_sql, side_feature_columns=extra_columns))
            start = 0
            while rows := cur.fetchmany(chunk_size):
                stop = start + len(rows)
                columns = list(zip(*rows))
                item_ids[start:stop] = columns[0]
                codes["category"][start:stop] = encoders["category"].encode(columns[1])
                codes["brand"][start:stop] = encoders["brand"].encode(columns[2])
                price[start:stop] = np.array(columns[3], dtype=np.float64)  # None -> nan
                in_stock[start:stop] = columns[4]
                created[start:stop] = columns[5]
                for k, name in enumerate(side_features):
                    codes[name][start:stop] = encoders[name].encode(columns[7 + k])
                start = stop
                bar.update(len(rows))
        if start != n_items:
            raise RuntimeError(f"the catalogue changed during extraction ({n_items} then {start} items); retry")

        p_user = np.empty(n_purchases, dtype=np.int32)
        p_item = np.empty(n_purchases, dtype=np.int32)
        p_time = np.empty(n_purchases, dtype=np.int64)
        p_order = np.empty(n_purchases, dtype=np.int64)
        p_qty = np.empty(n_purchases, dtype=np.int32)
        with raw.cursor(name="recsys_purchases") as cur:
            cur.itersize = chunk_size
            cur.execute(_query("extract_purchases.sql").format(items=items_sql, purchases=purchases_sql), params)
            start = 0
            while rows := cur.fetchmany(chunk_size):
                block = np.array(rows, dtype=np.int64)
                stop = start + len(block)
                if stop > n_purchases:
                    raise RuntimeError("purchases were added during extraction; retry")
                p_user[start:stop], p_item[start:stop] = block[:, 0], block[:, 1]
                p_time[start:stop], p_order[start:stop], p_qty[start:stop] = block[:, 2], block[:, 3], block[:, 4]
                start = stop
                bar.update(len(block))
        bar.close()
        raw.commit()
    if start != n_purchases:
        raise RuntimeError(f"purchases changed during extraction ({n_purchases} then {start}); retry")

    ds = Dataset(
        item_ids=item_ids,
        category=encoders["category"].feature("category", codes["category"]),
        brand=encoders["brand"].feature("brand", codes["brand"]),
        price=price, in_stock=in_stock, item_created_at=created,
        extra_features=[encoders[n].feature(n, codes[n]) for n in side_features],
        purchase_user=p_user, purchase_item=p_item, purchase_time=p_time, purchase_order=p_order,
        purchase_quantity=p_qty, user_ids=user_ids,
        watermark=Watermark(max_purchased_at=None if max_purchased is None else int(max_purchased),
                            max_item_updated_at=int(max_updated) or None, n_items=int(n_items),
                            n_purchases=int(n_purchases)),
    )
    ds.validate()
    return ds


def extract_configured(settings: Settings, progress: bool = False) -> Dataset:
    """The whole shop from the configured database and relations (RECSYS_*)."""
    return extract_dataset(get_engine(settings), items_relation=settings.items_relation,
                           purchases_relation=settings.purchases_relation, progress=progress)


def read_new_catalogue_items(engine: Engine, feature_names: list[str], since_epoch_s: int | None = None,
                             relation: str | None = None):
    """Catalogue rows (load layout) changed after `since_epoch_s` (all when None)."""
    relation = relation_name(relation or get_settings().items_relation)
    extras = [n for n in feature_names if n not in ("category", "brand", "price_tier")]
    extra_sql = "".join(f", attributes->>'{n.replace(chr(39), chr(39) * 2)}' AS \"{n.replace(chr(34), '')}\""
                        for n in extras)
    where = "" if since_epoch_s is None else " WHERE updated_at > to_timestamp(:since)"
    with engine.connect() as conn:
        rows = conn.execute(sa.text(f"SELECT item_id, category, brand, price::float8 AS price, "
                                    f"coalesce(in_stock, true) AS in_stock{extra_sql} FROM {relation}{where}"),
                            {"since": since_epoch_s} if since_epoch_s is not None else {})
        return pd.DataFrame(rows.fetchall(), columns=list(rows.keys()))


def accounts_seen_before(engine: Engine, user_ids, epoch_s: float, purchases_relation: str = "purchases") -> set[str]:
    """The ids among `user_ids` with a purchase before `epoch_s` (sql/known_accounts.sql)."""
    ids = sorted({str(u) for u in user_ids})
    if not ids:
        return set()
    sql = _query("known_accounts.sql").format(purchases=relation_name(purchases_relation))
    with engine.connect() as conn:
        with conn.connection.dbapi_connection.cursor() as cur:
            cur.execute(sql, {"ids": ids, "before": float(epoch_s)})
            return {row[0] for row in cur.fetchall()}
