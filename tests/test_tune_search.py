"""fmctr tune's plan and budget, on a synthetic objective (no data, no training)."""

from __future__ import annotations

import itertools

import pytest

from fmctr.commands import search
from fmctr.commands import tune as tuning

SPACE = search.space(optimizer="adagrad", init_std=0.01, dim=8, l2_all_factors=3e-4, l2_all=0.0)
# A separable objective with its optimum off the defaults in three settings, one of
# them (the rate x30) only on the ladder, beyond the first round's values.
TARGET = {"lr_x": 30.0, "touch_l2_x": 0.0, "init_std": 0.1}


def objective(settings: dict) -> float:
    score = 1.0
    for name, want in TARGET.items():
        have = settings.get(name, SPACE[name].default)
        score -= 0.01 * (have == want) + 0.001 * (name == "lr_x" and have == 10.0)
    return score + 0.0001 * (settings.get("dim", 8) != 8)


def run_plan(limit: int, seed: int = 0) -> list[dict]:
    book = search.Book(SPACE)
    tried = []
    for settings in itertools.islice(search.plan(book, seed), limit):
        assert not book.tried(settings)
        book.record(settings, objective(settings))
        tried.append(settings)
    return tried


def test_the_first_round_moves_each_setting_alone_from_the_defaults():
    first = sum(len(s.first) for s in SPACE.values())
    tried = run_plan(2 + first)
    assert tried[0] == {}
    assert tried[1] == search.TRAIN_RIVAL_L2  # (what `fmctr train` would also try: round 0)
    assert all(len(s) == 1 for s in tried[2:])
    assert {(k, v) for s in tried[2:] for k, v in s.items()} == {(k, v) for k, s in SPACE.items() for v in s.first}
    assert {"touch_l2_x": 0.0} in tried and {"l2_all_factors": 0.0} in tried and {"dim": 0} in tried


def test_the_plan_combines_what_helped_and_steps_past_the_grid():
    book = search.Book(SPACE)
    for settings in itertools.islice(search.plan(book), 60):
        book.record(settings, objective(settings))
    # (the objective ignores --l2-all-factors: round 0's move of it ties, and where it
    # came first it stays in the best)
    assert {k: v for k, v in book.best.items() if k != "l2_all_factors"} == TARGET


def test_the_plan_is_repeatable_and_never_repeats_a_trial():
    a, b = run_plan(200, seed=3), run_plan(200, seed=3)
    assert a == b
    assert len({search.key(s) for s in a}) == len(a)


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


@pytest.mark.parametrize("budget", [20, 60])
def test_the_search_spends_the_budget_and_keeps_time_for_the_checks(monkeypatch, budget):
    clock = Clock()
    monkeypatch.setattr(tuning.time, "monotonic", clock)

    def run(number, settings, seed, check=False):
        clock.now += 1.0  # every trial takes a second
        score = objective(settings)
        return tuning.Trial(number, settings, "", {"logloss": score, "auc": 1 - score}, 1, 1.0, seed, check)

    trials, defaults, best = tuning._search(run, search.Book(SPACE), metric="logloss", seed=0, budget_s=budget,
                                            started=0.0, max_trials=None, refit=False, on_trial=None)
    checks = (tuning.SEEDS - 1) * 2  # seconds the noise checks will take
    assert budget - checks - 1 <= clock.now <= budget - checks
    assert defaults is trials[0] and best.score("logloss") == min(t.score("logloss") for t in trials)
