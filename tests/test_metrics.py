"""Metrics against cases computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fmctr.metrics import auc, evaluate, logloss


def test_auc_perfect_and_reversed():
    assert auc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert auc([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1]) == 0.0


def test_auc_counts_ties_as_half():
    # Pairs (pos, neg): (0.5 vs 0.5) tie = 1/2, (0.5 vs 0.1) = 1, (0.9 vs 0.5) = 1, (0.9 vs 0.1) = 1.
    assert auc([1, 0, 1, 0], [0.5, 0.5, 0.9, 0.1]) == pytest.approx(3.5 / 4)
    assert auc([1, 0, 1, 0], [0.3, 0.3, 0.3, 0.3]) == 0.5


def test_auc_hand_computed():
    # 3 positives, 2 negatives; pairs won: 0.7>{0.2,0.6} 2, 0.4>{0.2} 1, 0.9>{0.2,0.6} 2 -> 5/6
    assert auc([1, 0, 1, 1, 0], [0.7, 0.2, 0.4, 0.9, 0.6]) == pytest.approx(5 / 6)


def test_auc_one_class_is_nan():
    assert math.isnan(auc([1, 1], [0.2, 0.3]))


def test_logloss_hand_computed():
    expected = -(math.log(0.8) + math.log(0.6)) / 2
    assert logloss([1, 0], [0.8, 0.4]) == pytest.approx(expected)


def test_evaluate_reports_normalized_entropy_and_calibration():
    labels = np.array([1, 0, 0, 0])
    m = evaluate(labels, np.full(4, 0.25))
    assert m["rows"] == 4 and m["positive_rate"] == 0.25
    assert m["normalized_entropy"] == pytest.approx(1.0)  # the constant predictor
    assert m["calibration"] == pytest.approx(1.0)
    assert evaluate(labels, np.full(4, 0.5))["calibration"] == pytest.approx(2.0)


def test_reliability_table_bins_and_calibration_error():
    from fmctr.metrics import calibration_error, reliability

    rng = np.random.default_rng(0)
    p = rng.uniform(0, 1, 20_000)
    y = (rng.uniform(0, 1, 20_000) < p).astype(float)
    table = reliability(y, p, bins=10)
    assert [b["rows"] for b in table] == [2_000] * 10
    assert all(a["max_prediction"] <= b["min_prediction"] for a, b in zip(table, table[1:]))
    assert sum(b["rows"] * b["observed_rate"] for b in table) == y.sum()
    assert calibration_error(table) < 0.02  # calibrated by construction
    assert calibration_error(reliability(y, p / 2, bins=10)) > 0.2  # halved predictions are not


def test_roc_curve_area_is_the_auc():
    from fmctr.metrics import roc_curve

    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 3_000)
    s = np.round(y * 0.3 + rng.normal(0, 1, 3_000), 1)  # with ties
    fpr, tpr = roc_curve(y, s)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0, 0, 1, 1)
    assert np.trapezoid(tpr, fpr) == pytest.approx(auc(y, s), abs=1e-12)
