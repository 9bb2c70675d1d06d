"""A deterministic synthetic shop for the demo, tests and benchmarks.

The shop has a ground truth that embeddings should recover:

* latent *communities* ("shopping missions", e.g. breakfast = bread + butter +
  coffee) each mixing a few categories; every item belongs to one community;
* brands nested in categories, with a community-specific favourite brand, and
  a `color` column whose dominant value depends on the community, so side
  features reveal the community only partially (what cold start must use);
* prices from a category-level log-normal times a brand multiplier, so price
  tiers emerge within a category;
* power-law (Zipf) item popularity and power-law user activity;
* baskets that draw one community (mostly one of the user's 1-3 preferred
  ones) and then items of that community by popularity, plus a small share of
  random popular items as noise;
* a stream of items: most exist before the purchase window, some launch during
  it (bought only after launch, so some are first bought in the test period),
  and the newest ones have no purchases yet (`new_item_ids`, cold start).

A share of baskets are web orders (an `order_id`, second-resolution time);
the rest have no order id and a day-resolution timestamp shared by every line,
like grocery till data. Everything is vectorised numpy so 1M items and 10M
purchases take minutes, not hours.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from recsys.data.dataset import Dataset, from_frames

DAY_S = 86_400

_CATEGORY_WORDS = [
    "bread", "butter", "coffee", "tea", "milk", "cheese", "yogurt", "cereal", "jam", "eggs",
    "pasta", "sauce", "rice", "beans", "oil", "spices", "beer", "wine", "juice", "water",
    "chips", "chocolate", "cookies", "shampoo", "soap", "toothpaste", "detergent", "diapers",
    "baby food", "pet food", "batteries", "light bulbs", "notebooks", "pens", "candles",
    "frozen pizza", "ice cream", "fish", "chicken", "vegetables",
]
_SYLLABLES = ["ka", "lo", "mi", "ra", "ven", "to", "su", "bel", "no", "dri", "fa", "zen",
              "qu", "or", "pi", "mar", "sol", "te", "vi", "ul"]
_COLORS = ["red", "blue", "green", "yellow", "white", "black", "orange", "purple", "brown",
           "pink", "grey", "teal"]
_DESCRIPTORS = ["classic", "organic", "family pack", "light", "premium", "value", "original",
                "extra", "mini", "deluxe"]


@dataclass
class ShopConfig:
    """Knobs of the synthetic shop; the same config always yields the same shop."""

    seed: int = 0
    n_items: int = 3000
    n_users: int = 2000
    n_categories: int = 30
    brands_per_category: int = 5
    n_communities: int = 20
    categories_per_community: tuple[int, int] = (2, 4)  # inclusive range
    n_baskets: int = 15_000
    mean_basket_size: float = 4.0  # lines drawn per basket (geometric); repeats fold into quantity
    max_basket_size: int = 40
    popularity_exponent: float = 1.1  # Zipf exponent of item popularity
    community_exponent: float = 0.7  # Zipf exponent of community popularity
    user_activity_exponent: float = 0.9  # Zipf exponent of user activity
    preferred_community_share: float = 0.85  # baskets drawn from a user's own communities
    noise_share: float = 0.08  # lines drawn from global popularity, ignoring the community
    order_share: float = 0.7  # baskets with an order_id (the rest: day timestamps, no order)
    start: str = "2024-01-01"
    span_days: int = 120
    launched_share: float = 0.15  # items created during the window (bought only afterwards)
    new_item_share: float = 0.05  # items created at the very end, never bought
    new_item_window: float = 0.1  # new items are created in this last fraction of the window
    in_stock_share: float = 0.93
    dominant_color_share: float = 0.6  # items taking their community's colour
    favourite_brand_share: float = 0.5  # items taking their community's brand in a category
    extra_feature: str = "color"

    def validate(self) -> None:
        """Raise ValueError naming the first setting that cannot produce a shop."""
        positive = ["n_items", "n_users", "n_categories", "brands_per_category", "n_communities",
                    "n_baskets", "span_days", "max_basket_size"]
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise ValueError(f"ShopConfig.{name} must be >= 1, got {getattr(self, name)}")
        shares = ["preferred_community_share", "noise_share", "order_share", "launched_share",
                  "new_item_share", "in_stock_share", "dominant_color_share", "favourite_brand_share"]
        for name in shares:
            value = float(getattr(self, name))
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"ShopConfig.{name} must be in [0, 1], got {value}")
        if not 0.0 < self.new_item_window < 1.0:
            raise ValueError(f"ShopConfig.new_item_window must be in (0, 1), got {self.new_item_window}")
        if self.mean_basket_size < 1.0:
            raise ValueError(f"ShopConfig.mean_basket_size must be >= 1, got {self.mean_basket_size}")
        lo, hi = self.categories_per_community
        if not 1 <= lo <= hi:
            raise ValueError(f"ShopConfig.categories_per_community must be 1 <= lo <= hi, got {(lo, hi)}")
        for name in ["popularity_exponent", "community_exponent", "user_activity_exponent"]:
            if float(getattr(self, name)) < 0:
                raise ValueError(f"ShopConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.launched_share + self.new_item_share >= 1.0:
            raise ValueError("ShopConfig.launched_share + new_item_share must be < 1 "
                             "(some items must exist before the purchase window)")
        n_new, n_launched = _class_sizes(self)
        if self.n_items - n_new - n_launched < self.n_communities:
            raise ValueError(f"ShopConfig.n_items={self.n_items} leaves fewer items on sale at the "
                             f"start than n_communities={self.n_communities}")
        if not str(self.extra_feature).isidentifier():
            raise ValueError(f"ShopConfig.extra_feature must be a column name, got {self.extra_feature!r}")


@dataclass
class SyntheticShop:
    """Frames in the `recsys load` layout plus the ground truth that generated them."""

    config: ShopConfig
    items: pd.DataFrame
    purchases: pd.DataFrame
    item_community: np.ndarray  # int32, aligned with `items` rows
    new_item_ids: list[str]  # created at the end of the window, no purchases yet
    extra_side_features: list[str] = field(default_factory=list)
    community_categories: list[list[str]] = field(default_factory=list)

    def to_dataset(self) -> Dataset:
        return from_frames(self.items, self.purchases, side_features=self.extra_side_features)

    def write_csv(self, folder: str | Path) -> tuple[Path, Path]:
        """Write items.csv and purchases.csv for `recsys load --items ... --purchases ...`.

        Timestamps read `2024-01-01T08:30:00+0000`. Written in chunks of rows, each
        distinct timestamp formatted once (a basket's time repeats on all its lines):
        10M purchase lines take seconds, not the minutes of a strftime per row.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        items_path, purchases_path = folder / "items.csv", folder / "purchases.csv"
        _write_csv_chunked(self.items, items_path)
        _write_csv_chunked(self.purchases, purchases_path)
        return items_path, purchases_path

    def write_parquet(self, folder: str | Path) -> tuple[Path, Path]:
        """Write items.parquet and purchases.parquet (timestamps stay typed, in UTC)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        items_path, purchases_path = folder / "items.parquet", folder / "purchases.parquet"
        self.items.to_parquet(items_path, index=False)
        self.purchases.to_parquet(purchases_path, index=False)
        return items_path, purchases_path


_CSV_CHUNK_ROWS = 1_000_000


def _iso_text(values: pd.Series) -> np.ndarray:
    """Timestamps as `to_csv(date_format="%Y-%m-%dT%H:%M:%S%z")` writes them ("" for NaT),
    formatting each distinct value once."""
    tz = getattr(values.dtype, "tz", None)
    if tz is not None and str(tz) != "UTC":
        return values.dt.strftime("%Y-%m-%dT%H:%M:%S%z").fillna("").to_numpy(dtype=object)
    naive = values.dt.tz_localize(None) if tz is not None else values
    codes, uniques = pd.factorize(naive.to_numpy(dtype="datetime64[s]"))
    suffix = "+0000" if tz is not None else ""
    text = np.array([t + suffix for t in np.datetime_as_string(uniques, unit="s")] + [""], dtype=object)
    return text[codes]  # code -1 (NaT) picks the trailing ""


def _write_csv_chunked(frame: pd.DataFrame, path: Path, chunk_rows: int = _CSV_CHUNK_ROWS) -> None:
    dates = [c for c in frame.columns if pd.api.types.is_datetime64_any_dtype(frame[c].dtype)]
    with open(path, "w", newline="", encoding="utf-8") as out:
        for start in range(0, max(len(frame), 1), chunk_rows):
            chunk = frame.iloc[start:start + chunk_rows]
            if dates:
                chunk = chunk.assign(**{c: _iso_text(chunk[c]) for c in dates})
            chunk.to_csv(out, index=False, header=start == 0, lineterminator="\n")


def _class_sizes(config: ShopConfig) -> tuple[int, int]:
    """Number of (new, launched) items; at least one new item when the share asks for any."""
    n_new = int(round(config.n_items * config.new_item_share))
    if config.new_item_share > 0:
        n_new = max(n_new, 1)
    n_launched = int(round(config.n_items * config.launched_share))
    return n_new, n_launched


def _zipf_weights(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Power-law weights over n entities, ranks shuffled so popularity is not tied to ids."""
    ranks = rng.permutation(n)
    return (ranks + 1.0) ** -exponent


def _ids(prefix: str, n: int, min_width: int) -> np.ndarray:
    width = max(min_width, len(str(max(n - 1, 0))))
    return np.array([f"{prefix}{i:0{width}d}" for i in range(n)], dtype=object)


def _category_names(n: int) -> list[str]:
    if n <= len(_CATEGORY_WORDS):
        return _CATEGORY_WORDS[:n]
    return [*_CATEGORY_WORDS, *(f"category {i:03d}" for i in range(len(_CATEGORY_WORDS), n))]


def _brand_names(n: int, rng: np.random.Generator) -> list[str]:
    """Pronounceable unique brand names ("Kalo", "Venmi", ...)."""
    names: list[str] = []
    seen: set[str] = set()
    for i in range(n):
        parts = rng.integers(0, len(_SYLLABLES), size=2 + int(rng.integers(0, 2)))
        name = "".join(_SYLLABLES[p] for p in parts).capitalize()
        if name in seen:
            name = f"{name} {i}"
        seen.add(name)
        names.append(name)
    return names


class _GroupedSampler:
    """Draw an entity from group g with probability proportional to its weight in g.

    One cumulative array over entities sorted by group, normalised to [g, g+1)
    inside each group, so a batch of draws is a single searchsorted.
    Zero-weight entities are never drawn.
    """

    def __init__(self, group: np.ndarray, weights: np.ndarray, n_groups: int):
        self.order = np.argsort(group, kind="stable")
        sorted_group = group[self.order]
        sorted_w = weights[self.order].astype(np.float64)
        starts = np.searchsorted(sorted_group, np.arange(n_groups), side="left")
        ends = np.searchsorted(sorted_group, np.arange(n_groups), side="right")
        if np.any(ends == starts):
            raise ValueError("every group needs at least one entity")
        csum = np.concatenate([[0.0], np.cumsum(sorted_w)])
        before, total = csum[starts], csum[ends] - csum[starts]
        if np.any(total <= 0):
            raise ValueError("every group needs an entity with positive weight")
        local = (csum[1:] - before[sorted_group]) / total[sorted_group]
        self.cum = sorted_group + local
        # The last drawable position of each group guards against u rounding up to g + 1.
        positive = np.flatnonzero(sorted_w > 0)
        self.last = positive[np.searchsorted(positive, ends, side="left") - 1]

    def draw(self, groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        pos = np.searchsorted(self.cum, groups + rng.random(len(groups)), side="right")
        pos = np.minimum(pos, self.last[groups])
        return self.order[pos]


def generate_shop(config: ShopConfig | None = None) -> SyntheticShop:
    """Generate the catalogue and purchase log described by `config` (deterministic by seed)."""
    config = config or ShopConfig()
    config.validate()
    rng = np.random.default_rng(config.seed)
    catalogue = _make_catalogue(config, rng)
    purchases = _make_purchases(config, catalogue, rng)
    items = catalogue["frame"]
    new_mask = catalogue["is_new"]
    return SyntheticShop(
        config=config,
        items=items,
        purchases=purchases,
        item_community=catalogue["community"].astype(np.int32),
        new_item_ids=items["item_id"].to_numpy(dtype=object)[new_mask].tolist(),
        extra_side_features=[config.extra_feature],
        community_categories=catalogue["community_categories"],
    )


def _make_catalogue(config: ShopConfig, rng: np.random.Generator) -> dict:
    n, n_comm, n_cat = config.n_items, config.n_communities, config.n_categories
    start_s = int(pd.Timestamp(config.start, tz="UTC").timestamp())
    end_s = start_s + config.span_days * DAY_S
    new_from_s = end_s - int(config.new_item_window * config.span_days * DAY_S)
    n_new, n_launched = _class_sizes(config)
    n_established = n - n_new - n_launched

    # Items are numbered in creation order (like an auto-increment key):
    # established ones before the window, launched ones during it, new ones at the end.
    created = np.concatenate([
        np.sort(rng.integers(start_s - 730 * DAY_S, start_s, size=n_established)),
        np.sort(rng.integers(start_s, new_from_s, size=n_launched)),
        np.sort(rng.integers(new_from_s, end_s, size=n_new)),
    ]).astype(np.int64)
    is_new = np.zeros(n, bool)
    is_new[n_established + n_launched:] = True

    # Communities mix a few categories; every category serves at least one community.
    lo, hi = config.categories_per_community
    hi = min(hi, n_cat)
    lo = min(lo, hi)
    comm_cats = np.full((n_comm, hi), -1, np.int64)
    comm_n_cats = rng.integers(lo, hi + 1, size=n_comm)
    cat_cycle = rng.permutation(n_cat)
    for c in range(n_comm):
        first = [int(cat_cycle[c % n_cat])] if c < n_cat else []
        others = rng.permutation(np.setdiff1d(np.arange(n_cat), first))
        chosen = [*first, *others[: comm_n_cats[c] - len(first)].tolist()]
        comm_cats[c, : len(chosen)] = chosen
    # Categories left over when there are fewer communities than categories join random communities.
    used = set(comm_cats[comm_cats >= 0].tolist())
    for cat in (x for x in range(n_cat) if x not in used):
        c = int(rng.integers(n_comm))
        if comm_n_cats[c] < hi:
            comm_cats[c, comm_n_cats[c]] = cat
            comm_n_cats[c] += 1
        else:
            comm_cats[c, int(rng.integers(hi))] = cat

    # Community of each item: community sizes follow their popularity; every
    # community gets one established item so baskets can always be filled.
    community_weight = _zipf_weights(n_comm, config.community_exponent, rng)
    community = rng.choice(n_comm, size=n, p=community_weight / community_weight.sum())
    anchors = rng.choice(n_established, size=n_comm, replace=False)
    community[anchors] = np.arange(n_comm)

    slot = (rng.random(n) * comm_n_cats[community]).astype(np.int64)
    category = comm_cats[community, slot]

    n_brands = n_cat * config.brands_per_category
    favourite_brand = rng.integers(0, config.brands_per_category, size=(n_comm, hi))
    brand_in_cat = np.where(rng.random(n) < config.favourite_brand_share,
                            favourite_brand[community, slot],
                            rng.integers(0, config.brands_per_category, size=n))
    brand = category * config.brands_per_category + brand_in_cat

    dominant_color = rng.integers(0, len(_COLORS), size=n_comm)
    color = np.where(rng.random(n) < config.dominant_color_share,
                     dominant_color[community], rng.integers(0, len(_COLORS), size=n))

    # Price tiers: category level x brand multiplier x small item noise.
    category_price = np.exp(rng.normal(np.log(8.0), 0.9, size=n_cat))
    brand_multiplier = np.exp(rng.normal(0.0, 0.45, size=n_brands))
    price = category_price[category] * brand_multiplier[brand] * np.exp(rng.normal(0, 0.15, size=n))
    price = np.maximum(np.round(price, 2), 0.01)

    in_stock = (rng.random(n) < config.in_stock_share) | is_new

    cat_names = np.array(_category_names(n_cat), dtype=object)
    brand_names = np.array(_brand_names(n_brands, rng), dtype=object)
    descriptor = np.array(_DESCRIPTORS, dtype=object)[rng.integers(0, len(_DESCRIPTORS), size=n)]
    size_g = np.array(["100 g", "250 g", "500 g", "1 kg", "2 kg", "6 pack"], dtype=object)[
        rng.integers(0, 6, size=n)]
    title = brand_names[brand] + " " + cat_names[category] + " " + descriptor + " " + size_g

    frame = pd.DataFrame({
        "item_id": _ids("I", n, 6),
        "category": cat_names[category],
        "brand": brand_names[brand],
        "price": price,
        "title": title,
        "in_stock": in_stock,
        "created_at": pd.to_datetime(created, unit="s", utc=True),
        config.extra_feature: np.array(_COLORS, dtype=object)[color],
    })
    return {
        "frame": frame,
        "community": community,
        "community_weight": community_weight,
        "is_new": is_new,
        "created": created,
        "price": price,
        "start_s": start_s,
        "end_s": end_s,
        "community_categories": [[str(cat_names[x]) for x in comm_cats[c, : comm_n_cats[c]]]
                                 for c in range(n_comm)],
    }


def _make_purchases(config: ShopConfig, catalogue: dict, rng: np.random.Generator) -> pd.DataFrame:
    n_users, n_baskets, n_comm = config.n_users, config.n_baskets, config.n_communities
    community, created, is_new = catalogue["community"], catalogue["created"], catalogue["is_new"]
    start_s, end_s = catalogue["start_s"], catalogue["end_s"]

    # Users: 1-3 preferred communities (popular ones more often) and power-law activity.
    cw = catalogue["community_weight"] / catalogue["community_weight"].sum()
    user_n_pref = rng.integers(1, 4, size=n_users)
    user_pref = rng.choice(n_comm, size=(n_users, 3), p=cw)
    activity = _zipf_weights(n_users, config.user_activity_exponent, rng)
    # Every user shops at least once when there are enough baskets.
    n_guaranteed = min(n_users, n_baskets)
    basket_user = np.concatenate([
        rng.permutation(n_users)[:n_guaranteed],
        rng.choice(n_users, size=n_baskets - n_guaranteed, p=activity / activity.sum()),
    ])

    own = rng.random(n_baskets) < config.preferred_community_share
    pref_slot = (rng.random(n_baskets) * user_n_pref[basket_user]).astype(np.int64)
    basket_comm = np.where(own, user_pref[basket_user, pref_slot],
                           rng.choice(n_comm, size=n_baskets, p=cw))

    has_order = rng.random(n_baskets) < config.order_share
    basket_time = rng.integers(start_s, end_s, size=n_baskets)
    # Till data without orders only knows the day.
    basket_time = np.where(has_order, basket_time, basket_time // DAY_S * DAY_S)

    size = np.minimum(rng.geometric(1.0 / config.mean_basket_size, size=n_baskets),
                      config.max_basket_size)
    line_basket = np.repeat(np.arange(n_baskets), size)
    line_comm = basket_comm[line_basket]
    line_time = basket_time[line_basket]
    noise = rng.random(len(line_basket)) < config.noise_share

    # New items are never drawn (weight 0); launched items only once they exist.
    weight = np.where(is_new, 0.0, _zipf_weights(len(community), config.popularity_exponent, rng))
    by_community = _GroupedSampler(community, weight, n_comm)
    overall = _GroupedSampler(np.zeros(len(community), np.int64), weight, 1)
    line_item = np.empty(len(line_basket), np.int64)
    pending = np.arange(len(line_basket))
    for _ in range(64):
        if len(pending) == 0:
            break
        is_noise = noise[pending]
        drawn = np.empty(len(pending), np.int64)
        drawn[~is_noise] = by_community.draw(line_comm[pending[~is_noise]], rng)
        drawn[is_noise] = overall.draw(np.zeros(int(is_noise.sum()), np.int64), rng)
        line_item[pending] = drawn
        pending = pending[created[drawn] > line_time[pending]]
    if len(pending):
        # Rare leftovers: the most popular item on sale from the start, in the same community.
        established = (created < start_s) & ~is_new
        best = np.full(n_comm, -1, np.int64)
        ranked = np.lexsort((-weight, community))
        ranked = ranked[established[ranked]]
        first_of = np.unique(community[ranked], return_index=True)
        best[first_of[0]] = ranked[first_of[1]]
        top_overall = int(np.flatnonzero(established)[np.argmax(weight[established])])
        line_item[pending] = np.where(noise[pending], top_overall, best[line_comm[pending]])

    # Till baskets of one user on one day are one visit (as the loader and sessions see
    # them): fold them together so a repeated item becomes quantity, not a repeated line.
    till = np.flatnonzero(~has_order)
    visit = np.arange(n_baskets)
    if len(till):
        _, first, inverse = np.unique(basket_user[till] * (end_s // DAY_S + 1) + basket_time[till] // DAY_S,
                                      return_index=True, return_inverse=True)
        visit[till] = till[first][inverse]
    line_basket = visit[line_basket]

    # One line per (basket, item); drawing an item twice raises its quantity.
    key = line_basket * len(community) + line_item
    key, counts = np.unique(key, return_counts=True)
    line_basket, line_item = key // len(community), key % len(community)
    quantity = counts * rng.geometric(0.8, size=len(key))
    discount = np.where(rng.random(len(key)) < 0.1, rng.choice([0.9, 0.8], size=len(key)), 1.0)
    unit_price = np.round(catalogue["price"][line_item] * discount, 2)

    # Chronological log; order ids numbered in time order.
    order = np.lexsort((line_item, line_basket, basket_time[line_basket]))
    line_basket, line_item = line_basket[order], line_item[order]
    quantity, unit_price = quantity[order], unit_price[order]
    order_baskets = np.flatnonzero(has_order)
    order_baskets = order_baskets[np.argsort(basket_time[order_baskets], kind="stable")]
    order_ids = np.full(n_baskets, None, dtype=object)
    order_ids[order_baskets] = _ids("O", len(order_baskets), 7)

    item_ids = catalogue["frame"]["item_id"].to_numpy(dtype=object)
    user_ids = _ids("U", n_users, 5)
    return pd.DataFrame({
        "user_id": user_ids[basket_user[line_basket]],
        "item_id": item_ids[line_item],
        "purchased_at": pd.to_datetime(basket_time[line_basket], unit="s", utc=True),
        "order_id": order_ids[line_basket],
        "quantity": quantity.astype(np.int64),
        "unit_price": unit_price,
    })
