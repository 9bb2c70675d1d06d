"""EGES: Enhanced Graph Embedding with Side information (Wang et al., KDD 2018).

Every item v has n+1 embeddings: its own id embedding W^0_v and one
embedding per side feature (category, brand, price tier, declared extras),
looked up in tables shared by all items with that feature value. The item's
vector is an attention-weighted sum

    H_v = sum_j softmax(a_v)_j W^j_v            (paper eq. 6)

with per-item attention logits a_v. Training is skip-gram with negative
sampling on random walks over the item graph: H_center is scored against a
separate context ("output") table, as in word2vec and the paper's Z.

One module covers the paper's three variants (`mode`):

* "bge":  id embedding only (DeepWalk on the weighted graph);
* "ges":  plain average of the id and side-feature embeddings;
* "eges": the attention-weighted sum above.

Side-feature row 0 means "missing / unknown": it stays all zeros and is left
out of every average (the softmax runs over the features an item has), so a
missing brand neither helps nor hurts. A brand-new item (cold start) gets the
plain average of its side-feature embeddings (paper section 2.4): that and the
attention softmax of a trained model are `recsys/vectors.py`, shared with
serving; this module is the training side only.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from recsys.vectors import PRICE_TIER, price_tier_codes, price_tier_edges

MODES = ("bge", "ges", "eges")
# --------------------------------------------------------------------------- item features
@dataclass
class ItemFeatures:
    """The side features of every item as one integer matrix.

    codes[:, j] indexes table j (0 = missing); names/values give the vocab;
    price_edges are the tier edges used for the "price_tier" column.
    """

    names: list[str]
    values: list[list[str]]
    codes: np.ndarray  # int64, (n_items, n_features)
    price_edges: np.ndarray

    @property
    def cardinalities(self) -> list[int]:
        return [len(v) for v in self.values]


def item_features(ds, n_price_tiers: int = 10) -> ItemFeatures:
    """Category, brand, price tier and declared extras of a Dataset.

    Features that are missing for every item (e.g. no brand column) are left
    out: a table of one all-zero row could never contribute anything.
    """
    edges = price_tier_edges(ds.price, n_price_tiers)
    tiers = price_tier_codes(ds.price, edges)
    tier_values = ["<missing>"] + [f"tier{i}" for i in range(1, len(edges) + 2)]
    columns = [(ds.category.name, ds.category.values, ds.category.codes),
               (ds.brand.name, ds.brand.values, ds.brand.codes),
               (PRICE_TIER, tier_values, tiers),
               *[(sf.name, sf.values, sf.codes) for sf in ds.extra_features]]
    kept = [(n, list(v), np.asarray(c, dtype=np.int64)) for n, v, c in columns if np.any(np.asarray(c) > 0)]
    codes = (np.stack([c for _, _, c in kept], axis=1) if kept
             else np.zeros((ds.n_items, 0), dtype=np.int64))
    return ItemFeatures(names=[n for n, _, _ in kept], values=[v for _, v, _ in kept],
                        codes=codes, price_edges=edges)


# --------------------------------------------------------------------------- the module
def aggregate(components: Tensor, logits: Tensor, present: Tensor) -> tuple[Tensor, Tensor]:
    """H = sum_j softmax(logits)_j * components_j over present components.

    components (B, J, d), logits (B, J), present (B, J) bool -> (H (B, d), weights (B, J)).
    Rows with nothing present get weights 0 and H = 0.
    """
    masked = logits.masked_fill(~present, float("-inf"))
    weights = torch.softmax(masked, dim=1)
    weights = torch.nan_to_num(weights, nan=0.0)  # all -inf rows -> 0
    return (weights.unsqueeze(-1) * components).sum(dim=1), weights


class EGES(nn.Module):
    """Item id + side-feature embeddings, per-item attention, context table.

    feature_codes: (n_items, n_features) long, 0 = missing; cardinalities:
    rows of each side-feature table. In "bge" mode the side features are
    ignored; in "ges" the attention logits stay zero (a plain average).
    """

    def __init__(self, feature_codes: Tensor, cardinalities: list[int], dim: int = 64, mode: str = "eges"):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        feature_codes = torch.as_tensor(feature_codes, dtype=torch.long)
        if feature_codes.dim() != 2 or feature_codes.shape[1] != len(cardinalities):
            raise ValueError(f"feature_codes must be (n_items, {len(cardinalities)}), got {tuple(feature_codes.shape)}")
        if mode == "bge":
            feature_codes, cardinalities = feature_codes[:, :0], []
        n_items = feature_codes.shape[0]
        self.mode, self.dim, self.n_items = mode, dim, n_items
        self.item_embedding = nn.Embedding(n_items, dim)
        self.side_embeddings = nn.ModuleList(nn.Embedding(c, dim) for c in cardinalities)
        self.attention_logits = nn.Parameter(torch.zeros(n_items, 1 + len(cardinalities)),
                                             requires_grad=(mode == "eges"))
        self.context_embedding = nn.Embedding(n_items, dim)
        self.register_buffer("feature_codes", feature_codes.clone())
        self.reset_parameters()

    @property
    def n_features(self) -> int:
        """Side features in use (0 for bge)."""
        return len(self.side_embeddings)

    def reset_parameters(self) -> None:
        # word2vec's initialisation: small uniform inputs, zero outputs.
        bound = 0.5 / self.dim
        with torch.no_grad():
            self.item_embedding.weight.uniform_(-bound, bound)
            for table in self.side_embeddings:
                table.weight.uniform_(-bound, bound)
                table.weight[0].zero_()  # "missing" contributes nothing
            self.attention_logits.zero_()
            self.context_embedding.weight.zero_()

    def tables(self) -> list[Tensor]:
        """Weight of the id table, then each side-feature table."""
        return [self.item_embedding.weight, *(t.weight for t in self.side_embeddings)]

    def rows(self, items: Tensor) -> Tensor:
        """(B, 1 + n_features) row index into each table for these items."""
        return torch.cat([items.unsqueeze(1), self.feature_codes[items]], dim=1)

    def present(self, rows: Tensor, drop_id: Tensor | None = None) -> Tensor:
        """Which components count: the id (unless dropped) and non-missing features."""
        present = rows > 0
        present[:, 0] = True if drop_id is None else ~drop_id
        return present

    def logits(self, items: Tensor, drop_id: Tensor | None = None) -> Tensor:
        logits = self.attention_logits[items]
        if drop_id is not None:
            # An item without its id is scored like a cold item: plain average.
            logits = logits.masked_fill(drop_id.unsqueeze(1), 0.0)
        return logits

    def forward(self, items: Tensor, drop_id: Tensor | None = None) -> Tensor:
        """H_v for a batch of item ids (B,) -> (B, dim)."""
        rows = self.rows(items)
        components = torch.stack([table[rows[:, j]] for j, table in enumerate(self.tables())], dim=1)
        h, _ = aggregate(components, self.logits(items, drop_id), self.present(rows, drop_id))
        return h

    @staticmethod
    def sgns_loss(center: Tensor, positive: Tensor, negative_center: Tensor, negative: Tensor,
                  negative_weight: Tensor | None = None) -> Tensor:
        """Skip-gram negative-sampling loss, summed (the reference the fast trainer is tested against).

        center/positive (P, d): H of each pair's center and the context vector
        of its context item. negative (R, K, d): context vectors of noise items
        scored against negative_center (R, d), each row weighted by
        negative_weight (default 1; the trainer shares one row of K noise items
        among the pairs of one center and weights it by their number).
        """
        pos = -nn.functional.logsigmoid((center * positive).sum(-1)).sum()
        neg_scores = torch.bmm(negative, negative_center.unsqueeze(-1)).squeeze(-1)  # (R, K)
        neg = -nn.functional.logsigmoid(-neg_scores).sum(-1)
        if negative_weight is not None:
            neg = neg * negative_weight
        return pos + neg.sum()


class NoiseSampler:
    """Draws items from unigram^power over walk-node counts (word2vec's noise)."""

    def __init__(self, counts: np.ndarray, power: float = 0.75, device: torch.device | str = "cpu"):
        counts = np.asarray(counts, dtype=np.float64)
        if counts.ndim != 1 or len(counts) == 0 or np.any(counts < 0) or counts.sum() <= 0:
            raise ValueError("noise counts must be a non-empty 1-d array of non-negative counts with a positive sum")
        probs = np.where(counts > 0, counts ** power, 0.0)  # 0 ** 0 is 1: an item never walked is never noise
        probs /= probs.sum()
        self.probs = probs
        cdf = np.cumsum(probs)
        cdf[-1] = 1.0 + 1e-9  # a uniform draw below 1 always lands
        self.cdf = torch.as_tensor(cdf, dtype=torch.float64 if torch.device(device).type == "cpu" else torch.float32,
                                   device=device)

    def sample(self, shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
        u = torch.rand(shape, generator=generator, device=self.cdf.device, dtype=self.cdf.dtype)
        return torch.searchsorted(self.cdf, u.reshape(-1), right=True).reshape(shape)
