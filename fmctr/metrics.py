"""Ranking and calibration metrics for binary labels and predicted probabilities."""

from __future__ import annotations

import math

import numpy as np

EPS = 1e-7  # probabilities are clipped to [EPS, 1 - EPS] for logloss


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve by the rank-sum (Mann-Whitney) formula; tied scores get
    their average rank, so a tie between a positive and a negative counts one half.
    NaN when only one class is present."""
    labels = np.asarray(labels, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    n_pos = float(labels.sum())
    n_neg = float(len(labels) - n_pos)
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    # Average rank (1-based) for each run of equal scores.
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_scores)) + 1]
    ends = np.r_[starts[1:], len(scores)]
    avg_rank = (starts + ends + 1) / 2.0
    ranks = np.empty(len(scores), dtype=np.float64)
    ranks[order] = np.repeat(avg_rank, ends - starts)
    rank_sum = float(ranks[labels == 1].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def logloss(labels: np.ndarray, probs: np.ndarray) -> float:
    """Mean binary cross-entropy in nats."""
    return float(np.mean(row_logloss(labels, probs)))


def row_logloss(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Each row's binary cross-entropy in nats."""
    p = np.clip(np.asarray(probs, dtype=np.float64), EPS, 1 - EPS)
    y = np.asarray(labels, dtype=np.float64)
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))


def entropy(rate: float) -> float:
    """Logloss of always predicting the positive rate."""
    if rate <= 0 or rate >= 1:
        return 0.0
    return -(rate * math.log(rate) + (1 - rate) * math.log(1 - rate))


def reliability(labels: np.ndarray, probs: np.ndarray, bins: int = 10) -> list[dict]:
    """The calibration (reliability) table: rows sorted by predicted probability and
    cut into `bins` bins of equal size (CTRs crowd near 0, so equal-width bins would
    leave most empty); per bin its probability range, mean prediction, observed rate."""
    n = len(labels)
    if n == 0:
        return []
    order = np.argsort(probs, kind="mergesort")
    p = np.asarray(probs, np.float64)[order]
    y = np.asarray(labels, np.float64)[order]
    table = []
    for chunk in np.array_split(np.arange(n), min(bins, n)):
        lo, hi = chunk[0], chunk[-1] + 1
        table.append({
            "rows": int(hi - lo), "min_prediction": float(p[lo]), "max_prediction": float(p[hi - 1]),
            "mean_prediction": float(p[lo:hi].mean()), "observed_rate": float(y[lo:hi].mean()),
        })
    return table


def calibration_error(table: list[dict]) -> float:
    """Expected calibration error: the row-weighted mean |mean prediction - observed rate|."""
    n = sum(b["rows"] for b in table)
    return sum(b["rows"] * abs(b["mean_prediction"] - b["observed_rate"]) for b in table) / n if n else float("nan")


def roc_curve(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False and true positive rates at every distinct threshold, from (0, 0) to (1, 1)."""
    order = np.argsort(-np.asarray(probs, np.float64), kind="mergesort")
    y = np.asarray(labels, np.float64)[order]
    p = np.asarray(probs, np.float64)[order]
    last = np.r_[np.flatnonzero(np.diff(p)), len(p) - 1]  # the end of each run of equal scores
    tp = np.cumsum(y)[last]
    fp = (last + 1) - tp
    return np.r_[0.0, fp / max(fp[-1], 1)], np.r_[0.0, tp / max(tp[-1], 1)]


def evaluate(labels: np.ndarray, probs: np.ndarray) -> dict:
    """All the numbers `fmctr eval` reports. Normalized entropy is logloss divided by
    the entropy of the positive rate (below 1 beats the constant predictor);
    calibration is mean prediction / positive rate (1 is calibrated)."""
    n = int(len(labels))
    rate = float(np.mean(labels)) if n else float("nan")
    ll = logloss(labels, probs) if n else float("nan")
    mean_pred = float(np.mean(probs)) if n else float("nan")
    h = entropy(rate) if n else float("nan")
    return {
        "rows": n,
        "auc": auc(labels, probs) if n else float("nan"),
        "logloss": ll,
        "normalized_entropy": ll / h if h > 0 else float("nan"),
        "calibration": mean_pred / rate if n and rate > 0 else float("nan"),
        "positive_rate": rate,
        "mean_prediction": mean_pred,
    }


def evaluate_with_calibration(labels: np.ndarray, probs: np.ndarray, bins: int = 10) -> dict:
    """`evaluate`, plus the reliability table and the expected calibration error."""
    metrics = evaluate(labels, probs)
    table = reliability(labels, probs, bins)
    metrics["calibration_error"] = calibration_error(table)
    metrics["reliability"] = table
    return metrics
