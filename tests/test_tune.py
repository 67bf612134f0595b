"""fmctr tune: a time-boxed search that writes its best trial's model."""

from __future__ import annotations

import json

from conftest import MOVIES_FLAGS, MOVIES_TEST, MOVIES_TRAIN, invoke
from fmctr.models.modelfile import load


def test_tune_tries_settings_and_writes_the_best(tmp_path):
    out = tmp_path / "best.fm"
    result = invoke("tune", MOVIES_TRAIN, "--valid", MOVIES_TEST, *MOVIES_FLAGS, "-o", out, "--json", "--budget", "600")
    assert result.exit_code == 0, result.stderr
    trials = json.loads(result.stdout)
    assert trials[0]["options"] == "(defaults)"
    assert len(trials) >= 10  # every one-setting move ran within the budget
    assert {t["options"].split()[0] for t in trials[1:]} >= {"--dim", "--lr", "--l2-all-factors", "--l2"}
    best = [t for t in trials if t["best"]]
    assert len(best) == 1 and best[0]["valid"]["logloss"] == min(t["valid"]["logloss"] for t in trials)
    model = load(out)
    assert model.training["tune"]["options"] == best[0]["options"]
    assert model.training["valid_metrics"]["auc"] == best[0]["valid"]["auc"]
    assert "trials" in result.stderr and f"wrote {out}" in result.stderr
    # The written model scores the validation data as the trial did.
    metrics = json.loads(invoke("eval", MOVIES_TEST, "-m", out, "--json").stdout)
    assert abs(metrics["auc"] - best[0]["valid"]["auc"]) < 1e-9


def test_tune_stops_starting_trials_when_the_budget_is_spent(tmp_path):
    result = invoke("tune", MOVIES_TRAIN, "--valid", MOVIES_TEST, *MOVIES_FLAGS, "-o", tmp_path / "b.fm",
                    "--json", "-q", "--budget", "0.001")
    assert result.exit_code == 0, result.stderr
    assert [t["options"] for t in json.loads(result.stdout)] == ["(defaults)"]


def test_tune_needs_validation_data_and_a_positive_budget(tmp_path):
    result = invoke("tune", MOVIES_TRAIN, *MOVIES_FLAGS, "-o", tmp_path / "b.fm")
    assert result.exit_code != 0 and "--valid" in result.stderr
    result = invoke("tune", MOVIES_TRAIN, "--valid", MOVIES_TEST, *MOVIES_FLAGS, "-o", tmp_path / "b.fm", "--budget", "0")
    assert (result.exit_code, result.stderr) == (1, "error: --budget must be a positive number of seconds, got 0.0\n")
    assert not (tmp_path / "b.fm").exists()
