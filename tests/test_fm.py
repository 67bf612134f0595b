"""The FM maths: closed form vs brute force, both engines, training agreement."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from fmctr.hashing.tokens import Rows
from fmctr.models.fm import logits
from fmctr.training.config import TrainConfig
from fmctr.training.loop import train
from fmctr.models.weights import FMWeights


from conftest import needs_torch, torch


def random_rows(rng, n_rows=40, n_features=50, max_len=7, labels=True) -> Rows:
    lengths = rng.integers(0, max_len + 1, n_rows)
    offsets = np.zeros(n_rows + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    indices = rng.integers(0, n_features, offsets[-1]).astype(np.int32)  # repeats included
    values = rng.normal(1.0, 0.5, offsets[-1]).astype(np.float32)
    y = (rng.random(n_rows) < 0.3).astype(np.float32) if labels else None
    return Rows(indices, values, offsets, y)


def random_weights(rng, n_features=50, dim=5) -> FMWeights:
    return FMWeights(
        rng.normal(size=1).astype(np.float32),
        rng.normal(size=n_features).astype(np.float32),
        rng.normal(size=(n_features, dim)).astype(np.float32),
    )


def brute_force(w: FMWeights, rows: Rows) -> np.ndarray:
    """bias + sum_i w_i x_i + sum_{p<q} <v_p, v_q> x_p x_q, over positions of each row."""
    out = []
    for r in range(len(rows)):
        lo, hi = rows.offsets[r], rows.offsets[r + 1]
        idx, x = rows.indices[lo:hi], rows.values[lo:hi].astype(np.float64)
        total = float(w.bias[0]) + sum(w.linear[i] * xi for i, xi in zip(idx, x))
        for p, q in itertools.combinations(range(len(idx)), 2):
            total += float(np.dot(w.factors[idx[p]].astype(np.float64), w.factors[idx[q]])) * x[p] * x[q]
        out.append(total)
    return np.array(out)


def torch_logits(w: FMWeights, rows: Rows) -> np.ndarray:
    from fmctr.models.torch_fm import FactorizationMachine

    model = FactorizationMachine.from_weights(w)
    with torch.no_grad():
        z = model(
            torch.from_numpy(rows.indices.astype(np.int64)),
            torch.from_numpy(rows.offsets[:-1]),
            torch.from_numpy(rows.values),
        )
    return z.double().numpy()


@pytest.mark.parametrize("dim", [0, 1, 5])
def test_cpu_kernel_matches_brute_force(dim):
    rng = np.random.default_rng(dim)
    w, rows = random_weights(rng, dim=dim), random_rows(rng)
    np.testing.assert_allclose(logits(w, rows), brute_force(w, rows), rtol=1e-4, atol=1e-4)


@needs_torch
@pytest.mark.parametrize("dim", [0, 1, 5])
def test_torch_embeddingbag_matches_brute_force(dim):
    rng = np.random.default_rng(10 + dim)
    w, rows = random_weights(rng, dim=dim), random_rows(rng)
    np.testing.assert_allclose(torch_logits(w, rows), brute_force(w, rows), rtol=1e-4, atol=1e-4)


def test_empty_row_is_bias_only():
    rng = np.random.default_rng(3)
    w = random_weights(rng)
    rows = Rows(np.zeros(0, np.int32), np.zeros(0, np.float32), np.zeros(3, np.int64), None)
    np.testing.assert_allclose(logits(w, rows), [w.bias[0]] * 2, rtol=1e-6)


@needs_torch
@pytest.mark.parametrize("optimizer", ["adagrad", "adam", "ftrl"])
@pytest.mark.parametrize("dim", [0, 4])
@pytest.mark.parametrize("priors", [0.0, 0.01])
def test_engines_train_to_the_same_weights(optimizer, dim, priors):
    """The fused CPU kernel and torch autograd + row-wise optimizer make the same
    updates: same init, same batches, same weights after two epochs (with and
    without --l2-all)."""
    rng = np.random.default_rng(7)
    rows = random_rows(rng, n_rows=300, n_features=64)
    cfg = TrainConfig.from_options(dim=dim, epochs=2, batch_size=16, lr=0.05, optimizer=optimizer,
                      l2_linear=0.01, l2_factors=0.02, init_std=0.1, seed=1, threads=1, l1=1.0,
                      l2_all_linear=priors, l2_all_factors=2 * priors)
    cpu = train(rows, cfg.with_options(engine="cpu"), bits=6)
    tch = train(rows, cfg.with_options(engine="torch", device="cpu"), bits=6)
    assert cpu.engine == "cpu" and tch.engine == "torch"
    for name in ("bias", "linear", "factors"):
        np.testing.assert_allclose(getattr(cpu.weights, name), getattr(tch.weights, name), rtol=1e-4, atol=1e-5)
    assert not np.allclose(cpu.weights.linear, 0)  # it did learn something
    if priors and dim:  # --l2-all shrinks the factors
        plain = train(rows, cfg.with_options(engine="cpu", l2_all_linear=0.0, l2_all_factors=0.0), bits=6)
        assert np.abs(cpu.weights.factors).sum() < 0.99 * np.abs(plain.weights.factors).sum()
    if optimizer == "ftrl":  # L1 holds some seen features' linear weights at exactly 0
        seen = np.zeros(64, bool)
        seen[rows.indices] = True
        assert 0 < np.sum(cpu.weights.linear[seen] == 0) < seen.sum()
    np.testing.assert_allclose(
        [e.train_logloss for e in cpu.history], [e.train_logloss for e in tch.history], rtol=1e-5
    )


def test_engines_agree_over_many_small_batches_with_repeated_features():
    """Hundreds of batches of 4 rows over 24 features: most features occur more than
    once in a batch, the cpu kernel's marks (kernel._mark_features) tell them from the
    ones that occur once across many batches, and their tags start over (every
    kernel.TAGS batches) several times; the torch engine makes the same updates."""
    from fmctr.models import kernel

    rng = np.random.default_rng(11)
    rows = random_rows(rng, n_rows=2_000, n_features=24)
    assert 2_000 // 4 > 4 * kernel.TAGS
    cfg = TrainConfig.from_options(dim=4, epochs=2, batch_size=4, lr=0.05, init_std=0.1, seed=3, threads=1,
                                   l2_all_factors=0.01)
    cpu = train(rows, cfg.with_options(engine="cpu"), bits=5)
    tch = train(rows, cfg.with_options(engine="torch", device="cpu"), bits=5)
    for name in ("bias", "linear", "factors"):
        np.testing.assert_allclose(getattr(cpu.weights, name), getattr(tch.weights, name), rtol=1e-4, atol=1e-5)
    assert not np.allclose(cpu.weights.linear, 0)


def test_training_is_deterministic_for_a_seed():
    rng = np.random.default_rng(8)
    rows = random_rows(rng, n_rows=200)
    cfg = TrainConfig.from_options(dim=3, epochs=2, seed=5, threads=1)
    a, b = train(rows, cfg, bits=6), train(rows, cfg, bits=6)
    np.testing.assert_array_equal(a.weights.factors, b.weights.factors)
    c = train(rows, TrainConfig.from_options(dim=3, epochs=2, seed=6, threads=1), bits=6)
    assert not np.array_equal(a.weights.factors, c.weights.factors)


def test_untouched_rows_are_zero_after_training():
    """A token never seen in training contributes nothing at predict time."""
    rows = Rows(np.array([1, 2, 1, 3], np.int32), np.ones(4, np.float32), np.array([0, 2, 4]), np.array([1, 0], np.float32))
    result = train(rows, TrainConfig.from_options(dim=2, epochs=1), bits=4)
    touched = np.zeros(16, bool)
    touched[[1, 2, 3]] = True
    assert np.all(result.weights.linear[~touched] == 0) and np.all(result.weights.factors[~touched] == 0)
    assert np.all(result.weights.factors[touched] != 0)


@pytest.mark.parametrize("threads", [1, 2])
def test_the_features_met_are_exactly_those_in_the_rows(threads):
    """The kernels mark features met in a bitmap set by two Hogwild threads at once
    (fmctr.models.kernel._first_meeting): every feature of the rows ends up marked,
    with its initial factors, and no other - neighbouring bits of one byte included."""
    rng = np.random.default_rng(11)
    rows = random_rows(rng, n_rows=3000, n_features=1 << 10, max_len=9)
    result = train(rows, TrainConfig.from_options(dim=2, epochs=1, threads=threads, batch_size=1), bits=10)
    met = np.zeros(1 << 10, bool)
    met[rows.indices] = True
    np.testing.assert_array_equal(result.optimizer["seen"], met)
    assert np.all(result.weights.factors[~met] == 0) and np.all(result.weights.factors[met] != 0)


def test_features_met_before_the_first_epoch_train_to_the_same_bits(monkeypatch):
    """With --l2-all's feature counts at hand and nothing reading the weights within an
    epoch, every feature of the rows gets its initial factors before the first epoch
    (CpuEngine.meet_in_advance) and the kernel checks none of them as it trains: the
    model is the one the kernel's own first meetings give, to the bit."""
    from fmctr.models.fm_engines import CpuEngine

    rng = np.random.default_rng(5)
    rows = random_rows(rng, n_rows=2000, n_features=1 << 9, max_len=9)
    cfg = TrainConfig.from_options(dim=4, epochs=2, threads=1, l2_all_factors=1e-3)
    calls = []
    original = CpuEngine.meet_in_advance
    monkeypatch.setattr(CpuEngine, "meet_in_advance", lambda self, counts, met=None: calls.append(original(self, counts, met)))
    ahead = train(rows, cfg, bits=9).weights
    assert len(calls) == 1
    monkeypatch.setattr(CpuEngine, "meet_in_advance", lambda self, counts, met=None: None)
    in_loop = train(rows, cfg, bits=9).weights
    for name in ("bias", "linear", "factors"):
        np.testing.assert_array_equal(getattr(ahead, name), getattr(in_loop, name))
    assert np.any(ahead.factors != 0)


def test_the_seen_bitmap_round_trips_any_length():
    from fmctr.models.weights import pack_seen, unpack_seen

    rng = np.random.default_rng(2)
    for n in (1, 7, 8, 13, 64, 1001):
        seen = rng.random(n) < 0.4
        bits = pack_seen(seen)
        assert len(bits) == (n + 7) // 8
        np.testing.assert_array_equal(unpack_seen(bits, n), seen)
        i = np.flatnonzero(seen)
        assert np.all(bits[i >> 3] >> (i & 7).astype(np.uint8) & 1 == 1)


def test_early_stopping_keeps_the_best_epoch():
    rng = np.random.default_rng(9)
    rows, valid = random_rows(rng, n_rows=400), random_rows(rng, n_rows=100)
    result = train(rows, TrainConfig.from_options(dim=4, epochs=12, patience=2, lr=0.3, seed=0), bits=6, valid=valid)
    scores = [e.valid["logloss"] for e in result.history]
    assert result.best_epoch == int(np.argmin(scores)) + 1
    assert len(result.history) <= result.best_epoch + 2
    z = logits(result.weights, valid)
    from fmctr.metrics import logloss

    assert logloss(valid.labels, 1 / (1 + np.exp(-z))) == pytest.approx(min(scores), rel=1e-9)



@pytest.mark.parametrize("warm", [False, True])
def test_validation_scores_and_keeps_the_weights_as_they_are(warm):
    """Validation keeps its copies (the one it scores, the best so far) up to date by
    copying only the rows training has met since - in a hash space far larger than the
    rows touch, as real models are (bits 12 here, 50 features). Against full copies of
    the weights taken after each epoch: every check scored those weights, and the model
    kept is the best epoch's - from zero, or warm-started from weights on every row,
    most of which training never meets."""
    from fmctr.metrics import logloss
    from fmctr.training.loop import Start

    rng = np.random.default_rng(9)
    rows, valid = random_rows(rng, n_rows=400), random_rows(rng, n_rows=100)
    start = Start(random_weights(rng, n_features=1 << 12, dim=4)) if warm else None
    after = []
    cfg = TrainConfig.from_options(dim=4, epochs=8, patience=3, lr=0.3, seed=0, threads=1)
    result = train(rows, cfg, bits=12, valid=valid, start=start, on_epoch=lambda record, w: after.append(w.copy()))
    for epoch, w in zip(result.history, after):
        assert epoch.valid["logloss"] == logloss(valid.labels, 1 / (1 + np.exp(-logits(w, valid))))
    best = after[result.best_epoch - 1]
    assert result.best_epoch < len(after)  # later epochs were worse: the weights kept are older ones
    for name in ("bias", "linear", "factors"):
        np.testing.assert_array_equal(getattr(result.weights, name), getattr(best, name))

@needs_torch
def test_torch_scorer_matches_the_cpu_kernel():
    """Scoring on a GPU runs the torch model; on a CPU the kernel. Same numbers."""
    from fmctr.models.kinds import scorer

    rng = np.random.default_rng(11)
    w, rows = random_weights(rng, dim=4), random_rows(rng)
    np.testing.assert_allclose(scorer(w, device="cpu", engine="torch")(rows), scorer(w, device="cpu")(rows), rtol=1e-5, atol=1e-6)


@needs_torch
def test_cuda_device_without_cuda_is_a_clear_error(movies_model):
    from conftest import MOVIES_TEST, invoke

    result = invoke("eval", MOVIES_TEST, "-m", movies_model, "--device", "cuda")
    assert (result.exit_code, result.stderr) == (1, "error: --device cuda: CUDA is not available on this machine\n")


def test_validation_every_n_rows_decays_the_rate_and_keeps_the_best():
    """--valid-every checks within epochs; a check that does not improve halves the
    learning rate (--lr-decay 0.5); the model returned is the best check's."""
    rng = np.random.default_rng(12)
    rows, valid = random_rows(rng, n_rows=600), random_rows(rng, n_rows=150)
    seen = []
    result = train(rows, TrainConfig.from_options(dim=4, epochs=6, patience=3, lr=0.5, seed=0, threads=1, valid_every=200,
                                     lr_decay=0.5),
                   bits=6, valid=valid, on_epoch=lambda record, weights: seen.append(weights.copy()))
    checks = [c for e in result.history for c in e.checks]
    assert len(checks) >= 3 * len(result.history) - 1  # ~3 per 600-row epoch
    for before, after in zip(checks, checks[1:]):  # the rate halves exactly after non-improving checks
        assert after["lr"] == (before["lr"] if after["best"] else before["lr"] / 2)
    assert any(not c["best"] for c in checks)  # lr 0.5 overfits these random rows
    best = min(checks, key=lambda c: c["logloss"])
    z = logits(result.weights, valid)
    from fmctr.metrics import logloss

    assert logloss(valid.labels, 1 / (1 + np.exp(-z))) == pytest.approx(best["logloss"], rel=1e-9)
    assert result.best_epoch == best["epoch"]


def test_scores_are_the_same_bits_in_numpy_and_in_the_kernel():
    """predict and eval score a few rows with numpy and many with the compiled kernel;
    a row must get the same float64 either way (so its score does not depend on how
    many rows came with it): random models and rows, numeric values, empty rows, dim 0."""
    from fmctr.models import kernel, scores

    rng = np.random.default_rng(7)
    for dim in (0, 1, 8, 16):
        w = random_weights(rng, n_features=300, dim=dim)
        rows = random_rows(rng, n_rows=500, n_features=300, max_len=30)
        small = scores.small_logits(w.bias, w.linear, w.factors, rows.indices, rows.values, rows.offsets)
        big = np.empty(len(rows))
        kernel.fm_scores(rows.indices, rows.values, rows.offsets, w.bias, w.linear, w.factors, big)
        assert np.array_equal(small, big)
        np.testing.assert_allclose(small, brute_force(w, rows)[: len(rows)], rtol=1e-9, atol=1e-9)


def test_quote_check_is_the_same_in_python_and_compiled():
    from fmctr.reading import quotes

    rng = np.random.default_rng(3)
    for _ in range(2000):
        data = bytes(rng.choice(list(b'ab,"\n'), size=rng.integers(0, 40)))
        assert quotes.open_quote_line(data) == quotes.compiled()(np.frombuffer(data, np.uint8))


@pytest.mark.parametrize("optimizer, l2_all", [("adagrad", 1e-3), ("adagrad", 0.0), ("adam", 1e-3)])
def test_few_features_train_to_the_same_bits_in_tables_laid_out_for_them(monkeypatch, optimizer, l2_all):
    """300 rows over a 2^18 table hold under an eighth of its size in indices: training
    counts their features by sorting them (RowSource.few_features) and lays the engine's
    tables out for those rows alone (fmctr.tables.sparse_zeros), and FM.merged combines
    only the rows the runs met. Weights, optimizer state, a held-out run's best epoch
    and two runs merged are those of the usual tables, to the bit."""
    from fmctr.datasets.batches import RowSource
    from fmctr.models.fm import FM

    rng = np.random.default_rng(11)
    rows, valid = (random_rows(rng, n_rows=n, n_features=1 << 18, max_len=6) for n in (300, 100))
    cfg = TrainConfig.from_options(dim=4, epochs=3, threads=1, optimizer=optimizer, l2_all_factors=l2_all)

    def runs():
        plain, held = train(rows, cfg, bits=18), train(rows, cfg, bits=18, valid=valid)
        return plain, held, FM().merged([plain.weights, held.weights], [plain.optimizer, held.optimizer])

    few = runs()
    assert few[0].weights.met is not None and few[2][0].met is not None  # (the few rows' path was taken)
    monkeypatch.setattr(RowSource, "few_features", lambda self, size: None)
    usual = runs()
    assert usual[0].weights.met is None
    for (w1, o1), (w2, o2) in [((r.weights, r.optimizer), (u.weights, u.optimizer)) for r, u in zip(few[:2], usual[:2])] \
            + [(few[2], usual[2])]:
        for name in ("bias", "linear", "factors"):
            np.testing.assert_array_equal(getattr(w1, name), getattr(w2, name))
        for name in ("bias", "linear1", "linear2", "factors1", "factors2", "seen"):
            np.testing.assert_array_equal(o1[name], o2[name])
    assert few[1].best_epoch == usual[1].best_epoch and np.any(few[2][0].factors != 0)
