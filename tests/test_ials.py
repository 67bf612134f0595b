"""Implicit ALS for the FM's towers (`--loss als`, fmctr.models.ials): each feature's
solve is the exact minimum of the whole-catalogue loss (checked against the loss
computed pair by pair), the sweeps never raise it, and a model trained so ranks a
planted world far better than chance."""

from __future__ import annotations

import numpy as np
import pytest

from fmctr.datasets.negatives import Positives
from fmctr.datasets.pattern import Problem
from fmctr.errors import BadOptions
from fmctr.hashing.tokens import Rows
from fmctr.models import ials
from fmctr.models.towers import item_vectors, user_side
from fmctr.models.weights import FMWeights
from fmctr.training.config import TrainConfig
from fmctr.training.loop import TrainResult
from fmctr.training.positives import train_positives
from tests.test_positives import planted_world

DIM, A0, L2 = 3, 0.4, 0.05


def rows(lists: list[list[tuple[int, float]]]) -> Rows:
    indices = np.array([f for row in lists for f, _ in row], np.int32)
    values = np.array([x for row in lists for _, x in row], np.float32)
    offsets = np.r_[0, np.cumsum([len(row) for row in lists])].astype(np.int64)
    return Rows(indices, values, offsets, None)


def world(seed: int = 0) -> tuple[FMWeights, Problem]:
    """5 users with an id, a shared group feature and a numeric value; 6 items with an
    id and a bag of 1-2 tags (values 1/sqrt(n)) - pairs within each side included -
    and random weights everywhere, the bias too."""
    rng = np.random.default_rng(seed)
    users = rows([[(u, 1.0), (10 + u % 2, 1.0), (12, float(rng.normal()))] for u in range(5)])
    tags = [[30 + t for t in rng.choice(3, rng.integers(1, 3), replace=False)] for _ in range(6)]
    items = rows([[(20 + i, 1.0)] + [(t, 1 / np.sqrt(len(ts))) for t in ts] for i, ts in enumerate(tags)])
    w = FMWeights.zeros(40, DIM)
    w.bias[:] = 0.3
    w.linear[:] = rng.normal(0, 0.2, 40)
    w.factors[:] = rng.normal(0, 0.3, (40, DIM))
    keys = np.array([0, 0, 1, 2, 2, 2, 3, 4])
    chosen = np.array([0, 3, 1, 2, 4, 5, 0, 1])
    return w, Problem.of(users.take(keys), keys, chosen, items, unobserved=A0)


def scores(w: FMWeights, problem: Problem) -> np.ndarray:
    """Every user x item logit, from the towers (exact: tests/test_recall.py)."""
    side = user_side(w, problem.users.rows)
    return side.constants[:, None] + side.vectors.astype(np.float64) @ item_vectors(w, problem.items.rows).astype(np.float64).T


def data_loss(w: FMWeights, problem: Problem) -> float:
    s = scores(w, problem)
    ptr, items = problem.by_user
    users = np.repeat(np.arange(len(ptr) - 1), np.diff(ptr))
    return float(((1 - s[users, items]) ** 2).sum() + problem.unobserved * (s ** 2).sum())


def penalty(w: FMWeights, problem: Problem, feature: int) -> float:
    """The feature's L2: its weights' squares times the data it meets."""
    for side, (ptr, _) in ((problem.users, problem.by_user), (problem.items, problem.by_item)):
        found = np.flatnonzero(side.features == feature)
        if len(found):
            j = found[0]
            at, x = side.entities[side.ptr[j]:side.ptr[j + 1]], side.values[side.ptr[j]:side.ptr[j + 1]]
            other = len(problem.by_item[0]) - 1 if side is problem.users else len(problem.by_user[0]) - 1
            mass = float((x * x * (np.diff(ptr)[at] + problem.unobserved * other)).sum())
            theta = np.r_[w.factors[feature].astype(np.float64), w.linear[feature]]
            return L2 * mass * float(theta @ theta)
    raise AssertionError(feature)


def solve_one(w: FMWeights, problem: Problem, feature: int) -> None:
    """ials' half step for this one feature alone."""
    user_side_feature = feature in problem.users.features
    side = problem.users if user_side_feature else problem.items
    own_rows, other_rows = (problem.users, problem.items) if user_side_feature else (problem.items, problem.users)
    bias = float(w.bias[0])
    own = ials._vectors(w, own_rows, own=True, bias=bias if user_side_feature else 0.0)
    other = ials._vectors(w, other_rows, own=False, bias=0.0 if user_side_feature else bias)
    j = int(np.flatnonzero(side.features == feature)[0])
    ptr = side.ptr[j:j + 2] - side.ptr[j]
    span = slice(side.ptr[j], side.ptr[j + 1])
    ials._half(np.array([0, 1]), np.array([False]), side.features[j:j + 1], ptr, side.entities[span], side.values[span], w.factors, w.linear, own, other,
               *(problem.by_user if user_side_feature else problem.by_item), problem.unobserved, L2)


@pytest.mark.parametrize("feature", [0, 3, 10, 12, 21, 30, 32])
def test_each_features_solve_is_the_exact_minimum_of_the_whole_catalogue_loss(feature):
    """An id, a feature shared by users, a numeric value, an item id, tags in bags:
    after the solve, moving any of the feature's weights either way raises the loss
    (data, computed pair by pair, plus its L2) - the gradient there is zero."""
    w, problem = world()
    solve_one(w, problem, feature)

    def objective():
        return data_loss(w, problem) + penalty(w, problem, feature)

    h = 1e-3
    for c in range(DIM + 1):
        table, at = (w.factors, (feature, c)) if c < DIM else (w.linear, feature)
        start = float(table[at])
        values = []
        for delta in (-h, h):
            table[at] = start + delta
            values.append(objective())
        table[at] = start
        centre = objective()
        assert abs(values[1] - values[0]) / (2 * h) < 1e-3, (feature, c)  # (about 1 to 6 before the solve)
        assert min(values) > centre - 1e-9


def test_sweeps_never_raise_the_loss_and_report_it():
    w, problem = world(1)
    for f in np.union1d(problem.users.features, problem.items.features):
        w.factors[f] *= 0.1  # (a start far from the answer)

    def objective():
        features = np.union1d(problem.users.features, problem.items.features)
        return data_loss(w, problem) + sum(penalty(w, problem, int(f)) for f in features)

    before = objective()
    for _ in range(4):
        reported = ials.sweep(w, problem, l2=L2)
        assert reported == pytest.approx(data_loss(w, problem), rel=1e-4)
        after = objective()
        assert after <= before + 1e-6
        before = after


def test_als_chooses_its_epochs_on_held_out_positives():
    positives, _, _ = planted_world()
    result, chose = train_positives(positives, TrainConfig.from_options(threads=1, engine="cpu"), bits=11,
                                    negatives=4, loss="als")
    assert chose is not None and result.config.epochs == chose.best_epoch
    assert "ndcg@10" in chose.history[0].valid


@pytest.mark.parametrize("options, message", [
    ({"loss": "logistic", "unobserved": 0.3}, "--unobserved weighs the pairs that are not positives in --loss als"),
    ({"loss": "als", "unobserved": 0.0}, "--unobserved must be above 0"),
    ({"loss": "als", "engine": "torch"}, "--loss als runs on the cpu engine"),
])
def test_als_options_are_checked(options, message):
    positives, _, _ = planted_world(users=10, items=40)
    engine = options.pop("engine", "cpu")
    with pytest.raises(BadOptions, match=message):
        train_positives(positives, TrainConfig.from_options(epochs=1, engine=engine), bits=11, negatives=4, **options)


def test_a_pair_given_twice_counts_once():
    users = rows([[(0, 1.0)], [(1, 1.0)]])
    items = rows([[(5, 1.0)], [(6, 1.0)]])
    problem = Problem.of(users.take(np.array([0, 0, 1])), np.array([0, 0, 1]), np.array([1, 1, 0]), items,
                         unobserved=0.5)
    assert problem.by_user[0].tolist() == [0, 1, 2] and problem.by_user[1].tolist() == [1, 0]
    assert problem.by_item[0].tolist() == [0, 1, 2] and problem.by_item[1].tolist() == [1, 0]
    assert Positives(users.take(np.array([0])), np.array([0]), items).items.tolist() == [0]


def test_summed_fms_score_the_weighted_sum_of_their_logits_and_split_into_towers():
    from fmctr.models.fm import summed

    w1, problem = world(2)
    w2, _ = world(3)
    w2.factors = w2.factors[:, :2].copy()  # (dims may differ)
    both = summed([w1, w2], [10.0, 1.0])
    assert both.dim == DIM + 2
    np.testing.assert_allclose(scores(both, problem), 10 * scores(w1, problem) + scores(w2, problem), rtol=1e-5,
                               atol=1e-5)


def test_blend_keeps_the_default_weights_unless_a_candidate_beats_them_beyond_the_noise():
    """A candidate replaces the default weights only when its held-out NDCG@10 is above
    theirs by more than a standard error of the user-by-user difference."""
    from fmctr.training.blend import _kept

    rng = np.random.default_rng(0)
    default = rng.random(400)
    noise = rng.normal(0, 0.2, 400)
    per_user = {"d": default, "close": default + noise + 0.002, "clear": default + noise + 0.05,
                "clearer": default + noise + 0.08}
    assert _kept(per_user, "d") == "clearer"
    assert _kept({"d": default, "close": per_user["close"]}, "d") == "d"
    assert _kept({"d": default, "worse": default - 0.1}, "d") == "d"
    assert _kept({}, "d") == "d"  # (nothing held out)


def test_blend_keeps_a_candidate_only_above_the_default_on_the_held_out_positives():
    positives, test, users = planted_world()
    result, chose = train_positives(positives, TrainConfig.from_options(dim=8, threads=1, engine="cpu"), bits=11,
                                    negatives=4, loss="blend", given=frozenset({"dim"}))
    note = result.notes["blend"]
    held = note["held_out_ndcg@10"]
    sums = [f"{s} x als + logistic" for s in ("1", "3", "10", "30", "100")]
    assert set(held) == {"logistic", "als", "softmax", *sums, *(f"{s} + softmax" for s in sums)}
    default = "10 x als + logistic + softmax"
    assert note["chosen"] == default or held[note["chosen"]] > held[default]
    assert isinstance(held["als"], float)
    assert set(note["epochs"]) == {"logistic", "als", "softmax"} and note["epochs"]["als"] >= 1 and chose is not None
    assert result.weights.dim == result.config.dim == 8 * len(note["kept"])
    from fmctr.training.blend import describe

    assert describe(note).startswith("blend: kept ") and f"{held[note['chosen']]:.4f}" in describe(note)
    assert describe({"chosen": "10 x als + logistic + softmax", "held_out_ndcg@10": {}}) == (
        "blend: kept 10 x als + logistic + softmax (no held-out positives to choose: the default weights)")
    held = {"logistic": 0.2, "als": 0.25, "10 x als + logistic": 0.3, "1 x als + logistic": 0.31}
    kept_default = {"chosen": "10 x als + logistic", "default": "10 x als + logistic", "held_out_ndcg@10": held}
    assert describe(kept_default) == (
        "blend: kept 10 x als + logistic, held-out NDCG@10 0.3000 (logistic 0.2000, als 0.2500; the default weights "
        "kept: 1 x als + logistic 0.3100 is within the noise)")
    # (a model file written by the two-model blend names its ALS weight alone)
    assert describe({"chosen": 10.0, "held_out_ndcg@10": {"logistic": 0.2, "als": 0.25, "10.0": 0.3}}) == (
        "blend: kept 10 x als + logistic, held-out NDCG@10 0.3000 (logistic 0.2000, als 0.2500)")


def test_blend_sums_the_models_it_keeps_with_their_weights():
    """The kept candidate's models, summed with its weights, score as the weighted sum
    of their logits - and without held-out positives the default weights."""
    from fmctr.training.blend import DEFAULT_SCALE, SOFTMAX_SCALE, blended

    _, problem = world(0)
    runs = {}
    for seed, name in enumerate(("logistic", "als", "softmax")):
        run = TrainResult(world(seed)[0], [], 1, 0, "cpu", "cpu", TrainConfig.from_options(dim=DIM, epochs=1))
        runs[name] = (run, run)
    result, chose = blended(runs, None)
    assert result.notes["blend"]["kept"] == {"als": DEFAULT_SCALE, "logistic": 1.0, "softmax": SOFTMAX_SCALE}
    expected = sum(scale * scores(runs[name][0].weights, problem) for name, scale in result.notes["blend"]["kept"].items())
    np.testing.assert_allclose(scores(result.weights, problem), expected, rtol=1e-5, atol=1e-4)
    assert result.weights.dim == 3 * DIM and chose is runs["logistic"][1]


def test_als_and_blend_on_the_command_line(tmp_path):
    import json

    import polars as pl
    from typer.testing import CliRunner

    from fmctr.commands.cli import app
    from fmctr.models.modelfile import load
    from tests.test_positives import SAMPLE

    clicks = pl.read_csv(SAMPLE / "clicks_train.csv")
    clicks.filter(pl.col("label") == 1).drop("label").write_csv(tmp_path / "positives.csv")
    base = ["train", str(tmp_path / "positives.csv"), "--items", str(SAMPLE / "items.csv"), "--multi", "genres",
            "--numeric", "age,year", "--bits", "14", "--dim", "8", "-q", "--json"]
    for loss in ("als", "blend"):
        out = tmp_path / f"{loss}.fm"
        result = CliRunner().invoke(app, [*base, "--loss", loss, "--unobserved", "0.3", "-o", str(out)])
        assert result.exit_code == 0, result.output
        training = json.loads(result.stdout)
        assert training["loss"] == loss and training["unobserved"] == 0.3 and load(out).training["loss"] == loss
        assert ("blend" in training) == (loss == "blend") and ("negatives" in training) == (loss == "blend")
        _info_says(out, loss)
        top = CliRunner().invoke(app, ["recall", str(SAMPLE / "users.csv"), "--items", str(SAMPLE / "items.csv"),
                                       "-m", str(out), "-k", "3", "--keep", "user_id"])
        assert top.exit_code == 0, top.output
        assert top.stdout.splitlines()[0] == "user_id,movie_id,rank,score" and len(top.stdout.splitlines()) > 3
    bad = CliRunner().invoke(app, [*base, "--loss", "bpr", "--unobserved", "0.3", "-o", str(tmp_path / "bad.fm")])
    assert bad.exit_code == 1 and not (tmp_path / "bad.fm").exists()
    assert bad.output == "error: --unobserved weighs the pairs that are not positives in --loss als or blend, not --loss bpr\n"
    drawn = CliRunner().invoke(app, [*base, "--loss", "als", "--negatives", "8", "--pool", "2", "-o", str(tmp_path / "bad.fm")])
    assert drawn.exit_code == 1 and not (tmp_path / "bad.fm").exists()
    assert drawn.output == ("error: --negatives, --pool: --loss als draws no negatives (every catalogue item is in "
                            "each user's loss)\n")


def test_the_command_lines_default_loss_is_the_libraries():
    import inspect

    from fmctr.commands.cli import train_cmd as train
    from fmctr.training.positives import DEFAULT_LOSS

    assert inspect.signature(train).parameters["loss"].default == DEFAULT_LOSS == "blend"


def test_features_that_share_no_entity_are_grouped_and_solved_at_once_with_the_same_result():
    from dataclasses import replace

    from fmctr.datasets.pattern import Side

    side = Side.of(rows([[(0, 1.0), (10, 1.0), (30, .7), (31, .7)], [(1, 1.0), (11, 1.0), (31, 1.0)],
                         [(2, 1.0), (10, 1.0), (30, .7), (32, .7)]]))
    groups = [side.features[a:b].tolist() for a, b in zip(side.groups[:-1], side.groups[1:])]
    assert groups == [[0, 1, 2], [10, 11], [30], [32], [31]]  # (31 is met at two places: last, in turn)
    assert side.independent.tolist() == [True, True, True, True, False]
    assert side.entities[side.ptr[5]:side.ptr[6]].tolist() == [0, 2]  # feature 30's

    w, problem = world(4)
    in_turn = replace(problem, users=replace(problem.users, independent=np.zeros_like(problem.users.independent)),
                      items=replace(problem.items, independent=np.zeros_like(problem.items.independent)))
    assert problem.users.independent.any() and problem.items.independent.any()
    at_once, one_by_one = w.copy(), w.copy()
    for _ in range(2):
        ials.sweep(at_once, problem, l2=L2)
        ials.sweep(one_by_one, in_turn, l2=L2)
    np.testing.assert_array_equal(at_once.factors, one_by_one.factors)
    np.testing.assert_array_equal(at_once.linear, one_by_one.linear)


def _info_says(path, loss: str) -> None:
    """`fmctr info` of a model trained from positives: its loss, the blend it kept, and
    the ranking check's metrics per epoch."""
    from rich.console import Console

    from fmctr.commands.info import model_info
    from fmctr.commands.views import info_tables

    info = model_info(str(path))
    console = Console(width=250, record=True)
    for table in info_tables(info):
        console.print(table)
    text = console.export_text()
    assert info["training"]["loss"] == loss and "valid NDCG@10" in text and "train loss" in text
    assert ("blend: kept" not in text) and (("kept " in text) == (loss == "blend"))
    assert "None held-out rows" not in text and "held-out positives" in text
