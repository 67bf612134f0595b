"""Ranking metrics for recall: how well each user's top-K list finds the items held out
for that user, over the full catalogue (no sampled negatives).

Per user u: `top` is the ranked list (best first; items the user is known to have
already seen are left out of it before, as `--exclude` does) and `relevant` the set of
held-out items. With hits(K) = |top[:K] ∩ relevant|:

- precision@K = hits(K) / K                       (LightFM precision_at_k; Microsoft
                                                   recommenders precision_at_k)
- recall@K    = hits(K) / |relevant|              (LightFM recall_at_k; recommenders)
- NDCG@K      = DCG / IDCG with binary gains: DCG = sum over hit positions i (1-based)
                of 1/log2(i+1), IDCG the same for min(K, |relevant|) hits at the top
                (recommenders ndcg_at_k)
- MAP@K       = sum over hit positions i of (hits(i) / i), divided by |relevant|
                (recommenders' map_at_k as in its published benchmark table: divided
                by every relevant item, not by min(K, |relevant|))
- hit rate@K  = 1 if hits(K) > 0 else 0
- MRR         = 1 / rank of the best-ranked relevant item in the whole ranking of the
                candidates (LightFM reciprocal_rank); from a top-K list alone, 0 when
                no relevant item is in it (MRR@K)
- AUC         = the chance that a random relevant item outranks a random candidate
                that is not relevant, ties counting one half (LightFM auc_score, with
                the training items excluded from both sides)

Each is averaged over the users with at least one relevant item.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

NAMES = ("precision", "recall", "ndcg", "map", "mrr", "hit_rate", "auc")


def _hits(top: Sequence, relevant: set, k: int) -> np.ndarray:
    """1.0 at each of the first K positions whose item is relevant."""
    return np.array([1.0 if item in relevant else 0.0 for item in list(top)[:k]])


def precision_at_k(top: Sequence, relevant: set, k: int) -> float:
    return float(_hits(top, relevant, k).sum()) / k


def recall_at_k(top: Sequence, relevant: set, k: int) -> float:
    return float(_hits(top, relevant, k).sum()) / len(relevant) if relevant else 0.0


def ndcg_at_k(top: Sequence, relevant: set, k: int) -> float:
    hits = _hits(top, relevant, k)
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    ideal = discounts[: min(k, len(relevant))].sum()
    return float((hits * discounts[: len(hits)]).sum() / ideal) if ideal else 0.0


def average_precision_at_k(top: Sequence, relevant: set, k: int) -> float:
    hits = _hits(top, relevant, k)
    if not relevant or not hits.any():
        return 0.0
    precision_at = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float((precision_at * hits).sum() / len(relevant))


def hit_at_k(top: Sequence, relevant: set, k: int) -> float:
    return 1.0 if _hits(top, relevant, k).any() else 0.0


def reciprocal_rank_at_k(top: Sequence, relevant: set, k: int) -> float:
    """1 / the position of the first relevant item of the top K; 0 if none is there."""
    hits = np.flatnonzero(_hits(top, relevant, k))
    return 1.0 / (hits[0] + 1) if len(hits) else 0.0


def auc_from_counts(above: np.ndarray, ties: np.ndarray, negatives: int) -> float:
    """A user's AUC from, for each relevant item, the number of non-relevant candidates
    scored above it and level with it; `negatives`: how many non-relevant candidates
    there are. NaN when there are none."""
    above, ties = np.asarray(above, np.float64), np.asarray(ties, np.float64)
    if negatives == 0 or len(above) == 0:
        return math.nan
    return 1.0 - float(above.sum() + 0.5 * ties.sum()) / (len(above) * negatives)


def mean_ranking_metrics(tops: Sequence[Sequence], relevants: Sequence[set], k: int,
                         first_ranks: Sequence[int] | None = None, aucs: Sequence[float] | None = None) -> dict:
    """Every metric of the module docstring, averaged over the users with a relevant
    item. `first_ranks` (1-based rank of each user's best-ranked relevant item among
    all candidates) gives MRR over the whole ranking, else MRR@K; `aucs` (per user,
    from auc_from_counts) gives AUC, else it is left out. Also `users`: how many
    users were averaged over, and `k`."""
    if k < 1:
        raise ValueError(f"K must be at least 1, got {k}")
    sums = dict.fromkeys(NAMES, 0.0)
    users = auc_users = 0
    for n, (top, relevant) in enumerate(zip(tops, relevants)):
        if not relevant:
            continue
        users += 1
        sums["precision"] += precision_at_k(top, relevant, k)
        sums["recall"] += recall_at_k(top, relevant, k)
        sums["ndcg"] += ndcg_at_k(top, relevant, k)
        sums["map"] += average_precision_at_k(top, relevant, k)
        sums["hit_rate"] += hit_at_k(top, relevant, k)
        sums["mrr"] += 1.0 / first_ranks[n] if first_ranks is not None else reciprocal_rank_at_k(top, relevant, k)
        if aucs is not None and not math.isnan(aucs[n]):
            sums["auc"] += aucs[n]
            auc_users += 1
    out = {name: (sums[name] / users if users else math.nan) for name in NAMES}
    out["auc"] = sums["auc"] / auc_users if auc_users else math.nan
    if aucs is None:
        del out["auc"]
    return {**out, "users": users, "k": k}
