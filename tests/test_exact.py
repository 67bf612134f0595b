"""Whole numbers as tokens of their own (the numeric mode `exact`), and the held-out
rows choosing it over the buckets alone (fmctr.training.selection.exact_fields)."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from fmctr.datasets.inputs import open_input
from fmctr.hashing.standard import signed_log
from fmctr.hashing.tokens import VALUE_TOKEN, HashSpec, hash_chunk, token_index
from fmctr.models.modelfile import load
from fmctr.reading.read import Chunk
from fmctr.reading.schema import Field, Schema, SchemaSpec
from fmctr.training import selection
from fmctr.training.config import TrainConfig

from conftest import invoke, train_and_load_schema

SPEC = HashSpec(bits=20)


def gains(rows: int, seed: int) -> pl.DataFrame:
    """A count whose few special values (37, 101, 150) are almost always positive while
    their neighbours are not - as adult's capital gains - and a category."""
    rng = np.random.default_rng(seed)
    count = rng.integers(0, 200, rows)
    special = np.isin(count, [37, 101, 150])
    shop = rng.integers(0, 5, rows)
    p = np.where(special, 0.95, 1 / (1 + np.exp(-(shop - 2) * 0.5 + 1.0)))
    return pl.DataFrame({"label": (rng.random(rows) < p).astype(int), "count": count, "shop": [f"s{s}" for s in shop]})


def test_the_value_token_follows_the_standardised_values_and_precedes_the_bags():
    schema = Schema("label", (Field("m", "numeric", "auto", standard=(0.0, 1.0)), Field("c", "numeric", "exact"),
                              Field("g", "multi")))
    frame = pl.DataFrame({"label": ["1", "0", "1"], "m": ["0.5", "", "2"], "c": ["7", "", " 7.0"], "g": ["a|b", "a", "b"]})
    rows = hash_chunk(Chunk(frame, first_line=2), schema, SPEC, name="t", columns=frame.columns, require_label=True)
    assert schema.segments() == [(0, ""), (1, ""), (0, "value"), (1, "exact"), (2, "")]
    first = rows.indices[rows.offsets[0]:rows.offsets[1]].tolist()
    assert first[2] == token_index("m", VALUE_TOKEN, SPEC)
    assert first[3] == token_index("c", "=7", SPEC) and first[4:] == [token_index("g", t, SPEC) for t in "ab"]
    missing = rows.indices[rows.offsets[1]:rows.offsets[2]].tolist()
    assert missing[3] == token_index("c", "=", SPEC)  # a token of its own, not the bucket's missing one
    assert rows.indices[rows.offsets[2] + 3] == first[3]  # " 7.0" is the number 7
    assert rows.values[rows.offsets[0] + 3] == 1.0


def test_the_exact_mode_is_stored_and_predict_hashes_as_training_did(tmp_path):
    model, stored = train_and_load_schema(tmp_path, gains(600, 1), gains(100, 2), "--numeric", "count",
                                          "--numeric-mode", "exact")
    [count] = [f for f in stored.fields if f.kind == "numeric"]
    t = signed_log(gains(600, 1)["count"].to_numpy().astype(float))
    assert count.numeric == "exact" and count.standard == pytest.approx((t.mean(), t.std()))  # (whole numbers too)
    rows = open_input(str(tmp_path / "test.csv"), schema=stored, hashing=load(model).hashing, require_label=True).all_rows()
    assert np.diff(rows.offsets).tolist() == [4] * 100  # count's bucket, shop, count's z, count's value token
    scored = invoke("eval", tmp_path / "test.csv", "-m", model, "--json")
    assert scored.exit_code == 0, scored.stderr
    explained = invoke("predict", tmp_path / "test.csv", "-m", model, "--explain", "20")
    assert explained.exit_code == 0, explained.stderr
    frame = pl.read_csv(explained.stdout.encode(), infer_schema_length=0)
    names = {n for j in range(1, 21) for n in frame[f"term_{j}"].drop_nulls().to_list() if "*" not in n}
    assert any(n.startswith("count=") and n.endswith(" (exact)") for n in names)  # the value token, named apart
    assert any(n.startswith("count=") and not n.endswith(")") for n in names)  # its bucket


def test_the_rival_is_whole_number_auto_columns_only():
    fields = (Field("n", "numeric", "auto"), Field("m", "numeric", "auto", standard=(0.0, 1.0)),
              Field("b", "numeric", "bucket"), Field("c", "categorical"))
    schema = Schema("label", fields)
    assert selection.exact_fields(schema, TrainConfig()) == ["n"]
    assert selection.exact_fields(schema, TrainConfig().with_options(rivals=["rate"])) == []
    assert [f.numeric for f in selection.with_exact(schema, ["n"]).fields] == ["exact", "auto", "bucket", "bucket"]


def test_held_out_rows_keep_the_values_where_single_values_act_alone(tmp_path):
    gains(6000, 3).write_csv(tmp_path / "train.csv")
    gains(4000, 4).write_csv(tmp_path / "test.csv")
    model = tmp_path / "m.fm"
    result = invoke("train", tmp_path / "train.csv", "--numeric", "count", "-o", model, "--threads", "1",
                    "--rivals")
    assert result.exit_code == 0, result.stderr
    assert "--numeric-mode exact" in result.stderr
    loaded = load(model)
    assert loaded.training["selection"]["rivals"]["kept"][-1:] == ["exact"]
    assert [f.numeric for f in loaded.schema.fields if f.kind == "numeric"] == ["exact"]
    assert invoke("eval", tmp_path / "test.csv", "-m", model, "--json").exit_code == 0


@pytest.mark.parametrize("flags", [["--numeric-mode", "auto"], ["--numeric-mode", "fine"], ["--no-rivals"]])
def test_a_given_numeric_mode_rules_the_rival_out(tmp_path, flags):
    gains(3000, 5).write_csv(tmp_path / "train.csv")
    model = tmp_path / "m.fm"
    result = invoke("train", tmp_path / "train.csv", "--numeric", "count", "-o", model, "-q", "--threads", "1", *flags)
    assert result.exit_code == 0, result.stderr
    assert "exact" not in (load(model).training["selection"].get("rivals") or {}).get("tried", [])


def test_a_hashed_dataset_is_not_hashed_again(tmp_path):
    gains(3000, 6).write_csv(tmp_path / "train.csv")
    assert invoke("preprocess", tmp_path / "train.csv", "--numeric", "count", "-o", tmp_path / "h").exit_code == 0
    result = invoke("train", tmp_path / "h", "-o", tmp_path / "m.fm", "-q", "--threads", "1")
    assert result.exit_code == 0, result.stderr
    assert "exact" not in load(tmp_path / "m.fm").training["selection"]["rivals"]["tried"]


def test_hashed_again_the_standardised_values_and_the_row_norm_are_fitted_again(tmp_path):
    data = gains(300, 7).with_columns(tags=pl.lit("a|b|c"))
    data.write_csv(tmp_path / "train.csv")
    base = open_input(str(tmp_path / "train.csv"), spec=SchemaSpec(numeric=("count",), multi=("tags",)), require_label=True)
    exact = selection.with_exact(base.schema, ["count"])
    again = open_input(str(tmp_path / "train.csv"), schema=exact, hashing=base.hashing, require_label=True, refit=True)
    assert base.schema.row_norm == pytest.approx(5.0)  # count's bucket, shop, three tags
    t = signed_log(data["count"].to_numpy().astype(float))  # ... and count's z and value token
    z = np.clip((t - t.mean()) / t.std(), -5, 5)
    assert again.schema.row_norm == pytest.approx(6.0 + np.mean(z ** 2), rel=1e-5)


def test_data_from_stdin_is_not_read_twice(tmp_path):
    result = invoke("train", "-", "--numeric", "count", "-o", tmp_path / "m.fm", "-q", "--threads", "1",
                    input=gains(3000, 8).write_csv())
    assert result.exit_code == 0, result.stderr
    assert "exact" not in load(tmp_path / "m.fm").training["selection"]["rivals"]["tried"]


def test_a_file_that_changed_while_training_keeps_the_buckets(tmp_path, monkeypatch):
    """The rows hashed again must be the rows held out: a log appended to meanwhile is not."""
    from fmctr.commands import jobs

    gains(6000, 3).write_csv(tmp_path / "train.csv")
    gains(6100, 3).write_csv(tmp_path / "longer.csv")
    opened = jobs.open_input

    def appended(path, **options):
        return opened(str(tmp_path / "longer.csv") if options.get("refit") else path, **options)

    monkeypatch.setattr(jobs, "open_input", appended)
    result = invoke("train", tmp_path / "train.csv", "--numeric", "count", "-o", tmp_path / "m.fm", "--threads", "1")
    assert result.exit_code == 0, result.stderr
    assert "changed while training (6,100 rows, not 6,000)" in result.stderr
    model = load(tmp_path / "m.fm")
    assert [f.numeric for f in model.schema.fields if f.kind == "numeric"] == ["auto"]
    assert model.training["rows"] == 6000


@pytest.mark.parametrize("valid", [False, True])
def test_tune_hashes_as_the_held_out_rows_choose_before_its_search(tmp_path, valid):
    gains(6000, 3).write_csv(tmp_path / "train.csv")
    gains(3000, 9).write_csv(tmp_path / "valid.csv")
    more = ["--valid", tmp_path / "valid.csv"] if valid else []
    result = invoke("tune", tmp_path / "train.csv", *more, "--numeric", "count", "-o", tmp_path / "m.fm",
                    "--budget", "60", "--max-trials", "2", "--json")
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["exact"] == ["count"] and "--numeric-mode exact" in out["train_options"]
    assert out["summary"].startswith("count hashed as --numeric-mode exact (chosen on the rows that score")
    assert [f.numeric for f in load(tmp_path / "m.fm").schema.fields if f.kind == "numeric"] == ["exact"]


def test_tune_keeps_a_given_numeric_mode(tmp_path):
    gains(3000, 3).write_csv(tmp_path / "train.csv")
    result = invoke("tune", tmp_path / "train.csv", "--numeric", "count", "--numeric-mode", "fine", "-o",
                    tmp_path / "m.fm", "--budget", "60", "--max-trials", "1", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["exact"] == []
    assert [f.numeric for f in load(tmp_path / "m.fm").schema.fields if f.kind == "numeric"] == ["fine"]
