"""Rows with a bag of words or tags are scaled to one norm (fmctr.hashing.rownorm):
the training rows' mean squared norm, fitted once, stored in the model, applied alike
by every command that hashes rows for it."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from fmctr.datasets.inputs import open_input
from fmctr.errors import BadSchema
from fmctr.hashing.rownorm import scaled, squared_norms
from fmctr.hashing.tokens import Rows
from fmctr.models.modelfile import load
from fmctr.reading.schema import Field, Schema, SchemaSpec

from conftest import invoke, train_and_load_schema


def reviews(rows: int, seed: int) -> pl.DataFrame:
    """A shop, an age and a bag of 1-60 words; the label follows two of the words."""
    rng = np.random.default_rng(seed)
    vocab = [f"w{j}" for j in range(300)]
    lengths = rng.integers(1, 61, rows)
    words = [rng.choice(vocab, n, replace=False) for n in lengths]
    logit = np.array([1.5 * ("w1" in w) - 1.5 * ("w2" in w) for w in words]) + rng.normal(0, 0.5, rows)
    return pl.DataFrame({
        "label": (logit > 0).astype(int),
        "shop": [f"s{s}" for s in rng.integers(0, 5, rows)],
        "age": rng.integers(18, 80, rows),
        "words": ["|".join(w) for w in words],
    })


SCHEMA = ["--numeric", "age", "--multi", "words"]


def test_each_row_is_scaled_to_the_norm_and_an_empty_row_is_left_alone():
    rows = Rows(np.arange(6, dtype=np.int32), np.array([1, 1, 1, 3, 4, 0], np.float32),
                np.array([0, 3, 5, 5, 6]), None)
    assert squared_norms(rows).tolist() == [3.0, 25.0, 0.0, 0.0]
    out = scaled(rows, 4.0)
    assert np.allclose(squared_norms(out), [4.0, 4.0, 0.0, 0.0])
    assert np.allclose(out.values[:5], [2 / 3 ** 0.5] * 3 + [1.2, 1.6])
    assert out.indices is rows.indices and np.array_equal(rows.values, [1, 1, 1, 3, 4, 0])  # not written in place


def test_the_norm_is_the_training_rows_mean_and_every_row_gets_it(tmp_path):
    data = reviews(500, 0)
    data.write_csv(tmp_path / "train.csv")
    inp = open_input(str(tmp_path / "train.csv"), spec=SchemaSpec(numeric=("age",), multi=("words",)),
                     require_label=True)
    lengths = data["words"].str.split("|").list.len().to_numpy()
    assert inp.schema.row_norm == pytest.approx(np.mean(2 + lengths))  # shop, age's bucket, each word: value 1
    rows = inp.all_rows()
    assert np.allclose(squared_norms(rows), inp.schema.row_norm, rtol=1e-5)
    assert np.allclose(rows.values[rows.offsets[0]:rows.offsets[1]], (inp.schema.row_norm / (2 + lengths[0])) ** 0.5)


@pytest.mark.parametrize("spec", [SchemaSpec(numeric=("age",)), SchemaSpec(numeric=("age",), multi=("words",),
                                                                            row_norm=False),
                                  SchemaSpec(multi=("words",), user=("shop",), item=("words",))])
def test_no_norm_without_a_bag_when_asked_or_for_recall(tmp_path, spec):
    reviews(200, 1).drop("words" if not spec.multi else []).write_csv(tmp_path / "train.csv")
    inp = open_input(str(tmp_path / "train.csv"), spec=spec, require_label=True)
    assert inp.schema.row_norm is None
    assert np.all(inp.all_rows().values[:2] == 1.0)  # shop and the first row's next feature, as hashed


def test_the_model_keeps_the_norm_and_every_path_applies_it(tmp_path):
    model, stored = train_and_load_schema(tmp_path, reviews(600, 2), reviews(100, 3), *SCHEMA)
    assert stored.row_norm is not None
    raw = invoke("predict", tmp_path / "test.csv", "-m", model)
    assert raw.exit_code == 0, raw.stderr
    # the training rows hashed once by preprocess (fitted there) train the same model bits
    hashed = invoke("preprocess", tmp_path / "train.csv", *SCHEMA, "-o", tmp_path / "train.hashed")
    assert hashed.exit_code == 0, hashed.stderr
    one, two = tmp_path / "one.fm", tmp_path / "two.fm"
    for source, out in ((tmp_path / "train.csv", one), (tmp_path / "train.hashed", two)):
        extra = SCHEMA if source.suffix == ".csv" else []
        result = invoke("train", source, *extra, "-o", out, "--epochs", "2", "--threads", "1", "-q")
        assert result.exit_code == 0, result.stderr
    a, b = load(one), load(two)
    assert a.schema.row_norm == b.schema.row_norm == stored.row_norm
    assert np.array_equal(a.weights.linear, b.weights.linear) and np.array_equal(a.weights.factors, b.weights.factors)
    off = tmp_path / "off.fm"
    assert invoke("train", tmp_path / "train.csv", *SCHEMA, "--no-row-norm", "-o", off, "--epochs", "2",
                  "-q").exit_code == 0
    assert load(off).schema.row_norm is None
    p = pl.read_csv(raw.stdout.encode())["probability"].to_numpy()
    q = pl.read_csv(invoke("predict", tmp_path / "test.csv", "-m", off).stdout.encode())["probability"].to_numpy()
    assert len(p) == 100 and np.abs(p - q).max() > 1e-3


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), "3", True])
def test_a_stored_norm_is_read_as_untrusted(bad):
    d = Schema("label", (Field("words", "multi"),), row_norm=3.0).to_dict()
    d["row_norm"] = bad
    with pytest.raises(BadSchema, match="row_norm"):
        Schema.from_dict(d)


def test_a_schema_file_may_turn_it_off(tmp_path):
    reviews(200, 4).write_csv(tmp_path / "train.csv")
    (tmp_path / "s.toml").write_text('numeric = ["age"]\nmulti = ["words"]\nrow_norm = false\n')
    model = tmp_path / "m.fm"
    result = invoke("train", tmp_path / "train.csv", "--schema", tmp_path / "s.toml", "-o", model, "--epochs", "1", "-q")
    assert result.exit_code == 0, result.stderr
    assert load(model).schema.row_norm is None
    (tmp_path / "bad.toml").write_text('multi = ["words"]\nrow_norm = "yes"\n')
    result = invoke("train", tmp_path / "train.csv", "--schema", tmp_path / "bad.toml", "-o", model, "-q")
    assert result.exit_code != 0 and "row_norm must be true or false" in result.stderr
