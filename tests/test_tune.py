"""fmctr tune: a search that spends its budget, repeatable trials, a noise check
against the defaults, and a model never worse than the defaults' on validation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import MOVIES_FLAGS, MOVIES_TEST, MOVIES_TRAIN, invoke
from fmctr.models.modelfile import load

SMALL = [*MOVIES_FLAGS, "--bits", "14"]  # a small hash space: a trial takes about a second


def tune(tmp_path, *args, name="best.fm"):
    out = tmp_path / name
    result = invoke("tune", MOVIES_TRAIN, *SMALL, "-o", out, "--json", *args)
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout), out, result.stderr


def test_tune_writes_the_winner_with_the_options_that_give_it(tmp_path):
    outcome, out, stderr = tune(tmp_path, "--valid", MOVIES_TEST, "--budget", "600", "--max-trials", "4")
    trials = outcome["trials"]
    search = [t for t in trials if not t["check"]]
    assert search[0]["options"] == "(defaults)"
    # train's rival L2 first (both its options), then the first round's single moves
    assert [t["options"].split()[0] for t in search[1:]] == ["--l2-all-factors", "--lr", "--l2"]
    winner = [t for t in trials if t["best"]]
    assert len(winner) == 1 and winner[0]["trial"] == outcome["winner"]
    model = load(out)
    assert model.training["tune"]["options"] == outcome["train_options"]
    assert model.training["valid_metrics"]["auc"] == winner[0]["valid"]["auc"]
    assert "trials" in stderr and f"wrote {out}" in stderr and outcome["summary"] in stderr
    # The written model scores the validation data as the trial did.
    metrics = json.loads(invoke("eval", MOVIES_TEST, "-m", out, "--json").stdout)
    assert abs(metrics["auc"] - winner[0]["valid"]["auc"]) < 1e-9


def test_tune_is_never_worse_than_the_defaults_and_checks_the_noise(tmp_path):
    outcome, _, _ = tune(tmp_path, "--valid", MOVIES_TEST, "--max-trials", "4")
    trials = {t["trial"]: t for t in outcome["trials"]}
    defaults, winner = trials[1], trials[outcome["winner"]]
    assert defaults["options"] == "(defaults)"
    assert winner["valid"]["logloss"] <= defaults["valid"]["logloss"]
    # the defaults and the search's best each ran with two more seeds
    checks = [t for t in outcome["trials"] if t["check"]]
    assert sorted(t["seed"] for t in checks) == [1, 1, 2, 2]
    best = trials[outcome["best_trial"]]
    assert {t["options"].removesuffix(f" --seed {t['seed']}") for t in checks} == {"(defaults)", best["options"]}
    assert outcome["beat_defaults"] == (outcome["gain"] > outcome["noise"])
    if not outcome["beat_defaults"]:
        assert outcome["winner"] == 1 and "nothing beat the defaults by more than the noise" in outcome["summary"]


def test_without_validation_data_the_checks_hold_out_rows_the_search_did_not_choose_on(tmp_path):
    """The best was chosen for its score on the search's held-out rows: the checks score
    it against the defaults on the shares of rows before them, and it must win on each."""
    outcome, _, stderr = tune(tmp_path, "--max-trials", "4")
    checks = [t for t in outcome["trials"] if t["check"]]
    if outcome["best_trial"] == 1:  # (no trial beat the defaults: no checks)
        assert not checks and outcome["gains"] is None
        return
    assert sorted((t["seed"], t["block"]) for t in checks) == [(1, 1), (1, 1), (2, 2), (2, 2)]
    assert all(t["block"] == 0 for t in outcome["trials"] if not t["check"])
    assert outcome["metric"] == "logloss"  # (tune's default)
    runs = {(t["options"].removesuffix(f" --seed {t['seed']}"), t["block"]): t["valid"]["logloss"]
            for t in outcome["trials"] if t["trial"] in (1, outcome["best_trial"]) or t["check"]}
    best = [t for t in outcome["trials"] if t["trial"] == outcome["best_trial"]][0]["options"]
    gains = [runs[("(defaults)", b)] - runs[(best, b)] for b in (0, 1, 2)]
    assert outcome["gains"] == pytest.approx(gains)
    assert outcome["beat_defaults"] == all(g > 0 for g in gains) and outcome["noise"] is None
    said = "won: valid logloss better than the defaults on each held-out block" if outcome["beat_defaults"] else \
        "nothing beat the defaults on every held-out block"
    assert said in outcome["summary"] and "(held-out block 2)" in stderr


def test_the_checks_blocks_lie_before_the_searchs_held_out_rows(tmp_path):
    from fmctr.commands.tune import _blocks
    from fmctr.datasets.batches import DatasetRows
    from fmctr.datasets.hashed import open_hashed

    hashed = tmp_path / "h"
    assert invoke("preprocess", MOVIES_TRAIN, *SMALL, "-o", hashed).exit_code == 0
    rows = DatasetRows(open_hashed(hashed))
    labels = rows.labels()
    for block, (lo, hi) in enumerate([(3750, 5000), (2500, 3750), (1250, 2500)]):
        fit, held = rows.split_block(0.25, block)
        assert (fit.rows, held.rows) == (3750, 1250)
        assert (held.labels() == labels[lo:hi]).all()
        assert (fit.labels() == np.concatenate([labels[:lo], labels[hi:]])).all()
    assert _blocks(rows, 0.25) == [1, 2]


def test_tune_is_repeatable(tmp_path):
    """Every trial trains on one thread with the same seed: two runs agree exactly."""
    a, _, _ = tune(tmp_path, "--valid", MOVIES_TEST, "--max-trials", "3", name="a.fm")
    b, _, _ = tune(tmp_path, "--valid", MOVIES_TEST, "--max-trials", "3", name="b.fm")
    assert [(t["options"], t["valid"]) for t in a["trials"]] == [(t["options"], t["valid"]) for t in b["trials"]]
    assert a["winner"] == b["winner"]


def test_more_trials_with_more_budget(tmp_path):
    few, _, _ = tune(tmp_path, "--valid", MOVIES_TEST, "--budget", "0.001", name="few.fm")
    assert [t["options"] for t in few["trials"]] == ["(defaults)"]  # the defaults always run
    more, _, _ = tune(tmp_path, "--valid", MOVIES_TEST, "--budget", "600", "--max-trials", "3", name="more.fm")
    assert len([t for t in more["trials"] if not t["check"]]) == 3


def test_tune_without_validation_data_holds_out_the_last_rows_and_refits(tmp_path):
    outcome, out, stderr = tune(tmp_path, "--max-trials", "2")
    model = load(out)
    assert model.training["rows"] == 5000  # the final model saw every row
    chosen = model.training["selection"]
    assert chosen["holdout_rows"] == 1250  # as train holds out: 10%, at least 2,000 rows, at most a quarter
    winner = [t for t in outcome["trials"] if t["best"]][0]
    assert chosen["valid_metrics"] == winner["valid"]  # the winner's trial, repeated exactly
    line = stderr.split("fmctr train INPUT")[1].splitlines()[0]
    assert "--valid" not in line and outcome["train_options"] in line
    # `fmctr train` with the options it printed makes the same model.
    again = tmp_path / "again.fm"
    result = invoke("train", MOVIES_TRAIN, *SMALL, *outcome["train_options"].split(), "-o", again, "-q")
    assert result.exit_code == 0, result.stderr
    scored = [json.loads(invoke("eval", MOVIES_TEST, "-m", m, "--json").stdout) for m in (out, again)]
    assert scored[0]["auc"] == scored[1]["auc"] and scored[0]["logloss"] == scored[1]["logloss"]


def test_tune_needs_a_positive_budget(tmp_path):
    result = invoke("tune", MOVIES_TRAIN, "--valid", MOVIES_TEST, *SMALL, "-o", tmp_path / "b.fm", "--budget", "0")
    assert (result.exit_code, result.stderr) == (1, "error: --budget must be a positive number of seconds, got 0.0\n")
    assert not (tmp_path / "b.fm").exists()
    result = invoke("tune", MOVIES_TRAIN, *SMALL, "-o", tmp_path / "b.fm", "--max-trials", "0")
    assert (result.exit_code, result.stderr) == (1, "error: --max-trials must be at least 1, got 0\n")
