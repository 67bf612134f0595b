"""--min-count: rare values become their field's rare token, in training and after."""

from __future__ import annotations

import json

import numpy as np

from conftest import CRITEO_TEST, CRITEO_TRAIN, MOVIES_FLAGS, MOVIES_TRAIN, invoke
from fmctr.hashing.tokens import HashSpec, Rows, token_index
from fmctr.models.modelfile import load
from fmctr.hashing.rare import RARE_TOKEN, RareMap
from fmctr.reading.schema import build_spec


def test_rare_values_share_their_fields_token(tmp_path):
    """Values seen fewer than N times, and values never seen, score as the field's one
    rare token; frequent values keep their own weights."""
    train_rows = [["1", "a", "x"], ["0", "a", "y"], ["1", "b", "x"], ["0", "a", "x"], ["1", "c", "y"]] * 20
    train_rows += [["1", "once", "x"], ["0", "twice", "x"], ["0", "twice", "y"]]
    flags = ["--format", "tsv", "--label", "label", "--categorical", "f,g"]
    data = tmp_path / "train.tsv"
    data.write_text("label\tf\tg\n" + "".join("\t".join(r) + "\n" for r in train_rows))
    model = tmp_path / "m.fm"
    result = invoke("train", data, *flags, "-o", model, "-q", "--min-count", "3", "--dim", "2", "--epochs", "2")
    assert result.exit_code == 0, result.stderr
    m = load(model)
    assert m.rare is not None and m.rare.min_count == 3
    assert m.training["min_count"] == 3

    test = tmp_path / "test.tsv"
    test.write_text("label\tf\tg\n1\tonce\tx\n1\ttwice\tx\n1\tnever-seen\tx\n1\ta\tx\n1\tb\tx\n")
    result = invoke("predict", test, "-m", model)
    assert result.exit_code == 0, result.stderr
    p = [float(v) for v in result.stdout.split()[1:]]
    assert p[0] == p[1] == p[2]  # all three are f's rare token
    assert len({p[0], p[3], p[4]}) == 3  # frequent values have their own weights
    # The rare token learned something (the 'once'/'twice' rows had labels 1, 0, 0).
    rare = token_index("f", RARE_TOKEN, m.hashing)
    assert m.weights.linear[rare] != 0


def test_min_count_map_is_idempotent_and_survives_the_model_file():
    spec = build_spec(preset="criteo")
    hashing = HashSpec(bits=6)
    schema = spec.resolve([f"c{i}" for i in range(40)] if spec.column_names is None else spec.column_names)
    counts = np.arange(64)
    rare = RareMap.build(counts, 20, schema, hashing)
    rng = np.random.default_rng(0)
    n_fields = len(schema.fields)
    rows = Rows(rng.integers(0, 64, 5 * n_fields).astype(np.int32), np.ones(5 * n_fields, np.float32),
                np.arange(6, dtype=np.int64) * n_fields, None)
    once = rare.apply(rows)
    assert np.all((once.indices == rows.indices) == (counts[rows.indices] >= 20))
    np.testing.assert_array_equal(rare.apply(once).indices, once.indices)
    # Round trip through a model file: the same frequent set.
    from fmctr.models.modelfile import Model, from_bytes, to_bytes
    from fmctr.models.weights import FMWeights

    model = Model(FMWeights.zeros(64, 2), schema, hashing, {}, rare=rare)
    back = from_bytes(to_bytes(model)).rare
    np.testing.assert_array_equal(back.frequent, rare.frequent)
    np.testing.assert_array_equal(back.rare_index, rare.rare_index)


def test_min_count_on_criteo_like_data_trains_and_evaluates(tmp_path):
    model = tmp_path / "m.fm"
    result = invoke("train", CRITEO_TRAIN, "--preset", "criteo", "-o", model, "-q", "--bits", "20",
                    "--min-count", "5", "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert 0 < summary["frequent_features"] < 2**20
    metrics = json.loads(invoke("eval", CRITEO_TEST, "-m", model, "--json").stdout)
    assert metrics["auc"] > 0.7


def test_min_count_refuses_multi_valued_fields(tmp_path):
    result = invoke("train", MOVIES_TRAIN, *MOVIES_FLAGS, "-o", tmp_path / "m.fm", "--min-count", "3")
    assert (result.exit_code, result.stderr) == (
        1, "error: --min-count does not support multi-valued fields yet (field 'genres')\n")
    assert not (tmp_path / "m.fm").exists()


def test_min_count_must_be_positive(tmp_path):
    result = invoke("train", CRITEO_TRAIN, "--preset", "criteo", "-o", tmp_path / "m.fm", "--min-count", "0")
    assert (result.exit_code, result.stderr) == (1, "error: --min-count must be at least 1, got 0\n")


def test_preprocess_min_count_maps_like_train_and_the_model_keeps_the_set(tmp_path):
    """`preprocess --min-count` counts over its inputs; training on the result gives the
    same model as `train --min-count` on the raw data, with the same frequent set."""
    hashed = tmp_path / "train.hashed"
    result = invoke("preprocess", CRITEO_TRAIN, "--preset", "criteo", "-o", hashed, "--bits", "18", "--min-count", "4")
    assert result.exit_code == 0, result.stderr
    a, b = tmp_path / "a.fm", tmp_path / "b.fm"
    assert invoke("train", hashed, "-o", a, "-q", "--threads", "1").exit_code == 0
    result = invoke("train", CRITEO_TRAIN, "--preset", "criteo", "--bits", "18", "--min-count", "4", "-o", b, "-q",
                    "--threads", "1")
    assert result.exit_code == 0, result.stderr
    ma, mb = load(a), load(b)
    assert ma.rare.min_count == mb.rare.min_count == 4
    np.testing.assert_array_equal(ma.rare.frequent, mb.rare.frequent)
    np.testing.assert_array_equal(ma.weights.factors, mb.weights.factors)
    # A different --min-count on mapped data is refused.
    result = invoke("train", hashed, "-o", tmp_path / "c.fm", "--min-count", "9")
    assert (result.exit_code, result.stderr) == (
        1, f"error: {hashed} was preprocessed with --min-count 4; --min-count 9 conflicts with it\n")
