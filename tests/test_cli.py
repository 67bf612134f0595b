"""The command line as users meet it: outputs, formats, help, real pipelines."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import polars as pl
import pytest

from conftest import CRITEO_TEST, CRITEO_TRAIN, MOVIES_FLAGS, MOVIES_TEST, MOVIES_TRAIN, SAMPLE, invoke
from fmctr.models.modelfile import load

COMMANDS = ["preprocess", "train", "tune", "eval", "predict", "info", "inspect"]


def test_every_command_has_help_and_is_in_the_readme():
    readme = (SAMPLE.parent / "README.md").read_text()
    top = invoke("--help")
    assert top.exit_code == 0
    for command in COMMANDS:
        assert command in top.stdout
        result = invoke(command, "--help")
        assert result.exit_code == 0
        assert "Usage:" in result.stdout
        assert f"fmctr {command}" in readme


def test_train_option_help_lists_defaults():
    out = invoke("train", "--help").stdout
    for option in ["--valid", "--valid-fraction", "--dim", "--epochs", "--batch-size", "--lr", "--optimizer",
                   "--l2", "--l2-factors", "--bits", "--seed", "--threads", "--preset", "--numeric", "--multi"]:
        assert option in out


def test_version():
    result = invoke("--version")
    assert (result.exit_code, result.stdout) == (0, "fmctr 0.1.0\n")


def test_eval_json_on_stdout_table_on_stderr(movies_model):
    result = invoke("eval", MOVIES_TEST, "-m", movies_model, "--json")
    assert result.exit_code == 0
    metrics = json.loads(result.stdout)
    assert set(metrics) == {"rows", "auc", "logloss", "normalized_entropy", "calibration", "positive_rate", "mean_prediction",
                            "calibration_error", "reliability"}
    assert metrics["rows"] == 1000
    table = invoke("eval", MOVIES_TEST, "-m", movies_model)
    assert table.stdout == ""
    assert "AUC" in table.stderr and f"{metrics['auc']:.4f}" in table.stderr


def test_training_beats_a_constant_predictor_clearly(movies_model, criteo_model):
    """The sample data has planted signal (truth.json: oracle AUC ~0.80)."""
    movies = json.loads(invoke("eval", MOVIES_TEST, "-m", movies_model, "--json").stdout)
    criteo = json.loads(invoke("eval", CRITEO_TEST, "-m", criteo_model, "--json").stdout)
    assert movies["auc"] > 0.70 and movies["normalized_entropy"] < 0.95
    assert criteo["auc"] > 0.70 and criteo["normalized_entropy"] < 0.95
    truth = json.loads((SAMPLE / "truth.json").read_text())
    assert criteo["auc"] < truth["criteo_like_test.tsv"]["oracle_auc"]


def test_predict_keeps_row_order_and_columns(movies_model, tmp_path):
    out = tmp_path / "p.csv"
    result = invoke("predict", MOVIES_TEST, "-m", movies_model, "--keep", "request_id", "-o", out)
    assert (result.exit_code, result.stdout) == (0, "")
    preds = pl.read_csv(out)
    source = pl.read_csv(MOVIES_TEST)
    assert preds.columns == ["request_id", "probability"]
    assert preds["request_id"].to_list() == source["request_id"].to_list()
    assert preds["probability"].is_between(0, 1).all()
    # Predictions do not depend on the label column being there.
    no_label = tmp_path / "nolabel.csv"
    source.drop("label").write_csv(no_label)
    again = invoke("predict", no_label, "-m", movies_model, "--keep", "request_id")
    assert again.stdout == out.read_text()


def test_save_load_identical_predictions(movies_model, tmp_path):
    from fmctr.models.modelfile import save
    from fmctr.datasets.inputs import open_input
    from fmctr.models.fm import probabilities

    model = load(movies_model)
    copy = tmp_path / "copy.fm"
    save(model, copy)
    assert copy.read_bytes() == movies_model.read_bytes()
    rows = open_input(str(MOVIES_TEST), schema=model.schema, hashing=model.hashing, require_label=True).all_rows()
    np.testing.assert_array_equal(probabilities(model.weights, rows), probabilities(load(copy).weights, rows))


def test_a_model_in_small_pages_holds_the_same_weights(movies_model):
    """Loading to score a short file (small pages: fmctr.tables.sparse_zeros) changes
    where the weight tables live, not what they hold."""
    usual, small = load(movies_model, training_state=False), load(movies_model, training_state=False, small_pages=True)
    def root(array):
        while isinstance(array, np.ndarray) and array.base is not None:
            array = array.base
        return array

    assert isinstance(root(usual.weights.factors), np.ndarray) and isinstance(root(small.weights.factors), memoryview)
    assert usual.weights.factors.ctypes.data % 128 == 0  # (fmctr.tables.aligned_zeros: a row never straddles a line more)
    for name in ("bias", "linear", "factors"):
        a, b = getattr(usual.weights, name), getattr(small.weights, name)
        assert a.dtype == b.dtype and b.flags.writeable and b.flags.c_contiguous
        np.testing.assert_array_equal(a, b)


def test_model_file_is_self_contained(criteo_model):
    model = load(criteo_model)
    assert model.schema.format == "criteo"
    assert model.hashing.bits == 20
    assert model.training["rows"] == 20_000
    assert model.training["fmctr_version"] == "0.1.0"
    assert model.training["config"]["model"]["dim"] == 16  # (two refits of --dim 8, merged)
    # eval needs only -m: the preset, bits and numeric mode come from the file.
    result = invoke("eval", CRITEO_TEST, "-m", criteo_model, "--json")
    assert result.exit_code == 0


def test_preprocess_then_train_equals_training_on_raw(tmp_path):
    ds = tmp_path / "train.hashed"
    result = invoke("preprocess", CRITEO_TRAIN, "--preset", "criteo", "--bits", "18", "-o", ds)
    assert result.exit_code == 0, result.stderr
    assert result.stderr.startswith("wrote 20,000 rows in ") and result.stderr.endswith(f" part(s) to {ds}\n")
    assert (ds / "manifest.json").is_file()
    a, b = tmp_path / "a.fm", tmp_path / "b.fm"
    assert invoke("train", ds, "-o", a, "-q", "--epochs", "1", "--threads", "1").exit_code == 0
    assert invoke("train", CRITEO_TRAIN, "--preset", "criteo", "--bits", "18", "-o", b, "-q", "--epochs", "1", "--threads", "1").exit_code == 0
    wa, wb = load(a).weights, load(b).weights
    np.testing.assert_array_equal(wa.factors, wb.factors)
    # eval reads the hashed dataset too
    assert json.loads(invoke("eval", ds, "-m", a, "--json").stdout)["rows"] == 20_000


def test_validation_file_and_fraction(tmp_path):
    out = tmp_path / "m.fm"
    result = invoke("train", MOVIES_TRAIN, *MOVIES_FLAGS, "-o", out, "--valid", MOVIES_TEST, "--epochs", "4")
    assert result.exit_code == 0, result.stderr
    assert "valid AUC" in result.stderr and "best epoch" in result.stderr
    training = load(out).training
    assert training["valid_rows"] == 1000 and 1 <= training["best_epoch"] <= 4
    assert training["valid_metrics"]["auc"] > 0.6
    result = invoke("train", MOVIES_TRAIN, *MOVIES_FLAGS, "-o", out, "--valid-fraction", "0.2", "-q", "--json")
    assert json.loads(result.stdout)["valid_rows"] == 1000


def test_logistic_regression_with_dim_0(tmp_path):
    out = tmp_path / "lr.fm"
    assert invoke("train", MOVIES_TRAIN, *MOVIES_FLAGS, "-o", out, "-q", "--dim", "0").exit_code == 0
    model = load(out)
    assert model.weights.dim == 0
    assert json.loads(invoke("eval", MOVIES_TEST, "-m", out, "--json").stdout)["auc"] > 0.65


def test_adam_optimizer(tmp_path):
    out = tmp_path / "adam.fm"
    result = invoke("train", MOVIES_TRAIN, *MOVIES_FLAGS, "-o", out, "-q", "--optimizer", "adam", "--lr", "0.01")
    assert result.exit_code == 0
    assert json.loads(invoke("eval", MOVIES_TEST, "-m", out, "--json").stdout)["auc"] > 0.65


def test_learning_rate_default_depends_on_the_optimizer(tmp_path):
    """Adam at Adagrad's rate of 0.03 learns next to nothing on small data; without
    --lr each optimizer gets its own default."""
    for optimizer, lr in [("adagrad", 0.03), ("adam", 3e-4), ("ftrl", 0.03)]:
        out = tmp_path / f"{optimizer}.fm"
        assert invoke("train", MOVIES_TRAIN, *MOVIES_FLAGS, "-o", out, "-q", "--optimizer", optimizer,
                      "--epochs", "3").exit_code == 0
        assert [e["lr"] for e in load(out).training["history"]] == pytest.approx([lr] * 3)
        assert json.loads(invoke("eval", MOVIES_TEST, "-m", out, "--json").stdout)["auc"] > 0.65


def test_missing_feature_column_at_predict_warns_once(movies_model, tmp_path):
    data = tmp_path / "d.csv"
    pl.read_csv(MOVIES_TEST).drop("genres").write_csv(data)
    result = invoke("predict", data, "-m", movies_model)
    assert result.exit_code == 0
    assert result.stderr == f"warning: {data}: column(s) genres missing; treated as missing values\n"
    assert len(result.stdout.splitlines()) == 1001


def fmctr_command() -> list[str]:
    return [sys.executable, "-m", "fmctr"]


def test_real_shell_pipeline(movies_model, tmp_path):
    """`cat file | fmctr predict -m model > out` in a real shell."""
    out = tmp_path / "preds.csv"
    cmd = f"cat {MOVIES_TEST} | {' '.join(fmctr_command())} predict -m {movies_model} --keep request_id > {out}"
    proc = subprocess.run(cmd, shell=True, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    lines = out.read_text().splitlines()
    assert lines[0] == "request_id,probability" and len(lines) == 1001
    direct = invoke("predict", MOVIES_TEST, "-m", movies_model, "--keep", "request_id")
    assert direct.stdout == out.read_text()


def test_gzip_on_stdin_and_a_closed_pipe(criteo_model):
    cmd = f"{' '.join(fmctr_command())} predict -m {criteo_model} < {CRITEO_TRAIN} | head -3"
    proc = subprocess.run(cmd, shell=True, capture_output=True, text=True)
    assert proc.returncode == 0
    assert proc.stdout.splitlines()[0] == "probability" and len(proc.stdout.splitlines()) == 3
    assert proc.stderr == ""


def test_sample_data_is_what_the_generator_makes():
    proc = subprocess.run([sys.executable, str(SAMPLE / "generate.py"), "--check"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_eval_prints_a_calibration_table_and_draws_a_plot(tmp_path, criteo_model):
    result = invoke("eval", CRITEO_TEST, "-m", criteo_model, "--bins", "5")
    assert result.exit_code == 0, result.stderr
    assert "calibration" in result.stderr and "observed rate" in result.stderr
    metrics = json.loads(invoke("eval", CRITEO_TEST, "-m", criteo_model, "--json", "--bins", "5").stdout)
    assert len(metrics["reliability"]) == 5 and 0 <= metrics["calibration_error"] < 0.05
    png = tmp_path / "curves.png"
    result = invoke("eval", CRITEO_TEST, "-m", criteo_model, "--plot", png)
    assert result.exit_code == 0, result.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert [p.name for p in tmp_path.iterdir()] == ["curves.png"]  # no temp files left


def test_eval_plot_must_be_png_pdf_or_svg(tmp_path, criteo_model):
    result = invoke("eval", CRITEO_TEST, "-m", criteo_model, "--plot", tmp_path / "curves.gif")
    assert result.exit_code == 1
    assert result.stderr.endswith("give a file name ending in .png, .pdf or .svg\n")
    assert not any(tmp_path.iterdir())


def test_a_few_probabilities_are_written_as_many_are():
    """Up to SMALL_ROWS probabilities reach polars as a list (which spares a short predict
    numpy.ma's import); the CSV text is that of the numpy array, bit for bit."""
    from fmctr.commands.scoring import PROBABILITY, _probability_column

    probs = np.array([0.0, 1.0, 0.5, 1e-20, 5e-324, 0.30000000000000004, 1 - 1e-16, np.nan, 1e-5, -0.0,
                      0.12345678901234568])
    few, many = _probability_column(probs).to_frame(), pl.DataFrame({PROBABILITY: probs})
    for precision in (None, 1, 3, 17):
        assert few.write_csv(float_precision=precision) == many.write_csv(float_precision=precision)
