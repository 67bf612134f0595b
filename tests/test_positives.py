"""Training from positives only: the negative sampler, the BPR gradient, and a model
trained from positives that ranks a planted world far better than chance."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fmctr.datasets.negatives import Positives, SampledRows, draw, item_weights
from fmctr.errors import BadOptions
from fmctr.hashing.tokens import Rows, ones
from fmctr.models.fm_engines import CpuEngine
from fmctr.models.weights import FMWeights
from fmctr.training.config import TrainConfig
from fmctr.training.positives import LOSS_DEFAULTS, POSITIVES_DEFAULTS, hold_out, train_positives
from fmctr.models.towers import item_vectors, user_side
from fmctr.ranking import ndcg_at_k
from fmctr.training.ranked import ranking_at_k, top_k

SAMPLE = Path(__file__).resolve().parent.parent / "sample_data"


def one_hot(ids: np.ndarray, offset: int) -> Rows:
    n = len(ids)
    return Rows((ids + offset).astype(np.int32), ones(n), np.arange(n + 1, dtype=np.int64), None)


def small_positives() -> Positives:
    # 3 users (features 0..2), 4 items (features 10..13); item 3 also has feature 20
    catalogue = Rows(np.array([10, 11, 12, 13, 20], np.int32), np.ones(5, np.float32),
                     np.array([0, 1, 2, 3, 5], np.int64), None)
    return Positives(one_hot(np.array([0, 0, 1, 2]), 0), np.array([0, 3, 1, 2]), catalogue)


def test_logistic_rows_are_the_positive_then_its_negatives_with_their_item_features():
    source = SampledRows(small_positives(), 2, seed=0)
    rows = source.epoch(np.random.default_rng(1))
    assert len(rows) == source.rows == 4 * 3
    assert rows.labels.tolist() == [1, 0, 0] * 4
    items = {10: [10], 11: [11], 12: [12], 13: [13, 20]}
    for r in range(len(rows)):
        features = rows.indices[rows.offsets[r]:rows.offsets[r + 1]].tolist()
        user = [0, 0, 1, 2][r // 3]
        assert features[0] == user and features[1:] == items[features[1]]
    assert rows.indices[rows.offsets[3] + 1:rows.offsets[4]].tolist() == [13, 20]  # user 0's second positive


def test_pairs_alternate_positive_and_negative_and_draws_change_each_epoch():
    source = SampledRows(small_positives(), 3, pairs=True)
    rng = np.random.default_rng(0)
    first, second = source.epoch(rng), source.epoch(rng)
    assert source.rows == 4 * 3 and len(first) == 2 * source.rows
    assert first.labels.tolist() == [1, 0] * 12
    positives = first.indices[first.offsets[0:24:2] + 1]
    assert positives.tolist() == [10] * 3 + [13] * 3 + [11] * 3 + [12] * 3
    assert not np.array_equal(first.indices, second.indices)


def test_negatives_may_be_the_users_own_positives():
    """Draws are not rejected when they hit a positive of the user (documented in
    fmctr.datasets.negatives): every catalogue item is drawn, the positive's own included."""
    drawn = draw(np.random.default_rng(0), 2000, 1, 4, None).ravel()
    assert set(drawn.tolist()) == {0, 1, 2, 3}
    assert abs(np.mean(drawn == 0) - 0.25) < 0.05


def test_popularity_sampling_draws_popular_items_more_smoothed():
    positives = Positives(one_hot(np.zeros(100, np.int64), 0), np.array([0] * 90 + [1] * 10),
                          one_hot(np.arange(3), 10))
    weights = item_weights(positives, "popularity")
    assert np.allclose(weights, np.array([91, 11, 1]) ** 0.75 / (np.array([91, 11, 1]) ** 0.75).sum())
    drawn = draw(np.random.default_rng(0), 20000, 1, 3, weights).ravel()
    assert np.allclose(np.bincount(drawn, minlength=3) / 20000, weights, atol=0.01)
    with pytest.raises(BadOptions, match="unknown sampling 'often'"):
        item_weights(positives, "often")


def fm_score(w: FMWeights, idx, val) -> float:
    v = w.factors[idx].astype(np.float64) * np.asarray(val, np.float64)[:, None]
    s = v.sum(0)
    return float(w.bias[0] + (w.linear[idx] * val).sum() + 0.5 * ((s * s).sum() - (v * v).sum()))


def test_bpr_step_follows_the_gradient_of_the_pair_loss():
    """One BPR pair through kernel.train_pairs against finite differences of
    -log sigmoid(score(pos) - score(neg)): with Adagrad's initial accumulator at 1e8 and
    rate 1e4 a step moves each weight by minus its gradient (to 1e-8 relative)."""
    rng = np.random.default_rng(3)
    n, k = 8, 4
    # pos: user 0, item 2, genre 6 (x 0.5); neg: user 0, item 3, genre 6 (x 2.0) - user and genre shared
    idx_pos, val_pos = np.array([0, 2, 6]), np.array([1.0, 1.0, 0.5])
    idx_neg, val_neg = np.array([0, 3, 6]), np.array([1.0, 1.0, 2.0])
    rows = Rows(np.r_[idx_pos, idx_neg].astype(np.int32), np.r_[val_pos, val_neg].astype(np.float32),
                np.array([0, 3, 6], np.int64), np.array([1, 0], np.float32))
    start = FMWeights(np.zeros(1, np.float32), rng.normal(0, 0.5, n).astype(np.float32),
                      rng.normal(0, 0.5, (n, k)).astype(np.float32))
    cfg = TrainConfig.from_options(lr=1e4, adagrad_init=1e8, l2_linear=0.0, l2_factors=0.0, l2_all_factors=0.0,
                                   batch_size=1, threads=1, engine="cpu", epochs=1).resolved(
        engine="cpu", device="cpu", rows=1, validation=False)
    engine = CpuEngine(start.copy(), cfg, 1)
    engine.seen_bits[:] = 0xFF  # every feature met
    engine.w.factors[:] = start.factors
    engine.train_pairs(rows, np.array([0], np.int64))
    after = engine.weights()

    def loss(w):
        d = fm_score(w, idx_pos, val_pos) - fm_score(w, idx_neg, val_neg)
        return float(np.log1p(np.exp(-d)))

    h = 1e-3
    for name in ("linear", "factors"):
        table = getattr(start, name)
        for where in np.ndindex(table.shape):
            up, down = start.copy(), start.copy()
            getattr(up, name)[where] += h
            getattr(down, name)[where] -= h
            numeric = (loss(up) - loss(down)) / (2 * h)
            moved = float(getattr(start, name)[where]) - float(getattr(after, name)[where])
            assert moved == pytest.approx(numeric, abs=2e-4), (name, where)
    assert after.bias[0] == 0  # the bias cancels in a difference of scores


def planted_world(users=150, items=120, per_user=15, seed=0) -> tuple[Positives, list[np.ndarray], Rows]:
    """Users and items with 4-dim tastes; each user's positives drawn from its 30 best
    items; one of them per user held back as the test item."""
    rng = np.random.default_rng(seed)
    taste, trait = rng.normal(size=(users, 4)), rng.normal(size=(items, 4))
    best = np.argsort(-(taste @ trait.T), axis=1)[:, :30]
    chosen = np.array([rng.choice(row, per_user, replace=False) for row in best])
    train_user = np.repeat(np.arange(users), per_user - 1)
    positives = Positives(one_hot(train_user, 0), chosen[:, 1:].ravel().astype(np.int64), one_hot(np.arange(items), 1000))
    return positives, [row[:1] for row in chosen], one_hot(np.arange(users), 0)


@pytest.mark.parametrize("loss", ["logistic", "bpr", "als"])
def test_trained_from_positives_it_ranks_far_better_than_chance(loss):
    positives, test, users = planted_world()
    cfg = TrainConfig.from_options(dim=8, epochs=8, threads=1, engine="cpu")
    result, chose = train_positives(positives, cfg, bits=11, negatives=4, loss=loss)
    assert chose is None  # the epochs were given
    defaults = {**POSITIVES_DEFAULTS, **LOSS_DEFAULTS.get(loss, {})}
    assert result.config.l2_factors == defaults["l2_factors"] and result.config.dim == defaults["dim"]  # (8: the ordinary default)
    w = result.weights
    scores = user_side(w, users).vectors @ item_vectors(w, positives.catalogue).T
    seen = [positives.items[u * 14:(u + 1) * 14] for u in range(150)]
    ndcg = ranking_at_k(top_k(scores, seen, 10), test)["ndcg@10"]
    rng = np.random.default_rng(1)
    chance = np.mean([ranking_at_k(top_k(rng.random(scores.shape), seen, 10), test)["ndcg@10"] for _ in range(5)])
    assert chance < 0.06 and ndcg > 3 * chance


def test_the_checks_vectorised_ndcg_is_fmctr_rankings():
    rng = np.random.default_rng(0)
    top = np.array([rng.permutation(20)[:10] for _ in range(30)])
    relevant = [rng.choice(20, rng.integers(1, 6), replace=False) for _ in range(30)]
    expected = np.mean([ndcg_at_k(list(t), set(r.tolist()), 10) for t, r in zip(top, relevant)])
    assert ranking_at_k(top, relevant)["ndcg@10"] == pytest.approx(expected)


def test_held_out_positives_choose_the_epochs_by_ndcg():
    positives, _, _ = planted_world()
    parts = hold_out(positives, 0.1)
    fit, check = parts
    assert len(fit.items) == len(positives.items) - 210 and check.rows == len(check.relevant) == 15  # the last 15 users
    cfg = TrainConfig.from_options(dim=8, threads=1, engine="cpu")
    result, chose = train_positives(positives, cfg, bits=11, negatives=4, loss="logistic")
    assert chose.config.stop_metric == "ndcg@10" and result.config.epochs == chose.best_epoch
    assert chose.history[chose.best_epoch - 1].valid["ndcg@10"] == max(e.valid["ndcg@10"] for e in chose.history)


def test_mined_negatives_are_the_best_scored_draws_and_never_the_users_own_positives():
    from fmctr.training.positives import MinedRows

    # 2 users (features 0, 1); 6 items (features 10..15); item j scores j for every user
    catalogue = one_hot(np.arange(6), 10)
    positives = Positives(one_hot(np.array([0, 0, 1]), 0), np.array([5, 4, 0]), catalogue)
    w = FMWeights.zeros(16, 2)
    w.linear[10:16] = np.arange(6)
    source = MinedRows(positives, 3, pool=4)
    source.before_epoch(w)
    drawn = source.draw(np.random.default_rng(0))
    assert not np.isin(drawn[:2], [4, 5]).any()  # user 0's positives are items 4 and 5
    plain = draw(np.random.default_rng(0), 3, 12, 6, None).reshape(3, 3, 4)
    best_allowed = [max(set(c) - {4, 5}) if u < 2 else max(c) for u, row in enumerate(plain) for c in row]
    assert drawn.ravel().tolist() == best_allowed


def test_users_name_the_user_where_rows_differ_per_positive():
    from fmctr.training.positives import MinedRows

    # user 0's two positives have different rows (features 0 and 1, say a history
    # without the positive's own item): `users` says they are one user
    catalogue = one_hot(np.arange(6), 10)
    positives = Positives(one_hot(np.array([0, 1, 2]), 0), np.array([5, 4, 0]), catalogue, np.array([0, 0, 1]))
    w = FMWeights.zeros(16, 2)
    w.linear[10:16] = np.arange(6)
    source = MinedRows(positives, 3, pool=4)
    source.before_epoch(w)
    assert not np.isin(source.draw(np.random.default_rng(0))[:2], [4, 5]).any()
    assert positives.take(np.array([2, 0])).users.tolist() == [1, 0]
    many = Positives(one_hot(np.arange(20), 0), np.arange(20) % 6, catalogue, np.arange(20) // 5)
    fit, check = hold_out(many, 0.25)
    assert check.rows == 1 and len(fit.items) == 15  # the last 5 positives are all user 3's
    assert check.relevant[0].tolist() == [0, 1, 3, 4, 5] and len(check.seen[0]) == 0


def test_a_given_split_chooses_the_epochs():
    positives, _, _ = planted_world()
    calls = []

    def hold(p, fraction, seed):
        calls.append(fraction)
        return hold_out(p, fraction, seed)

    cfg = TrainConfig.from_options(dim=8, threads=1, engine="cpu")
    result, chose = train_positives(positives, cfg, bits=11, negatives=4, hold=hold, loss="logistic")
    assert calls and chose is not None and result.config.epochs == chose.best_epoch


def test_train_from_positives_on_the_command_line(tmp_path):
    import polars as pl
    from typer.testing import CliRunner

    from fmctr.commands.cli import app
    from fmctr.models.modelfile import load

    clicks = pl.read_csv(SAMPLE / "clicks_train.csv")
    clicks.filter(pl.col("label") == 1).drop("label").write_csv(tmp_path / "positives.csv")
    out = tmp_path / "recall.fm"
    args = ["train", str(tmp_path / "positives.csv"), "--items", str(SAMPLE / "items.csv"), "--multi", "genres", "--numeric", "age,year", "-o", str(out), "--bits", "14", "--negatives", "4", "--pool", "2", "--loss", "logistic",
            "--epochs", "2", "-q", "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    model = load(out)
    assert model.schema.item == ("movie_id", "genres", "year")  # the catalogue's columns
    assert model.training["negatives"] == 4 and model.training["epochs_run"] == 2
    assert model.weights.factors.shape[1] == POSITIVES_DEFAULTS["dim"] == 64  # this mode's default dim
    dim8 = CliRunner().invoke(app, [*args, "--dim", "8", "--force"])  # given, though equal to CTR's default
    assert dim8.exit_code == 0, dim8.output
    assert load(out).weights.factors.shape[1] == 8
    pl.DataFrame({"user_id": ["u0"], "age": [61], "occupation": ["retired"], "movie_id": ["nope"]}).write_csv(
        tmp_path / "bad.csv")
    bad = CliRunner().invoke(app, [args[0], str(tmp_path / "bad.csv"), *args[2:], "--force"])
    assert bad.exit_code == 1
    assert bad.output == f"error: {tmp_path / 'bad.csv'}: row 1: item 'nope' is not in the catalogue {SAMPLE / 'items.csv'}\n"


def test_from_positives_one_refit_by_default_and_merged_refits_when_asked():
    """This mode keeps one refit (POSITIVES_DEFAULTS); --refits 2 merges two, and the
    merged model still splits into towers: the vectors' scores are the FM's."""
    positives, test, users = planted_world()
    cfg = TrainConfig.from_options(threads=1, engine="cpu")
    one, _ = train_positives(positives, cfg, bits=11, negatives=4, given=frozenset(), loss="logistic")
    two, chose = train_positives(positives, cfg.with_options(refits=2), bits=11, negatives=4, loss="logistic",
                                 given=frozenset({"refits"}))
    assert chose is not None and one.weights.dim == 64 and two.weights.dim == 128 and two.config.refits == 2
    np.testing.assert_allclose(two.weights.factors[:, :64], one.weights.factors / np.sqrt(2), rtol=1e-6, atol=1e-9)
    w = two.weights
    scores = user_side(w, users).vectors @ item_vectors(w, positives.catalogue).T
    pairs = ((3, 7), (40, 99))
    rows = Rows(np.array([i for u, t in pairs for i in (u, 1000 + t)], np.int32), np.ones(4, np.float32),
                np.array([0, 2, 4], np.int64), None)
    from fmctr.models.fm import logits

    # an FM's logit: bias + the user's linear weight (constant for the user) + the towers' score
    expected = [w.bias[0] + w.linear[u] + scores[u, t] for u, t in pairs]
    assert logits(w, rows) == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("loss", ["logistic", "softmax", "als"])
def test_sources_from_positives_lay_the_tables_out_for_the_features_they_can_hold(loss, monkeypatch):
    """The features rows made from the positives can hold are their users' and the
    catalogue's, known before anything is drawn: the engine's tables are then laid out
    for those alone (RowSource.few_features) - the same weights, to the bit, as a table
    of every feature (one thread)."""
    from fmctr.datasets.batches import RowSource
    from fmctr.datasets.negatives import CatalogueRows, FromPositives, PatternRows
    from fmctr.training.positives import keys_of

    positives, _, _ = planted_world(users=40, items=50)
    known = np.union1d(positives.context.indices, positives.catalogue.indices)
    for source in (SampledRows(positives, 4), CatalogueRows(positives, max_items=100),
                   PatternRows(positives, keys_of(positives), unobserved=0.5)):
        features, counts = source.few_features(1 << 16)
        np.testing.assert_array_equal(features, known)
        assert counts is None and source.few_features(len(known) * 8) is None  # (not few beside the table)
    cfg = TrainConfig.from_options(dim=4, epochs=2, threads=1, engine="cpu")
    laid_out, _ = train_positives(positives, cfg, bits=16, negatives=4, loss=loss)
    monkeypatch.setattr(FromPositives, "few_features", RowSource.few_features)  # (None: not known)
    whole, _ = train_positives(positives, cfg, bits=16, negatives=4, loss=loss)
    assert laid_out.weights.met is not None and len(laid_out.weights.met) <= len(known)
    for name in ("bias", "linear", "factors"):
        np.testing.assert_array_equal(getattr(laid_out.weights, name), getattr(whole.weights, name))
