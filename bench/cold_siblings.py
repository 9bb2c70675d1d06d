"""Validation-only experiment: a new item's query vector from its warm siblings (same category and brand, or
category) instead of (or mixed with) the mean of its side-feature embeddings (docs/evaluation.md).

    OMP_NUM_THREADS=1 python bench/cold_siblings.py tafeng     # or synthetic-a, synthetic-b, online-retail
"""
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1])); sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np
from evaluate_datasets import dataset
from recsys.evaluation.split import split_chronological
from recsys.evaluation.metrics import score_queries
from recsys.embed.train import TrainConfig
from recsys.recommenders.eges import EGESRecommender, ScorerConfig

name = sys.argv[1]
ds = dataset(name)
train = split_chronological(ds, 0.15).train
eges = EGESRecommender(TrainConfig(num_threads=1), ScorerConfig())
t = time.time()
eges.fit(train)  # chooses scorers on the validation tail
prep, part = eges.validation_state(train)
print(name, "fit", round(time.time() - t), "s; cold scorer", eges.cold_scorer, "cold queries", prep.cold_queries.n_queries, flush=True)
vtrain = prep.split.train
log_pop = np.log1p(prep.popularity).astype(np.float32)
codes = part.item_feature_codes
cold = eges.cold_scorer
items = cold.item_matrix(part.item_vectors, part.context_vectors, log_pop)
warm = np.asarray(part.item_counts) > 0
base = part.cold_vectors_from_codes(codes)  # every item's side-feature vector
H = part.item_vectors
cat = vtrain.category.codes.astype(np.int64); brand = vtrain.brand.codes.astype(np.int64)

def group_means(key, min_n):
    uniq, inv = np.unique(key, return_inverse=True)
    sums = np.zeros((len(uniq), H.shape[1])); np.add.at(sums, inv, np.where(warm[:, None], H, 0))
    n_warm = np.bincount(inv, weights=warm.astype(float), minlength=len(uniq))
    means = sums / np.maximum(n_warm, 1)[:, None]
    ok = (n_warm >= min_n)[inv] & (key >= 0)
    return means[inv].astype(np.float32), ok

cb, cb_ok = group_means(cat * (brand.max() + 1) + brand, 2)
cb_ok &= brand > 0
c_, c_ok = group_means(cat, 2)
c_ok &= cat > 0
def run(vec_of):
    fn = lambda a: cold.query_matrix(vec_of(a)) @ items.T
    m = score_queries(fn, prep.cold_queries, prep.columns, vtrain.n_items, (20,), mask_anchor=False)
    return m.recall[20]
res = {"eges side mean": run(lambda a: base[a])}
sib = lambda a: np.where(cb_ok[a][:, None], cb[a], np.where(c_ok[a][:, None], c_[a], base[a]))
res["siblings (cat+brand > cat > side)"] = run(sib)
res["siblings (cat > side)"] = run(lambda a: np.where(c_ok[a][:, None], c_[a], base[a]))
for alpha in (0.25, 0.5, 0.75):
    res[f"mix {alpha} siblings"] = run(lambda a, al=alpha: (al * sib(a) + (1 - al) * base[a]).astype(np.float32))
for k, v in res.items(): print(f"  {k:40s} {v:.4f}", flush=True)
