"""A ranking-aware validation check for training from positives: score the whole
catalogue for each held-out user and measure NDCG@10 of the held-out positives,
with the user's training items excluded.

Why not the held-out logloss that ordinary training stops on: with sampled negatives
the logloss measures how well the model separates positives from one sampling
distribution (and BPR's scores are not probabilities at all), while what the model
is for is the order it puts the whole catalogue in for a user. NDCG@10 over the full
catalogue is that order, measured where it is used (the top), with no sampling noise.

Scores use the FM's split into towers (fmctr.models.towers); a user's constant does
not change that user's order, so it is left out.
"""

from __future__ import annotations

import math

import numpy as np

from fmctr.hashing.tokens import Rows
from fmctr.models.towers import item_vectors, user_side

K = 10
USER_BLOCK = 256  # users scored at once: memory is USER_BLOCK x catalogue scores


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
    """Precision, recall and NDCG at k as fmctr.ranking defines them, averaged over the
    users with something relevant; vectorised over users, for a check every epoch."""
    p, r, n = per_user_at_k(top, relevant, k)
    users = max(len(p), 1)
    return {f"precision@{k}": p.sum() / users, f"recall@{k}": r.sum() / users, f"ndcg@{k}": n.sum() / users}


def per_user_at_k(top: np.ndarray, relevant: list[np.ndarray], k: int = K) -> tuple[np.ndarray, ...]:
    """(precision, recall, NDCG) at k of each user with something relevant."""
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    out = []
    for row, rel in zip(top, relevant):
        if len(rel) == 0:
            continue
        hits = np.isin(row[:k], rel)
        out.append((hits.sum() / k, hits.sum() / len(rel),
                    (discount[: len(hits)] * hits).sum() / discount[: min(k, len(rel))].sum()))
    return tuple(np.array(column, np.float64) for column in zip(*out)) if out else (np.zeros(0),) * 3


class RankingCheck:
    """Held-out positives to validate on: `context` has one row per held-out user,
    `relevant[u]` their held-out catalogue rows and `seen[u]` their training ones."""

    def __init__(self, context: Rows, relevant: list[np.ndarray], seen: list[np.ndarray], catalogue: Rows):
        self.context, self.relevant, self.seen, self.catalogue = context, relevant, seen, catalogue
        self.rows = len(context)

    def measure(self, weights) -> dict:
        return self.measure_vectors(*self.vectors(weights))

    def vectors(self, weights) -> tuple[np.ndarray, np.ndarray]:
        """The held-out users' and the catalogue's tower vectors under `weights`."""
        return user_side(weights, self.context).vectors, item_vectors(weights, self.catalogue)

    def measure_vectors(self, users: np.ndarray, items: np.ndarray) -> dict:
        """The metrics of ranking the catalogue by users @ items.T."""
        metrics = ranking_at_k(self._tops(users, items), self.relevant)
        return {name: (value if math.isfinite(value) else 0.0) for name, value in metrics.items()}

    def ndcg_per_user(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """NDCG@K of each held-out user, ranking the catalogue by users @ items.T."""
        return per_user_at_k(self._tops(users, items), self.relevant)[2]

    def _tops(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        tops = []
        for lo in range(0, self.rows, USER_BLOCK):
            hi = min(lo + USER_BLOCK, self.rows)
            tops.append(top_k(users[lo:hi] @ items.T, self.seen[lo:hi], K))
        return np.concatenate(tops) if tops else np.zeros((0, K), np.int64)
