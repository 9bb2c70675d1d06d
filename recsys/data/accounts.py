"""Accounts that look injected, found from the purchases alone, and their exclusion from training.

Fake purchases push an item by pairing it with popular ones in many
accounts' baskets. Those accounts leave traces that real shoppers rarely do
in numbers, and each rule below looks for one, judged against what the rest
of the same data makes likely (no fixed rates that hold for one shop only):

* "one-off buyers": an item bought mostly by accounts with at most
  `one_off_baskets` baskets, far more of them than the item's buyers would
  hold at the data's own share of such accounts (a Poisson tail of `min_z`
  standard deviations), at least `min_accounts` of them and a majority
  (`min_share`) of its buyers: the trace of new accounts made to buy it.
* "devoted": accounts with two or more baskets, every one of which holds
  the same item: flagged when an item has `min_accounts` of them, a
  majority of its buyers, far beyond the count expected from its buyers'
  basket counts (the data's own share of devoted items per basket count).
* "burst": many accounts that first appear in one window (`burst_window_s`)
  and buy the same item in it, against the rate at which the other windows'
  new accounts buy that item, and a majority of the item's buyers.
* "duplicate baskets": one basket of `min_duplicate_size`+ items bought by
  `min_accounts`+ accounts, flagged where such baskets are at least half of
  an account's baskets.

Flagged accounts are excluded from training by configuration only; the
database keeps every line, and each run reports what it left out and why.
The strongest patterns are acted on first, and no more than
`max_excluded_share` of the lines are left out on suspicion, unless a
pattern is overwhelming (`always_z` standard deviations: a large attack is
still a clear one): a shop whose real shoppers happen to look like a
pattern loses at most that much, and the findings beyond it are reported as
not acted on.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from recsys.data.dataset import Dataset, subset_purchases
from recsys.data.sessions import make_baskets

RULES = ("one-off buyers", "devoted", "burst", "duplicate baskets")


@dataclass
class AccountConfig:
    """Which accounts training leaves out (explicit ids, and those the rules flag)."""

    exclude_suspicious: bool = True  # leave out accounts the rules flag
    exclude_users: tuple[str, ...] = ()  # user ids always left out (e.g. known test or staff accounts)
    min_accounts: int = 10  # accounts behind a pattern before it counts (5 flagged no real account on 6 data sets)
    min_share: float = 0.5  # share of the item's buyers behind a pattern
    min_z: float = 8.0  # standard deviations above the expected count
    one_off_baskets: int = 2  # "one-off buyers": accounts with at most this many baskets
    burst_window_s: int = 86_400
    burst_factor: float = 10.0  # "burst": at least this times the expected new buyers
    min_duplicate_size: int = 5  # smaller identical baskets are common among real shoppers of popular items
    max_excluded_share: float = 0.02  # at most this share of the lines is left out on suspicion ...
    always_z: float = 30.0  # ... except for patterns this far beyond chance (Ta-Feng with 10% fake users: 70)

    def validate(self) -> None:
        if self.min_accounts < 2:
            raise ValueError(f"AccountConfig.min_accounts must be >= 2, got {self.min_accounts}")
        if not 0 < self.min_share <= 1:
            raise ValueError(f"AccountConfig.min_share must be in (0, 1], got {self.min_share}")
        if self.one_off_baskets < 1:
            raise ValueError(f"AccountConfig.one_off_baskets must be >= 1, got {self.one_off_baskets}")
        if not 0 <= self.max_excluded_share <= 1:
            raise ValueError(f"AccountConfig.max_excluded_share must be in [0, 1], got {self.max_excluded_share}")
        if self.burst_window_s <= 0 or self.min_duplicate_size < 2:
            raise ValueError("AccountConfig: burst_window_s must be > 0 and min_duplicate_size >= 2")


@dataclass
class Finding:
    """One pattern: the rule, the item (or basket) behind it, and the accounts that make it."""

    rule: str
    item: int | None  # item position; None for duplicate baskets
    accounts: np.ndarray  # user codes
    observed: int
    expected: float
    detail: dict = field(default_factory=dict)


@dataclass
class AccountScreen:
    """What the rules found in a data set, and which lines training leaves out."""

    findings: list[Finding]  # acted on, strongest first
    excluded_users: np.ndarray  # user codes, sorted
    excluded_lines: np.ndarray  # bool per purchase line
    by_reason: dict  # reason -> {"accounts": n, "lines": n}
    not_acted_on: list[Finding] = field(default_factory=list)  # beyond the max_excluded_share budget

    @property
    def n_excluded_lines(self) -> int:
        return int(self.excluded_lines.sum())

    def record(self, ds: Dataset, max_listed: int = 20) -> dict:
        """JSON-able summary for the manifest, the run report and `recsys diagnose`."""
        return {
            "excluded_accounts": int(len(self.excluded_users)),
            "excluded_lines": self.n_excluded_lines,
            "by_reason": self.by_reason,
            "findings": [{"rule": f.rule,
                          "item_id": None if f.item is None else str(ds.item_ids[f.item]),
                          "accounts": int(len(f.accounts)), "observed": f.observed,
                          "expected": round(float(f.expected), 2), **f.detail,
                          "example_accounts": [str(ds.user_ids[u]) for u in f.accounts[:5]]}
                         for f in self.findings[:max_listed]],
            "n_findings": len(self.findings),
            "not_acted_on": [{"rule": f.rule, "item_id": None if f.item is None else str(ds.item_ids[f.item]),
                              "accounts": int(len(f.accounts))} for f in self.not_acted_on[:max_listed]],
        }


def _user_item_baskets(ds: Dataset, baskets: np.ndarray):
    """Distinct (user, item) pairs with the number of the user's baskets holding the item, and baskets per user."""
    n_users = max(ds.n_users, int(ds.purchase_user.max()) + 1 if ds.n_purchases else 0)
    user = ds.purchase_user.astype(np.int64)
    item = ds.purchase_item.astype(np.int64)
    # one entry per (basket, item)
    bi = np.unique(baskets * ds.n_items + item)
    b_of, i_of = bi // ds.n_items, bi % ds.n_items
    user_of_basket = np.zeros(int(baskets.max()) + 1 if len(baskets) else 0, np.int64)
    user_of_basket[baskets] = user
    u_of = user_of_basket[b_of]
    baskets_per_user = np.bincount(user_of_basket, minlength=n_users)
    pair, count = np.unique(u_of * ds.n_items + i_of, return_counts=True)
    return pair // ds.n_items, pair % ds.n_items, count, baskets_per_user, b_of, i_of, u_of


def _poisson_z(observed: np.ndarray, expected: np.ndarray) -> np.ndarray:
    return (observed - expected) / np.sqrt(np.maximum(expected, 1.0))


def _item_excess(ds, rule, pu, pi, marked, expected_share, config) -> list[Finding]:
    """Items whose marked buyers are many, a majority and far beyond the expected count."""
    buyers = np.bincount(pi, minlength=ds.n_items)
    observed = np.bincount(pi, weights=marked, minlength=ds.n_items)
    expected = np.bincount(pi, weights=expected_share, minlength=ds.n_items)
    z = _poisson_z(observed, expected)
    flagged = np.flatnonzero((observed >= config.min_accounts) & (z >= config.min_z)
                             & (observed >= config.min_share * np.maximum(buyers, 1)))
    return [Finding(rule, int(item), np.unique(pu[marked & (pi == item)]), int(observed[item]),
                    float(expected[item]), {"buyers": int(buyers[item]), "z": round(float(z[item]), 1)})
            for item in flagged]


def _one_off(ds, pu, pi, baskets_per_user, config) -> list[Finding]:
    one_off = baskets_per_user[pu] <= config.one_off_baskets
    return _item_excess(ds, "one-off buyers", pu, pi, one_off, np.full(len(pu), one_off.mean()), config)


def _devoted(ds, pu, pi, count, baskets_per_user, config) -> list[Finding]:
    b = baskets_per_user[pu]
    devoted = (count == b) & (b >= 2)
    # the data's share of devoted (account, item) pairs per basket count: what chance makes
    share_b = np.bincount(b, weights=devoted) / np.maximum(np.bincount(b), 1)
    return _item_excess(ds, "devoted", pu, pi, devoted, share_b[b], config)


def _burst(ds, pi, config) -> list[Finding]:
    user = ds.purchase_user.astype(np.int64)
    first = np.full(int(user.max()) + 1, np.iinfo(np.int64).max, np.int64)
    np.minimum.at(first, user, ds.purchase_time)
    window = first // config.burst_window_s
    # (account, item) pairs bought in the account's first window
    in_first = (ds.purchase_time // config.burst_window_s) == window[user]
    pairs = np.unique(user[in_first] * ds.n_items + ds.purchase_item[in_first].astype(np.int64))
    u, i = pairs // ds.n_items, pairs % ds.n_items
    w = window[u]
    windows, w_code = np.unique(w, return_inverse=True)
    new_per_window = np.bincount(w_code[np.unique(u, return_index=True)[1]], minlength=len(windows))
    total_new = int(new_per_window.sum())
    cell, cell_count = np.unique(w_code * ds.n_items + i, return_counts=True)
    cw, ci = cell // ds.n_items, cell % ds.n_items
    item_total = np.bincount(i, minlength=ds.n_items)
    # the item's rate among the other windows' new accounts
    others = np.maximum(total_new - new_per_window[cw], 1)
    rate = (item_total[ci] - cell_count) / others
    expected = new_per_window[cw] * rate
    z = _poisson_z(cell_count, expected)
    buyers = np.bincount(pi, minlength=ds.n_items)  # pi: one entry per (account, item)
    hit = np.flatnonzero((cell_count >= config.min_accounts) & (z >= config.min_z)
                         & (cell_count >= config.burst_factor * np.maximum(expected, 1e-9))
                         & (cell_count >= config.min_share * buyers[ci]))
    findings = []
    for h in hit:
        accounts = np.unique(u[(w_code == cw[h]) & (i == ci[h])])
        findings.append(Finding("burst", int(ci[h]), accounts, int(cell_count[h]), float(expected[h]),
                                {"window_start": int(windows[cw[h]] * config.burst_window_s),
                                 "new_accounts_in_window": int(new_per_window[cw[h]]),
                                 "z": round(float(z[h]), 1)}))
    return findings


def _duplicates(ds, b_of, i_of, u_of, baskets_per_user, config) -> list[Finding]:
    # a basket's item set as the sum of random 64-bit item keys (collisions are negligible)
    keys = np.random.default_rng(0).integers(1, 2**62, ds.n_items, dtype=np.int64)
    n_baskets = int(b_of.max()) + 1 if len(b_of) else 0
    signature = np.zeros(n_baskets, np.int64)
    np.add.at(signature, b_of, keys[i_of])
    size = np.bincount(b_of, minlength=n_baskets)
    owner = np.zeros(n_baskets, np.int64)
    owner[b_of] = u_of
    big = np.flatnonzero(size >= config.min_duplicate_size)
    if len(big) == 0:
        return []
    sig_owner = np.unique(np.stack([signature[big], owner[big]], axis=1), axis=0)
    sigs, accounts_per_sig = np.unique(sig_owner[:, 0], return_counts=True)
    common = sigs[accounts_per_sig >= config.min_accounts]
    findings = []
    for sig in common:
        members = big[signature[big] == sig]
        dup_per_user = np.bincount(owner[members], minlength=len(baskets_per_user))
        accounts = np.flatnonzero((dup_per_user > 0) & (2 * dup_per_user >= baskets_per_user))
        if len(accounts) < config.min_accounts:
            continue
        items = np.unique(i_of[b_of == members[0]])
        findings.append(Finding("duplicate baskets", None, accounts, int(len(np.unique(owner[members]))), 0.0,
                                {"basket_items": [str(ds.item_ids[x]) for x in items[:10]],
                                 "basket_size": int(len(items))}))
    return findings


def screen_accounts(ds: Dataset, config: AccountConfig = AccountConfig(), session_gap_s: int = 3600) -> AccountScreen:
    """Find the accounts the rules flag and the lines training leaves out (see the module docstring)."""
    config.validate()
    excluded = np.zeros(ds.n_purchases, bool)
    findings: list[Finding] = []
    skipped: list[Finding] = []
    by_reason: dict = {}
    if ds.n_purchases == 0:
        return AccountScreen([], np.zeros(0, np.int64), excluded, by_reason)
    user = ds.purchase_user.astype(np.int64)
    n_users = max(int(user.max()) + 1, ds.n_users)
    reason_of = np.full(n_users, "", dtype=object)
    if config.exclude_users:
        reason_of[user_codes(ds, config.exclude_users)] = "listed in exclude_users"
    if config.exclude_suspicious:
        baskets = make_baskets(ds, session_gap_s)
        pu, pi, count, per_user, b_of, i_of, u_of = _user_item_baskets(ds, baskets)
        findings = (_one_off(ds, pu, pi, per_user, config) + _devoted(ds, pu, pi, count, per_user, config)
                    + _burst(ds, pi, config)
                    + _duplicates(ds, b_of, i_of, u_of, per_user, config))
        # strongest first (z; duplicated baskets by their number of accounts), within the line budget
        findings.sort(key=lambda f: -float(f.detail.get("z", len(f.accounts))))
        lines_of = np.bincount(user, minlength=n_users)
        budget = config.max_excluded_share * ds.n_purchases
        used = 0.0  # the budget is for suspicion only: listed accounts are always left out
        acted, skipped = [], []
        for f in findings:
            fresh = f.accounts[reason_of[f.accounts] == ""]
            cost = float(lines_of[fresh].sum())
            if used + cost > budget and float(f.detail.get("z", 0.0)) < config.always_z:
                skipped.append(f)
                continue
            reason_of[fresh] = f.rule
            used += cost
            acted.append(f)
        findings = acted
    flagged = np.flatnonzero(reason_of != "")
    excluded = reason_of[user] != ""
    line_reason = reason_of[user[excluded]]
    for reason in sorted(set(reason_of[flagged].tolist())):
        by_reason[reason] = {"accounts": int((reason_of[flagged] == reason).sum()),
                             "lines": int((line_reason == reason).sum())}
    return AccountScreen(findings, flagged, excluded, by_reason, skipped)


def user_codes(ds: Dataset, user_ids) -> np.ndarray:
    """The codes of the accounts of `ds` whose ids are in `user_ids` (ids it does not hold are ignored)."""
    wanted = {str(u) for u in user_ids}
    return np.flatnonzero([str(u) in wanted for u in ds.user_ids.tolist()])


def without_excluded(ds: Dataset, screen: AccountScreen) -> Dataset:
    """`ds` without the screened-out accounts' lines (same catalogue and user codes)."""
    if not screen.excluded_lines.any():
        return ds
    kept = subset_purchases(ds, ~screen.excluded_lines)
    kept.watermark = ds.watermark  # the data seen is still all of it: a refresh must not fold these lines in again
    return kept
