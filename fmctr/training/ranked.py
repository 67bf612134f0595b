"""A ranking-aware validation check for training from positives: score the whole
catalogue for each held-out user and measure NDCG@10 of the held-out positives,
with the user's training items excluded.

Why not the held-out logloss that ordinary training stops on: with sampled negatives
the logloss measures how well the model separates positives from one sampling
distribution (and BPR's scores are not probabilities at all), while what the model
is for is the order it puts the whole catalogue in for a user. NDCG@10 over the full
catalogue is that order, measured where it is used (the top), with no sampling noise.

Scores use the FM's split: score(u, i) = user terms + item terms(i) + <s_u, s_i>,
with s the summed factors (x v) of a side; the user terms do not change a user's order.
"""

from __future__ import annotations

import math

import numpy as np

from fmctr.hashing.tokens import Rows

K = 10
USER_BLOCK = 256  # users scored at once: memory is USER_BLOCK x catalogue scores


def side_sums(factors: np.ndarray, rows: Rows) -> np.ndarray:
    """Each row's sum_i v_i x_i: (rows, k)."""
    n, k = len(rows), factors.shape[1]
    weighted = factors[rows.indices].astype(np.float64) * rows.values[:, None]
    out = np.zeros((n, k), np.float64)
    lengths = np.diff(rows.offsets)
    np.add.at(out, np.repeat(np.arange(n), lengths), weighted)
    return out


def item_terms(weights, rows: Rows) -> np.ndarray:
    """Each catalogue row's own part of the score: its linear terms and the pairs among
    its features."""
    n = len(rows)
    owner = np.repeat(np.arange(n), np.diff(rows.offsets))
    linear = np.bincount(owner, weights=weights.linear[rows.indices] * rows.values, minlength=n)
    s = side_sums(weights.factors, rows)
    squares = (weights.factors[rows.indices].astype(np.float64) * rows.values[:, None]) ** 2
    square_then_sum = np.bincount(owner, weights=squares.sum(1), minlength=n)
    return linear + 0.5 * ((s * s).sum(1) - square_then_sum)


def top_k(scores: np.ndarray, exclude: list[np.ndarray], k: int) -> np.ndarray:
    """Each row's k best columns, best first, with its `exclude` columns left out."""
    scores = scores.copy()
    for u, seen in enumerate(exclude):
        scores[u, seen] = -np.inf
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, 1), axis=1, kind="stable")
    return np.take_along_axis(part, order, 1)


def ranking_at_k(top: np.ndarray, relevant: list[np.ndarray], k: int = K) -> dict:
    """Precision, recall and NDCG at k (binary relevance, ideal DCG over min(k, |relevant|)),
    averaged over the users with something relevant."""
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    p = r = n = 0.0
    users = 0
    for row, rel in zip(top, relevant):
        if len(rel) == 0:
            continue
        hits = np.isin(row[:k], rel)
        users += 1
        p += hits.sum() / k
        r += hits.sum() / len(rel)
        n += (discount[: len(hits)] * hits).sum() / discount[: min(k, len(rel))].sum()
    users = max(users, 1)
    return {f"precision@{k}": p / users, f"recall@{k}": r / users, f"ndcg@{k}": n / users}


class RankingCheck:
    """Held-out positives to validate on: `context` has one row per held-out user,
    `relevant[u]` their held-out catalogue rows and `seen[u]` their training ones."""

    def __init__(self, context: Rows, relevant: list[np.ndarray], seen: list[np.ndarray], catalogue: Rows):
        self.context, self.relevant, self.seen, self.catalogue = context, relevant, seen, catalogue
        self.rows = len(context)

    def measure(self, weights) -> dict:
        users = side_sums(weights.factors, self.context)
        items = side_sums(weights.factors, self.catalogue)
        own = item_terms(weights, self.catalogue)
        tops = []
        for lo in range(0, self.rows, USER_BLOCK):
            hi = min(lo + USER_BLOCK, self.rows)
            tops.append(top_k(users[lo:hi] @ items.T + own, self.seen[lo:hi], K))
        metrics = ranking_at_k(np.concatenate(tops) if tops else np.zeros((0, K), np.int64), self.relevant)
        return {name: (value if math.isfinite(value) else 0.0) for name, value in metrics.items()}
