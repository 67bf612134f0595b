"""--loss softmax: the full-catalogue softmax for training from positives
(fmctr.models.softmax, CpuEngine.train_softmax, fmctr.datasets.negatives.CatalogueRows)."""

from __future__ import annotations

import numpy as np
import pytest

from fmctr.datasets.negatives import CatalogueRows, Positives
from fmctr.errors import BadOptions
from fmctr.hashing.tokens import Rows
from fmctr.models.fm_engines import CpuEngine
from fmctr.models.softmax import softmax_gradients
from fmctr.models.towers import item_vectors, user_side
from fmctr.models.weights import FMWeights
from fmctr.training.config import TrainConfig
from fmctr.training.positives import train_positives
from fmctr.training.ranked import ranking_at_k, top_k
from test_positives import fm_score, planted_world


def rows(lists: list[list[tuple[int, float]]]) -> Rows:
    lengths = [len(r) for r in lists]
    return Rows(np.array([i for r in lists for i, _ in r], np.int32), np.array([x for r in lists for _, x in r], np.float32),
                np.r_[0, np.cumsum(lengths)].astype(np.int64), None)


# Users: features 0..2 (user 2 also has feature 3, x 0.5); items: features 5..8, with a
# genre (9, shared by items 0 and 2, x 2 and 1) and a year (10, items 1 and 2).
CONTEXT = rows([[(0, 1.0)], [(1, 1.0)], [(2, 1.0), (3, 0.5)]])
CATALOGUE = rows([[(5, 1.0), (9, 2.0)], [(6, 1.0), (10, 1.0)], [(7, 1.0), (9, 1.0), (10, 1.0)], [(8, 1.0)]])
ITEMS = np.array([2, 0, 3])


def mean_loss(w: FMWeights) -> float:
    """The softmax loss from the FM's full logits, by brute force over each (user, item) row."""
    total = 0.0
    for u, i in enumerate(ITEMS):
        scores = []
        for j in range(len(CATALOGUE)):
            both = [CONTEXT.slice(u, u + 1), CATALOGUE.slice(j, j + 1)]
            idx, val = np.concatenate([r.indices for r in both]), np.concatenate([r.values for r in both])
            scores.append(fm_score(w, idx, val.astype(np.float64)))
        scores = np.array(scores)
        total += np.log(np.exp(scores - scores.max()).sum()) + scores.max() - scores[i]
    return total / len(ITEMS)


def test_softmax_gradient_is_the_derivative_of_the_full_catalogue_loss():
    rng = np.random.default_rng(0)
    w = FMWeights(np.array([0.3], np.float32), rng.normal(0, 0.5, 12).astype(np.float32),
                  rng.normal(0, 0.5, (12, 3)).astype(np.float32))
    grads = softmax_gradients(w, CONTEXT, ITEMS, CATALOGUE)
    assert grads.loss / 3 == pytest.approx(mean_loss(w), rel=1e-5)
    assert grads.features.tolist() == [0, 1, 2, 3, 5, 6, 7, 8, 9, 10]  # (4 and 11: features no row has)
    h = 1e-3
    for name, sparse in (("linear", grads.linear), ("factors", grads.factors)):
        table = getattr(w, name)
        got = np.zeros(table.shape)
        got[grads.features] = sparse
        for where in np.ndindex(table.shape):
            up, down = w.copy(), w.copy()
            getattr(up, name)[where] += h
            getattr(down, name)[where] -= h
            numeric = (mean_loss(up) - mean_loss(down)) / (2 * h)
            assert got[where] == pytest.approx(numeric, abs=2e-4), (name, where)
    assert not grads.linear[:4].any()  # the users' linear weights cancel


def test_the_softmax_exp_is_exp_to_float32_precision():
    """softmax._exp_shifted, the SIMD exp of the scores less the largest: within a few
    float32 roundings of exp over the range it meets, at most exp(-87) far below, and
    the sum."""
    from fmctr.models.softmax import _POW2, _exp_shifted

    x = np.r_[np.linspace(-86.0, 0.0, 50_001), -0.3466, 0.3466 - 1.0, -87.5, -200.0].astype(np.float32)
    row = x + np.float32(3.0)
    total = _exp_shifted(row, np.float32(3.0), _POW2)
    exact = np.exp((x + np.float32(3.0)).astype(np.float64) - 3.0)
    assert np.max(np.abs(row[:-2] - exact[:-2]) / exact[:-2]) < 4e-7
    assert 0 < row[-1] <= 2e-38 and 0 < row[-2] <= 2e-38
    assert total == pytest.approx(exact.sum(), rel=1e-6)


def test_a_softmax_step_is_adagrads_step_on_the_gradient():
    """With Adagrad's initial accumulator at 1e8 and rate 1e4, one batch moves each
    weight by minus its gradient; the bias does not move (it cancels)."""
    rng = np.random.default_rng(1)
    start = FMWeights(np.zeros(1, np.float32), rng.normal(0, 0.5, 12).astype(np.float32),
                      rng.normal(0, 0.5, (12, 3)).astype(np.float32))
    cfg = TrainConfig.from_options(lr=1e4, adagrad_init=1e8, l2_linear=0.0, l2_factors=0.0, batch_size=3, threads=1,
                                   engine="cpu", epochs=1).resolved(engine="cpu", device="cpu", rows=3, validation=False)
    engine = CpuEngine(start.copy(), cfg, 1)
    engine.seen_bits[:] = 0xFF  # every feature met
    engine.w.factors[:] = start.factors
    loss = engine.train_softmax(Positives(CONTEXT, ITEMS, CATALOGUE), np.arange(3))
    grads = softmax_gradients(start, CONTEXT, ITEMS, CATALOGUE)
    after = engine.weights()
    assert loss == pytest.approx(grads.loss)
    assert np.allclose(start.linear[grads.features] - after.linear[grads.features], grads.linear, atol=1e-5)
    assert np.allclose(start.factors[grads.features] - after.factors[grads.features], grads.factors, atol=1e-5)
    untouched = [4, 11]
    assert after.bias[0] == 0 and np.array_equal(after.linear[untouched], start.linear[untouched])


def test_a_catalogue_too_large_to_score_whole_is_refused_in_one_line():
    positives = Positives(CONTEXT, ITEMS, CATALOGUE)
    with pytest.raises(BadOptions, match=r"^--loss softmax scores the whole catalogue for every batch: 4 items is over 3; "
                                         r"use --loss logistic \(sampled negatives\)$"):
        CatalogueRows(positives, max_items=3)


def test_trained_with_softmax_it_ranks_far_better_than_chance():
    positives, test, users = planted_world()
    cfg = TrainConfig.from_options(dim=8, epochs=8, threads=1, engine="cpu")
    result, _ = train_positives(positives, cfg, bits=11, negatives=4, loss="softmax")
    assert result.config.batch_size == 128  # this loss's default
    w = result.weights
    scores = user_side(w, users).vectors @ item_vectors(w, positives.catalogue).T
    seen = [positives.items[u * 14:(u + 1) * 14] for u in range(150)]
    ndcg = ranking_at_k(top_k(scores, seen, 10), test)["ndcg@10"]
    untrained = FMWeights.zeros(1 << 11, 8)
    untrained.factors[:] = np.random.default_rng(0).normal(0, 0.1, untrained.factors.shape)
    before = ranking_at_k(top_k(user_side(untrained, users).vectors @ item_vectors(untrained, positives.catalogue).T,
                                seen, 10), test)["ndcg@10"]
    assert before < 0.08 and ndcg > 3 * before, (before, ndcg)


def test_softmax_runs_on_the_cpu_engine_with_adagrad():
    positives, _, _ = planted_world(users=20, per_user=4)
    for options, message in (({"engine": "torch"}, "--loss softmax runs on the cpu engine"),
                             ({"optimizer": "adam", "engine": "cpu"}, "--loss softmax trains with adagrad, not adam")):
        with pytest.raises(BadOptions, match=message):
            train_positives(positives, TrainConfig.from_options(epochs=1, **options), bits=11, negatives=4, loss="softmax")


def test_a_softmax_model_ranks_the_sample_better_than_untrained_and_recall_reads_it(tmp_path):
    """`train --items ... --loss softmax` on the sample's positives; `eval --ranking` and
    `recall` read the model as any other, and it ranks the test positives above a model
    whose weights have hardly moved from their start (--lr 1e-9)."""
    import json

    import polars as pl
    from conftest import SAMPLE, invoke

    clicks = pl.read_csv(SAMPLE / "clicks_train.csv")
    clicks.filter(pl.col("label") == 1).drop("label").write_csv(tmp_path / "positives.csv")
    base = ["train", tmp_path / "positives.csv", "--items", SAMPLE / "items.csv", "--multi", "genres", "--numeric",
            "age,year", "--loss", "softmax", "--bits", "14", "-q", "--epochs", "6"]
    ndcg = {}
    for name, extra in (("trained", []), ("untrained", ["--lr", "1e-9"])):
        model = tmp_path / f"{name}.fm"
        result = invoke(*base, *extra, "-o", model, "--json")
        assert result.exit_code == 0, result.stderr
        assert json.loads(result.stdout)["loss"] == "softmax"
        metrics = invoke("eval", SAMPLE / "clicks_test.csv", "-m", model, "--ranking", "--items", SAMPLE / "items.csv",
                         "--exclude", SAMPLE / "clicks_train.csv", "--user-id", "user_id", "--json")
        assert metrics.exit_code == 0, metrics.stderr
        ndcg[name] = json.loads(metrics.stdout)["ndcg"]
    assert ndcg["trained"] > ndcg["untrained"] + 0.02, ndcg
    top = invoke("recall", SAMPLE / "users.csv", "--items", SAMPLE / "items.csv", "-m", tmp_path / "trained.fm", "-k", "3")
    assert top.exit_code == 0, top.stderr
    assert pl.read_csv(top.stdout.encode()).height == 3 * pl.read_csv(SAMPLE / "users.csv").height


@pytest.mark.parametrize("batch, dim", [(9, 21), (128, 8), (3, 16), (6, 3)])
def test_the_item_gradient_kernel_is_the_product_it_stands_for(batch, dim):
    """softmax._by_item's passes of eight factors x four users, and what is left of
    each (the gradient test above is at dim 3, batch 3: none of the passes)."""
    from fmctr.models.softmax import _by_item

    rng = np.random.default_rng(batch)
    users = rng.normal(size=(batch, dim)).astype(np.float32)
    grad = rng.normal(size=(batch, 1300)).astype(np.float32)  # (three blocks of items, the last short)
    sums_t, terms = np.empty((dim, 1300), np.float32), np.empty(1300, np.float32)
    _by_item(users, grad, sums_t, terms)
    np.testing.assert_allclose(sums_t, grad.T.astype(np.float64).dot(users).T, atol=1e-4)
    np.testing.assert_allclose(terms, grad.astype(np.float64).sum(axis=0), atol=1e-4)
