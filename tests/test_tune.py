"""fmctr tune: a search that spends its budget, repeatable trials, a noise check
against the defaults, and a model never worse than the defaults' on validation."""

from __future__ import annotations

import json

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
