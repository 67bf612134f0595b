"""Ranking metrics against cases computed by hand (fmctr.ranking states the definitions)."""

from __future__ import annotations

import math

import pytest

from fmctr.ranking import (auc_from_counts, average_precision_at_k, hit_at_k, mean_ranking_metrics, ndcg_at_k,
                           precision_at_k, recall_at_k, reciprocal_rank_at_k)

TOP = ["a", "b", "c", "d", "e"]
RELEVANT = {"b", "d", "x"}  # x is relevant but not in the top 5


def test_one_user_by_hand():
    assert precision_at_k(TOP, RELEVANT, 5) == pytest.approx(2 / 5)
    assert recall_at_k(TOP, RELEVANT, 5) == pytest.approx(2 / 3)
    dcg = 1 / math.log2(3) + 1 / math.log2(5)
    idcg = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert ndcg_at_k(TOP, RELEVANT, 5) == pytest.approx(dcg / idcg)
    assert average_precision_at_k(TOP, RELEVANT, 5) == pytest.approx((1 / 2 + 2 / 4) / 3)
    assert hit_at_k(TOP, RELEVANT, 5) == 1.0
    assert reciprocal_rank_at_k(TOP, RELEVANT, 5) == 0.5


def test_k_cuts_the_list():
    assert precision_at_k(TOP, RELEVANT, 1) == 0.0
    assert hit_at_k(TOP, RELEVANT, 1) == 0.0
    assert reciprocal_rank_at_k(TOP, RELEVANT, 1) == 0.0
    assert ndcg_at_k(TOP, RELEVANT, 2) == pytest.approx((1 / math.log2(3)) / (1 + 1 / math.log2(3)))
    # a list shorter than K (a small catalogue) still divides precision by K
    assert precision_at_k(["b"], RELEVANT, 10) == pytest.approx(0.1)


def test_auc_by_hand():
    # candidates ranked a b c d e x; relevant b, d, x; negatives a, c, e:
    # b is below 1 negative, d below 2, x below 3 -> 6 of 9 pairs wrong
    assert auc_from_counts([1, 2, 3], [0, 0, 0], 3) == pytest.approx(1 / 3)
    assert auc_from_counts([0], [2], 4) == pytest.approx(0.75)  # ties count one half
    assert math.isnan(auc_from_counts([0], [0], 0))


def test_means_over_users_with_relevant_items():
    tops = [TOP, ["p", "q"], ["z"]]
    relevants = [RELEVANT, {"q"}, set()]  # the third user has nothing held out: not counted
    m = mean_ranking_metrics(tops, relevants, 2, first_ranks=[2, 2, 1], aucs=[1 / 3, 1.0, math.nan])
    assert m["users"] == 2 and m["k"] == 2
    assert m["precision"] == pytest.approx((1 / 2 + 1 / 2) / 2)
    assert m["recall"] == pytest.approx((1 / 3 + 1) / 2)
    assert m["map"] == pytest.approx(((1 / 2) / 3 + 1 / 2) / 2)
    assert m["hit_rate"] == 1.0
    assert m["mrr"] == pytest.approx(0.5)
    assert m["auc"] == pytest.approx((1 / 3 + 1) / 2)
    without = mean_ranking_metrics(tops, relevants, 2)
    assert "auc" not in without and without["mrr"] == pytest.approx(0.5)
