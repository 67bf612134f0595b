"""Without validation data or --epochs, training chooses its epochs on held-out rows
and trains again on every row (fmctr.training.selection)."""

from __future__ import annotations


from types import SimpleNamespace

import numpy as np
import pytest

from conftest import CRITEO_TRAIN, MOVIES_FLAGS, MOVIES_TRAIN, invoke
from fmctr.models.modelfile import load
from fmctr.errors import BadOptions
from fmctr.training import selection
from fmctr.training.config import DEFAULT_LR, TrainConfig


def test_holdout_share_is_a_tenth_but_at_least_2000_rows_and_at_most_a_quarter():
    cfg = TrainConfig()
    assert selection.holdout_fraction(cfg, 100_000) == pytest.approx(0.1)
    assert selection.holdout_fraction(cfg, 10_000) == pytest.approx(0.2)
    assert selection.holdout_fraction(cfg, 500) == pytest.approx(0.25)
    assert selection.holdout_fraction(cfg.with_options(holdout=0.3), 100_000) == pytest.approx(0.3)


def test_only_runs_without_validation_or_epochs_choose():
    cfg = TrainConfig()
    assert selection.chooses_epochs(cfg, validation=False)
    assert not selection.chooses_epochs(cfg, validation=True)
    assert not selection.chooses_epochs(cfg.with_options(epochs=3), validation=False)
    assert not selection.chooses_epochs(cfg.with_options(holdout=0.0), validation=False)


def test_one_class_rows_cannot_choose():
    assert not selection.usable(np.zeros(50, np.float32))
    assert not selection.usable(np.ones(50, np.float32))
    assert selection.usable(np.array([0, 1, 0], np.float32))


def test_default_training_chooses_then_refits_on_every_row(tmp_path):
    path = tmp_path / "m.fm"
    result = invoke("train", MOVIES_TRAIN, *MOVIES_FLAGS, "-o", path, "--threads", "1")
    assert result.exit_code == 0, result.stderr
    training = load(path).training
    chose = training["selection"]
    rows = training["rows"]
    share = selection.holdout_fraction(TrainConfig(), rows)
    assert chose["holdout_rows"] == rows - (rows - round(rows * share))  # every row trained the final model
    assert 1 <= chose["best_epoch"] <= 20 and chose["valid_metrics"]["auc"] > 0.6
    assert training["epochs_run"] == chose["epochs"] == len(training["history"]) <= chose["best_epoch"]
    # the refit replays the rates of the run that chose: the first epoch at the configured rate
    rates = training["config"]["schedule"]["lr_by_epoch"]
    assert rates[0] == training["config"]["optimization"]["lr"]
    assert rates[1:] == [e["lr"] for e in chose["history"][: chose["epochs"] - 1]]
    assert f"epoch(s) chosen on {chose['holdout_rows']:,} held-out rows" in result.stderr
    # ... and the rivals of the defaults: the held-out run again with each, the model
    # trained with the configuration kept
    assert "without the factors' touch L2" in result.stderr and "3x the rate" in result.stderr
    rivals = chose["rivals"]
    assert rivals["tried"] == selection.rival_names(TrainConfig()) and set(rivals["kept"]) <= set(selection.RIVALS)
    assert "exact" not in rivals["tried"]  # (price is a measurement: no whole-number column)
    config = training["config"]
    kept_l2 = (config["regularization"]["l2_factors"], config["regularization"]["l2_all_factors"])
    assert (kept_l2 == tuple(selection.RIVAL_L2.values())) == ("l2" in rivals["kept"])
    assert (config["model"]["dim"] == 0) == ("linear" in rivals["kept"])
    rate = config["optimization"]["lr"]
    assert ("rate" in rivals["kept"]) == (rate == pytest.approx(selection.RIVAL_RATE * DEFAULT_LR["adagrad"]))
    # here (at --threads 1, so always) the held-out rows keep the L2 rival, a tenth of
    # the linear weights' touch L2 (of the held-out run's rows) and the 3x rate, and the
    # refit trains with them: the rivals do win where they should
    assert rivals["kept"] == ["l2", "l2_linear", "rate"] and rates[0] == pytest.approx(0.09)
    fit_rows = rows - chose["holdout_rows"]
    assert config["regularization"]["l2_linear"] == pytest.approx(selection.RIVAL_L2_LINEAR * 80 / fit_rows)
    shown = invoke("info", path)
    assert "kept: l2, l2_linear, rate" in shown.stdout + shown.stderr


def test_the_rival_wins_only_by_more_than_the_held_out_rows_noise():
    rng = np.random.default_rng(0)
    default = rng.exponential(0.5, 2000)
    assert selection.rival_wins(default, default - 0.01)  # better on every row
    assert not selection.rival_wins(default, default)
    assert not selection.rival_wins(default, default + 0.01)
    # a mean gain smaller than its standard error: noise, the defaults stay
    noisy = default - 0.002 + rng.normal(0, 0.2, 2000)
    assert abs((default - noisy).mean()) < (default - noisy).std() / np.sqrt(2000)
    assert not selection.rival_wins(default, noisy)
    assert not selection.rival_wins(default[:1], default[:1] - 1)  # one row tells nothing


def test_a_rival_runs_only_where_the_user_left_its_options_alone():
    cfg = TrainConfig()
    assert selection.rival_names(cfg) == ["l2", "l2_linear", "rate", "linear"]
    assert selection.rival_names(cfg.with_options(l2_factors=0.01)) == ["l2_linear", "rate", "linear"]
    assert selection.rival_names(cfg.with_options(l2_all_factors=1e-4)) == ["l2_linear", "rate", "linear"]
    assert selection.rival_names(cfg.with_options(l2_linear=0.5)) == ["l2", "rate", "linear"]
    assert selection.rival_names(cfg.with_options(optimizer="ftrl")) == ["l2", "rate", "linear"]  # (its lambda2)
    assert selection.rival_names(cfg.with_options(lr=0.03)) == ["l2", "l2_linear", "linear"]
    assert selection.rival_names(cfg.with_options(dim=0)) == ["l2", "l2_linear", "rate"]
    assert selection.rival_names(cfg.with_options(rivals=["rate"])) == ["rate"]
    assert selection.rival_names(cfg.with_options(rivals=[])) == []
    l2 = selection.rival("l2", cfg, None)
    assert (l2.l2_factors, l2.l2_all_factors) == tuple(selection.RIVAL_L2.values())
    held_out_run = SimpleNamespace(config=cfg.resolved(engine="cpu", device="cpu", rows=800, validation=True))
    assert selection.rival("l2_linear", cfg, held_out_run).l2_linear == pytest.approx(0.1 * 80 / 800)


def test_checkpoints_from_before_the_rivals_keep_their_choice():
    assert TrainConfig.from_dict({"l2_choice": False}).rivals == []
    assert TrainConfig.from_dict({"l2_choice": True}).rivals == ["l2"]
    with pytest.raises(BadOptions, match="unknown rivals"):
        TrainConfig.from_options(rivals=["l2", "lr"]).check()


@pytest.mark.parametrize("flags, tried", [
    (["--l2-factors", "0.01"], ["l2_linear", "rate", "linear"]), (["--l2-all-factors", "3e-4"], ["l2_linear", "rate", "linear"]),
    (["--lr", "0.03", "--dim", "8", "--l2", "0.01"], ["l2"]), (["--no-rivals"], None), (["--no-l2-choice"], None)])
def test_given_options_rule_out_their_rivals(tmp_path, flags, tried):
    path = tmp_path / "m.fm"
    result = invoke("train", MOVIES_TRAIN, *MOVIES_FLAGS, "-o", path, "--threads", "1", *flags)
    assert result.exit_code == 0, result.stderr
    chose = load(path).training["selection"]
    assert chose.get("rivals", {}).get("tried") == tried
    assert ("without the factors' touch L2" in result.stderr) == ("l2" in (tried or []))


def test_no_refit_keeps_the_held_out_model(tmp_path):
    path = tmp_path / "m.fm"
    result = invoke("train", MOVIES_TRAIN, *MOVIES_FLAGS, "-o", path, "-q", "--no-refit", "--holdout", "0.2")
    assert result.exit_code == 0, result.stderr
    training = load(path).training
    assert "selection" not in training and training["valid_rows"] == round(training["rows"] / 0.8 * 0.2)


def test_epochs_or_holdout_0_give_a_fixed_budget(tmp_path):
    for flags, epochs in ((["--epochs", "2"], 2), (["--holdout", "0"], 3)):
        path = tmp_path / "m.fm"
        result = invoke("train", CRITEO_TRAIN, "--preset", "criteo", "-o", path, "-q", "--bits", "18", *flags)
        assert result.exit_code == 0, result.stderr
        training = load(path).training
        assert training["epochs_run"] == epochs and training["valid_rows"] == 0 and "selection" not in training


def test_held_out_rows_of_one_class_fall_back_to_the_fixed_budget(tmp_path):
    rows = ["label,a"] + [f"{i % 2},{i % 7}" for i in range(900)] + ["0,1"] * 300
    (tmp_path / "d.csv").write_text("\n".join(rows) + "\n")
    result = invoke("train", tmp_path / "d.csv", "-o", tmp_path / "m.fm", "--threads", "1")
    assert result.exit_code == 0, result.stderr
    assert "cannot choose the epochs (none, or one class only)" in result.stderr
    assert load(tmp_path / "m.fm").training["epochs_run"] == 3


def test_bad_holdout_is_a_usage_error(tmp_path):
    result = invoke("train", MOVIES_TRAIN, *MOVIES_FLAGS, "-o", tmp_path / "m.fm", "--holdout", "1.5")
    assert result.exit_code != 0 and "--holdout must be" in result.stderr



def test_validation_data_with_holdout_does_not_refit(tmp_path):
    from conftest import MOVIES_TEST

    path = tmp_path / "m.fm"
    result = invoke("train", MOVIES_TRAIN, *MOVIES_FLAGS, "-o", path, "-q", "--valid", MOVIES_TEST, "--holdout", "0.2",
                    "--epochs", "3")
    assert result.exit_code == 0, result.stderr
    assert "selection" not in load(path).training
    result = invoke("train", MOVIES_TRAIN, *MOVIES_FLAGS, "-o", path, "-q", "--valid", MOVIES_TEST, "--holdout", "0.2")
    assert result.exit_code == 0, result.stderr
    training = load(path).training
    assert "selection" not in training and training["valid_rows"] > 0 and training["rows"] == 5000


def test_merged_refits_score_the_mean_of_their_logits():
    """The FM kind's merge: one FM (factors side by side, scaled) whose logit is exactly
    the mean of the models' logits; the optimizer states joined to match."""
    from fmctr.models.fm import FM, logits
    from test_fm import random_rows, random_weights

    rng = np.random.default_rng(3)
    rows = random_rows(rng, n_features=50)
    for n, dim in ((2, 5), (3, 4), (2, 0)):
        weights = [random_weights(rng, dim=dim) for _ in range(n)]
        states = [{"kind": "adagrad", "step": 7, "bias": rng.random(2).astype(np.float32),
                   "linear1": rng.random(50).astype(np.float32), "factors1": rng.random((50, dim)).astype(np.float32),
                   "seen": rng.random(50) < 0.5} for _ in weights]
        for s in states:
            s["linear2"], s["factors2"] = s["linear1"], s["factors1"]  # (Adagrad: one state each)
        merged, state = FM().merged(weights, states)
        assert merged.dim == n * dim
        expected = np.mean([logits(w, rows) for w in weights], axis=0)
        assert logits(merged, rows) == pytest.approx(expected, rel=1e-5, abs=1e-5)
        assert state["factors1"].shape == (50, n * dim) and state["factors2"] is state["factors1"]
        assert (state["factors1"][:, :dim] == states[0]["factors1"]).all()
        assert state["linear1"] == pytest.approx(np.mean([s["linear1"] for s in states], axis=0))
        assert (state["seen"] == np.logical_or.reduce([s["seen"] for s in states])).all() and state["step"] == 7
        assert FM().merged(weights, [None] * n)[1] is None


def test_default_training_merges_two_refits_with_seeds_of_their_own(tmp_path):
    common = [MOVIES_TRAIN, *MOVIES_FLAGS, "--threads", "1", "--no-rivals", "-q"]
    assert invoke("train", *common, "-o", tmp_path / "two.fm").exit_code == 0
    assert invoke("train", *common, "--refits", "1", "-o", tmp_path / "one.fm").exit_code == 0
    two, one = load(tmp_path / "two.fm"), load(tmp_path / "one.fm")
    assert (one.weights.dim, two.weights.dim) == (8, 16)
    assert two.training["selection"]["refits"] == {"count": 2, "dim_each": 8, "seeds": [0, selection.REFIT_SEED_STEP]}
    assert "refits" not in one.training["selection"]
    # the first refit is the one-refit model: its half of the factors, scaled by 1/sqrt(2)
    np.testing.assert_allclose(two.weights.factors[:, :8], one.weights.factors / np.sqrt(2), rtol=1e-6, atol=1e-9)
    shown = invoke("info", tmp_path / "two.fm")
    assert "2 refits merged (dim 8 each" in shown.stdout + shown.stderr
    # continuing from it takes its dim
    more = invoke("train", MOVIES_TRAIN, "-m", tmp_path / "two.fm", "-o", tmp_path / "more.fm", "--threads", "1")
    assert more.exit_code == 0, more.stderr
    assert load(tmp_path / "more.fm").weights.dim == 16  # (a warm start refits once: its dim stays)
    assert "the held-out rows choose" not in more.stderr  # (and tries no rivals: it continues the model given)
    bad = invoke("train", *common, "--refits", "0", "-o", tmp_path / "bad.fm")
    assert (bad.exit_code, bad.stderr) == (1, "error: --refits must be at least 1, got 0\n")


def test_few_rows_score_the_rivals_on_several_blocks():
    assert selection.folds(309, 0.25) == selection.MAX_FOLDS == 4  # 77 held-out rows
    assert selection.folds(100, 0.1) == 4
    assert selection.folds(4_000, 0.25) == selection.folds(3_999, 0.25) == 1  # 1,000 held out (rounded, as split)
    assert selection.folds(3_996, 0.25) == 4
    assert selection.folds(50_000, 0.1) == 1 and selection.folds(1_000, 0.0) == 1


def test_on_few_rows_every_block_is_held_out_from_a_run_of_its_own(tmp_path, monkeypatch):
    """400 rows: a quarter held out, so the defaults and each rival are scored on four
    blocks of 100 rows - every row once - each block held out from its own run."""
    from test_standard import measurements
    measurements(400, 0).write_csv(tmp_path / "small.csv")
    scored = []
    real_wins = selection.rival_wins
    monkeypatch.setattr(selection, "rival_wins", lambda a, b: scored.append((len(a), len(b))) or real_wins(a, b))
    runs = []
    real_held = selection.held_losses
    monkeypatch.setattr(selection, "held_losses", lambda run, held: runs.append(held.rows) or real_held(run, held))
    result = invoke("train", tmp_path / "small.csv", "--numeric", "m0,m1,m2,m3,m4,count", "-o", tmp_path / "m.fm", "--threads", "1")
    assert result.exit_code == 0, result.stderr
    assert "scored on 4 blocks of held-out rows" in result.stderr
    rivals = load(tmp_path / "m.fm").training["selection"]["rivals"]["tried"]
    assert scored == [(400, 400)] * len(rivals) and runs == [100] * 4 * (1 + len(rivals))
