"""A numeric column of measurements (fractional values) gets, beside its bucket, its
standardised value as a second feature (fmctr.hashing.standard): fitted on the
training rows, stored in the model, applied alike by eval and predict."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from fmctr.datasets.inputs import open_input
from fmctr.errors import BadSchema
from fmctr.hashing.standard import signed_log
from fmctr.hashing.tokens import VALUE_TOKEN, HashSpec, hash_chunk, token_index
from fmctr.models.modelfile import load
from fmctr.reading.read import Chunk
from fmctr.reading.schema import Field, Schema, SchemaSpec

from conftest import invoke, train_and_load_schema


def measurements(rows: int, seed: int) -> pl.DataFrame:
    """Five fractional measurements that act on the label linearly, one count that does
    not, and a category."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, (rows, 5))
    logit = x @ np.array([1.5, -1.0, 0.8, 0.5, -0.5]) - 0.3
    y = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(int)
    frame = {"label": y, **{f"m{j}": np.round(np.exp(0.3 * x[:, j]) * 20, 3) for j in range(5)}}
    frame["count"] = rng.poisson(3, rows)
    frame["shop"] = [f"s{s}" for s in rng.integers(0, 5, rows)]
    return pl.DataFrame(frame)


NUMERIC = ["--numeric", "m0,m1,m2,m3,m4,count"]


def test_fractional_columns_get_a_standardised_value_fitted_on_the_training_rows(tmp_path):
    data = measurements(500, 0)
    data.write_csv(tmp_path / "train.csv")
    inp = open_input(str(tmp_path / "train.csv"), spec=SchemaSpec(numeric=tuple(f"m{j}" for j in range(5)) + ("count",)),
                     require_label=True)
    fields = {f.name: f for f in inp.schema.fields}
    assert fields["count"].standard is None and fields["shop"].standard is None  # whole numbers; a category
    t = signed_log(data["m0"].to_numpy())
    assert fields["m0"].standard == pytest.approx((t.mean(), t.std()))
    rows = inp.all_rows()
    # 7 fields, then the 5 standardised values, on each field's value index
    assert np.diff(rows.offsets).tolist() == [12] * 500
    first = rows.indices[7:12].tolist()
    assert first == [token_index(f"m{j}", VALUE_TOKEN, inp.hashing) for j in range(5)]
    z = (t - t.mean()) / t.std()
    assert np.allclose(rows.values[7::12], z, atol=1e-5)


def test_a_missing_value_is_zero_and_extremes_are_clipped():
    schema = Schema("label", (Field("m", "numeric", "auto", standard=(0.0, 0.1)),))
    c = Chunk(pl.DataFrame({"label": ["1", "0", "1"], "m": ["0.5", "", "-1e6"]}), first_line=2)
    rows = hash_chunk(c, schema, HashSpec(bits=20), name="t", columns=["label", "m"], require_label=True)
    assert rows.values.reshape(3, 2)[:, 1].tolist() == pytest.approx([np.log1p(0.5) / 0.1, 0.0, -5.0])


def test_fine_mode_and_whole_numbers_keep_buckets_only(tmp_path):
    measurements(300, 1).write_csv(tmp_path / "train.csv")
    model = tmp_path / "fine.fm"
    result = invoke("train", tmp_path / "train.csv", *NUMERIC, "--numeric-mode", "fine", "-o", model, "--epochs", "1", "-q")
    assert result.exit_code == 0, result.stderr
    assert all(f.standard is None for f in load(model).schema.fields)


def test_the_model_keeps_the_fit_and_predict_applies_it(tmp_path):
    model, stored = train_and_load_schema(tmp_path, measurements(400, 2), measurements(50, 3), *NUMERIC)
    assert [f.name for f in stored.fields if f.standard] == [f"m{j}" for j in range(5)]
    scored = invoke("predict", tmp_path / "test.csv", "-m", model)
    assert scored.exit_code == 0, scored.stderr
    p = pl.read_csv(scored.stdout.encode())["probability"].to_numpy()
    # the test file's own statistics differ; its z must use the training rows' fit
    shifted = measurements(50, 3).with_columns(pl.col("m0") * 10)
    shifted.write_csv(tmp_path / "shifted.csv")
    q = pl.read_csv(invoke("predict", tmp_path / "shifted.csv", "-m", model).stdout.encode())["probability"].to_numpy()
    assert len(p) == 50 and np.abs(p - q).max() > 1e-3


@pytest.mark.parametrize("bad", [[0.0], [0.0, 0.0], [0.0, "x"], [0.0, float("nan")], "ab"])
def test_a_stored_standard_is_read_as_untrusted(bad):
    d = Schema("label", (Field("m", "numeric", "auto", standard=(0.0, 1.0)),)).to_dict()
    d["fields"][0]["standard"] = bad
    with pytest.raises(BadSchema, match="standard"):
        Schema.from_dict(d)


def test_measurements_are_learnt_better_with_their_values(tmp_path):
    """500 rows whose label is linear in five measurements: buckets alone split each
    into many thin tokens; the standardised value learns the slope."""
    measurements(500, 4).write_csv(tmp_path / "train.csv")
    measurements(4000, 5).write_csv(tmp_path / "test.csv")
    auc = {}
    for mode in ("fine", "auto"):
        model = tmp_path / f"{mode}.fm"
        result = invoke("train", tmp_path / "train.csv", *NUMERIC, "--numeric-mode", mode, "-o", model, "-q",
                        "--threads", "1")
        assert result.exit_code == 0, result.stderr
        auc[mode] = json.loads(invoke("eval", tmp_path / "test.csv", "-m", model, "--json").stdout)["auc"]
    assert auc["auto"] > auc["fine"] + 0.02, auc


def test_min_count_maps_rare_values_beside_standardised_ones(tmp_path):
    measurements(400, 6).write_csv(tmp_path / "train.csv")
    model = tmp_path / "rare.fm"
    result = invoke("train", tmp_path / "train.csv", *NUMERIC, "--min-count", "5", "-o", model, "--epochs", "1", "-q")
    assert result.exit_code == 0, result.stderr
    assert invoke("eval", tmp_path / "train.csv", "-m", model, "--json").exit_code == 0


def test_only_a_numeric_field_has_a_standardised_value():
    d = Schema("label", (Field("m", "numeric", "auto", standard=(0.0, 1.0)),)).to_dict()
    d["fields"][0]["kind"] = "categorical"
    with pytest.raises(BadSchema, match="only a numeric field"):
        Schema.from_dict(d)


def test_the_inputs_of_one_preprocess_share_the_first_ones_fit(tmp_path):
    measurements(300, 7).write_csv(tmp_path / "a.csv")
    measurements(300, 8).with_columns(pl.col("m0") * 3).write_csv(tmp_path / "b.csv")
    result = invoke("preprocess", tmp_path / "a.csv", tmp_path / "b.csv", *NUMERIC, "-o", tmp_path / "shards")
    assert result.exit_code == 0, result.stderr
    from fmctr.datasets.hashed import open_many

    shards = open_many(tmp_path / "shards")
    assert shards[0].schema == shards[1].schema and shards[0].schema.fields[0].standard is not None
    assert invoke("train", tmp_path / "shards", "-o", tmp_path / "m.fm", "--epochs", "1", "-q").exit_code == 0


def test_the_fit_reads_past_a_small_first_chunk(tmp_path):
    """Text's first chunk is 64 KiB: a few hundred wide rows. The fit reads ahead to
    65,536 rows (here: all 3,000), and every row is still hashed once."""
    data = measurements(3000, 9).with_columns(note=pl.lit("x" * 300))
    data.write_csv(tmp_path / "wide.csv")
    inp = open_input(str(tmp_path / "wide.csv"), spec=SchemaSpec(numeric=("m0",), ignore=("note",)), require_label=True)
    t = signed_log(data["m0"].to_numpy())
    assert inp.schema.fields[0].standard == pytest.approx((t.mean(), t.std()))
    assert len(inp.all_rows()) == 3000


def test_explain_names_a_standardised_value_apart_from_its_bucket(tmp_path):
    measurements(300, 10).write_csv(tmp_path / "train.csv")
    model = tmp_path / "m.fm"
    assert invoke("train", tmp_path / "train.csv", *NUMERIC, "-o", model, "--epochs", "2", "-q").exit_code == 0
    result = invoke("predict", tmp_path / "train.csv", "-m", model, "--explain", "40")
    assert result.exit_code == 0, result.stderr
    frame = pl.read_csv(result.stdout.encode(), infer_schema_length=0)
    names = [n for j in range(1, 41) for n in frame[f"term_{j}"].drop_nulls().to_list() if "*" not in n]
    values = [n for n in names if n.endswith(" (value)")]
    assert values and all(n.split("=")[0] in {f"m{j}" for j in range(5)} for n in values)
    assert any(n.startswith("m0=") and not n.endswith(" (value)") for n in names)  # its bucket, named apart


def test_the_standard_mode_puts_the_value_alone_on_the_field(tmp_path):
    """--numeric-mode standard: one position per field, the value index with z (the
    missing token with 1 where missing), fitted on whole numbers too; the model keeps
    the fit and predict applies it."""
    data = measurements(300, 4)
    data.write_csv(tmp_path / "train.csv")
    spec = SchemaSpec(numeric=("m0", "count"), ignore=("m1", "m2", "m3", "m4"), numeric_mode="standard")
    inp = open_input(str(tmp_path / "train.csv"), spec=spec, require_label=True)
    fields = {f.name: f for f in inp.schema.fields}
    for name in ("m0", "count"):
        t = signed_log(data[name].to_numpy().astype(float))
        assert fields[name].standard == pytest.approx((t.mean(), t.std()))
    rows = inp.all_rows()
    assert np.diff(rows.offsets).tolist() == [3] * 300  # m0, count, shop: no buckets, no second feature
    at = [f.name for f in inp.schema.fields].index("m0")
    assert set(rows.indices[at::3].tolist()) == {token_index("m0", VALUE_TOKEN, inp.hashing)}
    t = signed_log(data["m0"].to_numpy())
    assert np.allclose(rows.values[at::3], (t - t.mean()) / t.std(), atol=1e-5)

    schema = Schema("label", (Field("m", "numeric", "standard", standard=(0.0, 0.1)),))
    c = Chunk(pl.DataFrame({"label": ["1", "0"], "m": ["0.5", ""]}), first_line=2)
    two = hash_chunk(c, schema, HashSpec(bits=20), name="t", columns=["label", "m"], require_label=True)
    assert two.indices.tolist() == [token_index("m", VALUE_TOKEN, HashSpec(bits=20)), token_index("m", "", HashSpec(bits=20))]
    assert two.values.tolist() == pytest.approx([np.log1p(0.5) / 0.1, 1.0])

    model = tmp_path / "standard.fm"
    flags = ["--numeric", "m0,count", "--ignore", "m1,m2,m3,m4", "--numeric-mode", "standard"]
    assert invoke("train", tmp_path / "train.csv", *flags, "-o", model, "--epochs", "2", "-q").exit_code == 0
    assert [f.numeric for f in load(model).schema.fields if f.kind == "numeric"] == ["standard", "standard"]
    scored = invoke("predict", tmp_path / "train.csv", "-m", model)
    assert scored.exit_code == 0, scored.stderr
    with pytest.raises(BadSchema, match="center and scale"):  # a stored field of this mode without its fit
        Schema.from_dict({"label": "label", "fields": [{"name": "m", "kind": "numeric", "numeric": "standard"}]})
