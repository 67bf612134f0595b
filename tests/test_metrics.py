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
