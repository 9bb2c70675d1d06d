"""Classic item-item reference rows a practitioner would try first: RP3beta and EASE.

Both read the same basket x item incidence as the baselines
(`baselines.basket_item_matrix`) and choose their one hyperparameter (RP3beta's
beta, EASE's lambda) on a validation tail carved from the end of the
*training* period: `prepare(train, EvalConfig(test_fraction=validation_fraction))`
then warm Recall@20 through `score_queries`, as `EGESRecommender` chooses its
scorer. The evaluation's test period is never read: `fit` only gets the
training Dataset. Cold anchors are scored from their category alone: the mean
row of the category's warm items.

What each fit chose and measured is in the recommender's `fit_stats` dict.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import scipy.linalg
import scipy.sparse as sp

from recsys.data.dataset import Dataset
from recsys.evaluation.config import EvalConfig
from recsys.evaluation.metrics import score_queries
from recsys.evaluation.protocol import prepare
from recsys.recommenders.baselines import _Fitted, basket_item_matrix, category_membership, purchase_counts


def choose_on_validation(train: Dataset, grid: Sequence[float],
                         scorer_for: Callable[[Dataset, float], Callable[[np.ndarray], np.ndarray]],
                         validation_fraction: float, validation_queries: int, session_gap_s: int,
                         seed: int, name: str) -> tuple[float, dict]:
    """The grid value with the best warm Recall@20 on the last `validation_fraction` of `train`.

    `scorer_for(part, value)` fits on `part` (train without its tail) and returns a
    score_warm function. Ties keep the earlier grid value; with no warm validation
    query the first grid value is returned.
    """
    evc = EvalConfig(test_fraction=validation_fraction, session_gap_s=session_gap_s,
                     max_queries=validation_queries, seed=seed, include_link_prediction=False)
    prep = prepare(train, evc)
    stats = {"validation_starts_at": prep.split.test_starts_at,
             "n_validation_queries": prep.warm_queries.n_queries, "recall@20": {}}
    if prep.warm_queries.n_queries == 0:
        return grid[0], stats
    for value in grid:
        fn = scorer_for(prep.split.train, value)
        metrics = score_queries(fn, prep.warm_queries, prep.columns, train.n_items, (20,), mask_anchor=True,
                                name=name)
        stats["recall@20"][value] = metrics.recall[20]
    best = max(grid, key=lambda v: (stats["recall@20"][v], -list(grid).index(v)))
    return best, stats


def _dense(rows: sp.spmatrix) -> np.ndarray:
    return np.asarray(rows.toarray(), dtype=np.float32)


def keep_top_per_row(m: sp.csr_matrix, k: int) -> sp.csr_matrix:
    """The k largest entries of each row (ties: lower column first)."""
    m = m.tocsr()
    m.sort_indices()
    lengths = np.diff(m.indptr)
    if lengths.max(initial=0) <= k:
        return m
    rows = np.repeat(np.arange(m.shape[0]), lengths)
    order = np.lexsort((m.indices, -m.data, rows))  # by row, then value descending
    rank = np.arange(m.nnz) - np.repeat(m.indptr[:-1], lengths)
    keep = order[rank < k]
    out = sp.csr_matrix((m.data[keep], (rows[keep], m.indices[keep])), shape=m.shape)
    out.sort_indices()
    return out


# --------------------------------------------------------------------------- RP3beta

def rp3beta_transitions(incidence: sp.csr_matrix) -> tuple[sp.csr_matrix, np.ndarray]:
    """Items x items P(a -> b) of a two-step random walk item -> basket -> item (alpha = 1), and
    each item's degree (baskets containing it). The diagonal (returning to a) is dropped."""
    x = incidence.tocsr().astype(np.float32)
    basket_size = np.asarray(x.sum(axis=1)).ravel()
    degree = np.asarray(x.sum(axis=0)).ravel()
    p_bi = sp.diags(np.where(basket_size > 0, 1.0 / np.maximum(basket_size, 1), 0.0).astype(np.float32)) @ x
    p_ib = sp.diags(np.where(degree > 0, 1.0 / np.maximum(degree, 1), 0.0).astype(np.float32)) @ x.T
    w = (p_ib @ p_bi).tocsr()
    w.setdiag(0)
    w.eliminate_zeros()
    return w, degree


def rp3beta_weights(transitions: sp.csr_matrix, degree: np.ndarray, beta: float,
                    neighbours: int | None = None) -> sp.csr_matrix:
    """W_ab = P(a -> b) / degree_b^beta, optionally only each item's `neighbours` best."""
    penalty = np.where(degree > 0, np.power(np.maximum(degree, 1.0), -beta), 0.0).astype(np.float32)
    w = (transitions @ sp.diags(penalty)).tocsr()
    return keep_top_per_row(w, neighbours) if neighbours else w


class RP3betaRecommender(_Fitted):
    """RP3beta (Paudel, Christoffel, Newell & Bernstein 2017), item-item, on basket incidence.

    W_ab = P(a -> b) / pop_b^beta with P(a -> b) the two-step walk item -> basket
    -> item (alpha = 1: plain transition probabilities) and pop_b = baskets
    containing b. beta is chosen from `betas` by warm Recall@20 on the last
    `validation_fraction` of the training purchases (then W is refit on all of
    them); `neighbours` keeps only each item's best N (None: all, sparse anyway).
    Cold anchors: the mean W row of their category's warm items.
    """

    name = "RP3beta"

    def __init__(self, betas: Sequence[float] = (0.0, 0.25, 0.5, 0.75), neighbours: int | None = None,
                 validation_fraction: float = 0.15, validation_queries: int = 3000, session_gap_s: int = 3600,
                 seed: int = 0):
        if not betas:
            raise ValueError("betas must not be empty")
        if neighbours is not None and neighbours < 1:
            raise ValueError(f"neighbours must be >= 1 or None, got {neighbours}")
        if not 0.0 < validation_fraction < 1.0:
            raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction}")
        self.betas, self.neighbours = tuple(float(b) for b in betas), neighbours
        self.validation_fraction, self.validation_queries = validation_fraction, validation_queries
        self.session_gap_s, self.seed = session_gap_s, seed
        self.fit_stats: dict = {}

    def _weights(self, train: Dataset, beta: float) -> sp.csr_matrix:
        transitions, degree = rp3beta_transitions(basket_item_matrix(train, self.session_gap_s))
        return rp3beta_weights(transitions, degree, beta, self.neighbours)

    def fit(self, train: Dataset) -> None:
        if len(self.betas) > 1:
            cache: dict[int, tuple] = {}

            def scorer_for(part: Dataset, beta: float):
                if id(part) not in cache:  # one transition matrix for the whole grid
                    cache.clear()
                    cache[id(part)] = rp3beta_transitions(basket_item_matrix(part, self.session_gap_s))
                w = rp3beta_weights(*cache[id(part)], beta, self.neighbours)
                return lambda anchors: _dense(w[np.asarray(anchors, np.int64)])

            self.beta, stats = choose_on_validation(train, self.betas, scorer_for, self.validation_fraction,
                                                    self.validation_queries, self.session_gap_s, self.seed,
                                                    self.name)
        else:
            self.beta, stats = self.betas[0], {}
        self.weights = self._weights(train, self.beta)
        warm = purchase_counts(train) > 0
        member = category_membership(train, items=warm)
        size = np.asarray(member.sum(axis=0)).ravel()
        mean = sp.diags(np.where(size > 0, 1.0 / np.maximum(size, 1), 0.0).astype(np.float32))
        self.category_weights = (mean @ member.T @ self.weights).tocsr()
        self.codes = train.category.codes
        self.fit_stats = {"beta": self.beta, "validation": stats, "neighbours": self.neighbours,
                          "nnz": int(self.weights.nnz)}
        self._train = train

    def score_warm(self, anchors: np.ndarray) -> np.ndarray:
        self._require_fit()
        return _dense(self.weights[self._anchors(anchors)])

    def score_cold(self, anchors: np.ndarray) -> np.ndarray:
        self._require_fit()
        return _dense(self.category_weights[self.codes[self._anchors(anchors)]])


# --------------------------------------------------------------------------- EASE

MATRICES_IN_MEMORY = 3  # the Gram matrix, its inverse in place, and one more N x N float32 while scoring/copying


def ease_items_for_budget(memory_budget_mb: float) -> int:
    """The largest N whose dense N x N float32 matrices (MATRICES_IN_MEMORY of them) fit the budget."""
    return max(1, int(np.sqrt(memory_budget_mb * 2**20 / (4 * MATRICES_IN_MEMORY))))


def gram_matrix(incidence: sp.csr_matrix, columns: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """Dense float32 X[:, columns]^T X[:, columns], built a block of columns at a time."""
    x = incidence.tocsc()[:, columns].astype(np.float32)
    xt = x.T.tocsr()
    n = len(columns)
    g = np.empty((n, n), dtype=np.float32)
    for lo in range(0, n, chunk):
        g[:, lo:lo + chunk] = (xt @ x[:, lo:lo + chunk]).toarray()
    return g


def ease_weights(gram: np.ndarray, lam: float, overwrite: bool = False) -> np.ndarray:
    """EASE (Steck 2019): B = I - P / diag(P) with P = (G + lambda I)^-1, diagonal 0.

    B_ij = -P_ij / P_jj. Float32 Cholesky inverse (LAPACK potrf/potri), in place
    when `overwrite`; the result is B.
    """
    if lam <= 0:
        raise ValueError(f"lambda must be > 0, got {lam}")
    a = np.ascontiguousarray(gram, dtype=np.float32)
    a = (a if overwrite else a.copy()).T  # symmetric: the transpose is the same matrix, in LAPACK's order
    n = a.shape[0]
    a[np.diag_indices(n)] += np.float32(lam)
    potrf, potri = scipy.linalg.lapack.get_lapack_funcs(("potrf", "potri"), (a,))
    c, info = potrf(a, lower=False, overwrite_a=True, clean=False)
    if info != 0:
        raise np.linalg.LinAlgError(f"EASE: Gram matrix + lambda I is not positive definite (potrf info {info})")
    p, info = potri(c, lower=False, overwrite_c=True)
    if info != 0:
        raise np.linalg.LinAlgError(f"EASE: inverse failed (potri info {info})")
    block = 1024
    for lo in range(0, n, block):  # the upper triangle holds P: mirror it into the lower one
        hi = min(lo + block, n)
        p[lo:hi, :lo] = p[:lo, lo:hi].T
        diag = p[lo:hi, lo:hi]
        low = np.tril_indices(hi - lo, -1)
        diag[low] = diag.T[low]
    p = p.T  # P is symmetric: back to C order (fast row reads), no copy
    d = p.diagonal().copy()
    p /= -d[None, :]
    p[np.diag_indices(n)] = 0.0
    return p


class _EaseScores:
    """Item-item scores of an EASE matrix on a subset of the catalogue.

    Items outside the subset (and every item for an anchor outside it) get no
    EASE score: they rank by training popularity below every EASE score of the row.
    """

    def __init__(self, weights: np.ndarray, columns: np.ndarray, popularity: np.ndarray):
        self.weights, self.columns = weights, columns
        self.position = np.full(len(popularity), -1, dtype=np.int64)
        self.position[columns] = np.arange(len(columns))
        top = float(popularity.max()) if len(popularity) else 1.0
        self.fallback = (np.asarray(popularity, np.float64) / max(top, 1.0)).astype(np.float32)  # in [0, 1]

    def rows(self, ease_rows: np.ndarray | None, n: int) -> np.ndarray:
        """Score rows from `ease_rows` ([n, len(columns)]; a row of NaN = no EASE row)."""
        out = np.broadcast_to(self.fallback, (n, len(self.fallback))).copy()
        if ease_rows is None or not len(self.columns):
            return out
        has = ~np.isnan(ease_rows[:, 0])
        if has.any():
            rows = ease_rows[has]
            floor = rows.min(axis=1, keepdims=True) - np.float32(2.0)  # popularity part lies in [floor, floor + 1]
            sub = out[has] + floor
            sub[:, self.columns] = rows
            out[has] = sub
        return out

    def warm(self, anchors: np.ndarray) -> np.ndarray:
        pos = self.position[anchors]
        ease_rows = np.full((len(anchors), len(self.columns)), np.nan, dtype=np.float32)
        inside = pos >= 0
        ease_rows[inside] = self.weights[pos[inside]]
        return self.rows(ease_rows, len(anchors))


class EASERecommender(_Fitted):
    """EASE (Steck, WWW 2019): B = I - P / diag(P), P = (X^T X + lambda I)^-1, X = basket incidence.

    The dense inverse is N x N: EASE runs on the N most bought warm items, N =
    min(warm items, `max_items`, the largest N whose 3 float32 N x N matrices
    fit `memory_budget_mb`; 2,600 MB -> N = 15,072, about 0.9 GB per matrix).
    Items outside get no EASE score (they rank by popularity below every EASE
    score; an anchor outside ranks everything by popularity). lambda is chosen
    from `lambdas` by warm Recall@20 on the last `validation_fraction` of the
    training purchases (same N rule), then B is refit on all of them. The grid
    reaches 1e5 because Ta-Feng and Online Retail both chose 1e4, the top of a
    grid ending there; with 1e5 in it Ta-Feng keeps 1e4 and Online Retail takes
    1e5 (a very large lambda tends to raw co-occurrence counts, the
    bought-together row). Cold
    anchors: the mean B row of their category's items inside the N.
    `fit_stats` records N, the matrix size in MB, lambda and the validation recalls.
    """

    name = "EASE"

    def __init__(self, lambdas: Sequence[float] = (100.0, 1000.0, 10000.0, 100000.0),
                 memory_budget_mb: float = 2600.0, max_items: int | None = None,
                 validation_fraction: float = 0.15, validation_queries: int = 3000,
                 session_gap_s: int = 3600, seed: int = 0):
        if not lambdas or min(lambdas) <= 0:
            raise ValueError(f"lambdas must be positive, got {lambdas}")
        if memory_budget_mb <= 0:
            raise ValueError(f"memory_budget_mb must be > 0, got {memory_budget_mb}")
        if not 0.0 < validation_fraction < 1.0:
            raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction}")
        self.lambdas = tuple(float(x) for x in lambdas)
        self.memory_budget_mb, self.max_items = memory_budget_mb, max_items
        self.validation_fraction, self.validation_queries = validation_fraction, validation_queries
        self.session_gap_s, self.seed = session_gap_s, seed
        self.fit_stats: dict = {}

    def n_items_for(self, n_warm: int) -> int:
        n = min(n_warm, ease_items_for_budget(self.memory_budget_mb))
        return n if self.max_items is None else min(n, self.max_items)

    def _columns(self, train: Dataset) -> tuple[np.ndarray, np.ndarray]:
        """(popularity, the N most bought warm items, most bought first; ties by index)."""
        popularity = purchase_counts(train)
        warm = np.flatnonzero(popularity > 0)
        order = warm[np.lexsort((warm, -popularity[warm]))]
        return popularity, np.sort(order[:self.n_items_for(len(warm))])

    def _model(self, train: Dataset, lam: float, gram_cache: dict | None = None) -> _EaseScores:
        popularity, columns = self._columns(train)
        if gram_cache is not None and gram_cache.get("part") is train:
            gram = gram_cache["gram"]
        else:
            gram = gram_matrix(basket_item_matrix(train, self.session_gap_s), columns)
            if gram_cache is not None:
                gram_cache.update(part=train, gram=gram)
        weights = ease_weights(gram, lam, overwrite=gram_cache is None)
        return _EaseScores(weights, columns, popularity)

    def fit(self, train: Dataset) -> None:
        if len(self.lambdas) > 1:
            cache: dict = {}
            self.lam, stats = choose_on_validation(
                train, self.lambdas, lambda part, lam: self._model(part, lam, cache).warm,
                self.validation_fraction, self.validation_queries, self.session_gap_s, self.seed, self.name)
            cache.clear()
        else:
            self.lam, stats = self.lambdas[0], {}
        self.model = self._model(train, self.lam)
        codes = train.category.codes
        cols = self.model.columns
        n_cat = train.category.cardinality
        member = sp.csr_matrix((np.ones(len(cols), np.float32), (codes[cols].astype(np.int64), np.arange(len(cols)))),
                               shape=(n_cat, len(cols)))
        size = np.asarray(member.sum(axis=1)).ravel()
        size[0] = 0  # a missing category (code 0) has no category row
        mean = sp.diags(np.where(size > 0, 1.0 / np.maximum(size, 1), 0.0).astype(np.float32)) @ member
        self.category_rows = np.asarray(mean @ self.model.weights, dtype=np.float32)
        self.category_rows[size == 0] = np.nan
        self.codes = codes
        n = len(cols)
        self.fit_stats = {"lambda": self.lam, "n_ease_items": n,
                          "n_warm_items": int((purchase_counts(train) > 0).sum()),
                          "matrix_mb": n * n * 4 / 2**20, "memory_budget_mb": self.memory_budget_mb,
                          "validation": stats}
        self._train = train

    def score_warm(self, anchors: np.ndarray) -> np.ndarray:
        self._require_fit()
        return self.model.warm(self._anchors(anchors))

    def score_cold(self, anchors: np.ndarray) -> np.ndarray:
        self._require_fit()
        anchors = self._anchors(anchors)
        return self.model.rows(self.category_rows[self.codes[anchors]], len(anchors))
