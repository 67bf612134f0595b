"""Interrupted training resumes exactly; warm starts continue from a model."""

from __future__ import annotations

import gzip
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import CRITEO_TRAIN, MOVIES_TEST, MOVIES_TRAIN, invoke
from fmctr.models.modelfile import load

ARGS = ["--preset", "criteo", "--threads", "1", "--epochs", "3", "--bits", "18", "-q"]


@pytest.fixture(scope="module")
def data_100k(tmp_path_factory):
    """100k rows: two shuffle blocks per epoch, so a stop can fall inside an epoch."""
    path = tmp_path_factory.mktemp("data") / "c100k.tsv"
    path.write_bytes(gzip.decompress(CRITEO_TRAIN.read_bytes()) * 5)
    return path


VALIDATING = ["--valid-fraction", "0.2", "--valid-every", "20000", "--lr-decay", "0.5", "--min-count", "3"]


@pytest.mark.parametrize("sig,code,extra", [(signal.SIGTERM, 143, []), (signal.SIGINT, 130, []),
                                            (signal.SIGTERM, 143, VALIDATING)])
def test_killed_run_resumes_to_the_same_model(tmp_path, data_100k, sig, code, extra):
    """Also with checks within epochs, learning-rate decay and --min-count: the
    checkpoint carries the best weights, the decayed rate and the rare-value map."""
    full = tmp_path / "full.fm"
    result = invoke("train", data_100k, "-o", full, *ARGS, *extra)
    assert result.exit_code == 0, result.stderr

    out = tmp_path / "m.fm"
    ckpt = tmp_path / "m.fm.ckpt"
    proc = subprocess.Popen([sys.executable, "-m", "fmctr", "train", str(data_100k), "-o", str(out), *ARGS, *extra,
                             "--checkpoint-every", "0.01"], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)  # the first periodic checkpoint: training has begun
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code, stderr
    assert stderr.startswith("error: interrupted in epoch ")
    assert stderr.endswith(f"; checkpoint written to {ckpt}; resume with: fmctr train --resume {ckpt}\n")
    assert not out.exists()
    assert load(ckpt).checkpoint["rows_done"] < 100_000 * 3

    result = invoke("train", "--resume", ckpt, "-q")
    assert result.exit_code == 0, result.stderr
    assert not ckpt.exists()  # superseded by the model
    a, b = load(out), load(full)
    for name in ("bias", "linear", "factors"):
        np.testing.assert_array_equal(getattr(a.weights, name), getattr(b.weights, name))
    assert a.training["epochs_run"] == b.training["epochs_run"] == (3 if not extra else b.training["epochs_run"])
    assert [e["lr"] for e in a.training["history"]] == [e["lr"] for e in b.training["history"]]
    if extra:
        assert a.training["history"][0]["checks"] and a.training["best_epoch"] == b.training["best_epoch"]
        np.testing.assert_array_equal(a.rare.frequent, b.rare.frequent)


def test_resume_needs_a_checkpoint(movies_model):
    result = invoke("train", "--resume", movies_model)
    assert (result.exit_code, result.stderr) == (1, f"error: {movies_model}: not a checkpoint (a model file continues with --model)\n")


def test_warm_start_continues_with_the_optimizer_state(tmp_path, movies_model):
    out = tmp_path / "more.fm"
    result = invoke("train", MOVIES_TEST, "-m", movies_model, "-o", out, "-q", "--epochs", "1")
    assert result.exit_code == 0, result.stderr
    old, new = load(movies_model), load(out)
    assert new.training["warm_start"] == str(MOVIES_TRAIN)
    assert new.schema == old.schema and new.hashing == old.hashing
    assert new.optimizer["step"] > old.optimizer["step"]  # the step count went on
    # Accumulators only grow under Adagrad: the state was carried, not restarted.
    seen = old.optimizer["seen"]
    assert np.all(new.optimizer["factors1"][seen] >= old.optimizer["factors1"][seen])


@pytest.mark.parametrize("flags,message", [
    (["--bits", "18"], "error: the model hashes with bits=22 seed=0; --bits 18 --hash-seed 0 conflict with it\n"),
    (["--dim", "4"], "error: the model has --dim 16; --dim 4 conflicts with it\n"),
    (["--optimizer", "adam"], "error: the model was trained with --optimizer adagrad; --optimizer adam conflicts with it\n"),
    (["--numeric", "price"], "error: --model takes the schema from the model: give no schema options\n"),
])
def test_warm_start_refuses_a_mismatch(tmp_path, movies_model, flags, message):
    result = invoke("train", MOVIES_TEST, "-m", movies_model, "-o", tmp_path / "x.fm", *flags)
    assert (result.exit_code, result.stderr) == (1, message)


def test_warm_start_on_data_without_the_models_columns(tmp_path, movies_model):
    other = tmp_path / "other.csv"
    other.write_text("label,site\n1,a\n0,b\n")
    result = invoke("train", other, "-m", movies_model, "-o", tmp_path / "x.fm", "-q")
    assert result.exit_code == 0
    assert result.stderr == f"warning: {other}: column(s) user, item, genres, price missing; treated as missing values\n"
