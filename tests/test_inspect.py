"""Looking inside a model: info (header only, any format version), inspect (features
and pairs by name, collisions, hash-space health), predict --explain (terms that sum
to the logit) and --export-text."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from conftest import MOVIES_TEST, SAMPLE, invoke
from damage import with_format_version
from fmctr.datasets.inputs import open_input
from fmctr.hashing.tokens import HashSpec
from fmctr.models.modelfile import Model, load, save
from fmctr.models.weights import FMWeights
from fmctr.reading.schema import Field, Schema

sys.path.insert(0, str(SAMPLE))
from generate import criteo_like  # noqa: E402


def test_info_answers_from_the_header(movies_model):
    result = invoke("info", movies_model, "--json")
    assert result.exit_code == 0, result.stderr
    info = json.loads(result.stdout)
    model = load(movies_model)
    assert info["format_version"] == 3 and info["model"] == "fm" and info["dim"] == 16  # (two refits of --dim 8)
    assert info["hashing"] == {"bits": 22, "seed": 0, "function": "xxhash64"}
    assert [f["name"] for f in info["schema"]["fields"]] == ["user", "item", "genres", "price"]
    assert info["indices_stored"] == int(np.count_nonzero(model.optimizer["seen"]))
    assert info["training"]["rows"] == 5000 and info["training"]["epochs_run"] == len(info["history"])
    assert info["selection"]["holdout_rows"] > 0 and info["selection"]["history"][0]["valid"]["auc"] > 0.5
    assert info["sizes"]["file"] == movies_model.stat().st_size and info["verified"] is None
    table = invoke("info", movies_model, "--verify")
    assert table.exit_code == 0 and table.stdout == ""
    assert "(verified)" in table.stderr and "epochs chosen on" in table.stderr


def test_info_imports_nothing_heavy(movies_model):
    """Header only: neither numpy, polars nor numba is imported (each costs 0.1-1 s)."""
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "fmctr", "info", str(movies_model), "--json"],
                         capture_output=True, text=True, check=True)
    imported = {line.split("|")[-1].strip() for line in out.stderr.splitlines()}
    assert {"numpy", "polars", "numba", "pydantic"} & imported == set()
    assert json.loads(out.stdout)["dim"] == 16


@pytest.mark.parametrize("version", [1, 2])
def test_info_reads_older_format_versions(movies_model, tmp_path, version):
    old = tmp_path / "old.fm"
    old.write_bytes(with_format_version(movies_model.read_bytes(), version))
    result = invoke("info", old, "--json", "--verify")
    assert result.exit_code == 0, result.stderr
    info = json.loads(result.stdout)
    assert (info["format_version"], info["verified"], info["dim"]) == (version, True, 16)


def test_info_refuses_what_is_not_a_model(tmp_path):
    bad = tmp_path / "x.fm"
    bad.write_text("label,user\n1,a\n")
    result = invoke("info", bad)
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr.startswith(f"error: {bad}: not an fmctr model file")


# A random model over every kind of field: categorical, multi-valued, numeric buckets,
# a numeric value on one index; a small hash space so that tokens collide.
FIELDS = (Field("user"), Field("genres", "multi"), Field("price", "numeric", "fine"), Field("age", "numeric", "log1p"),
          Field("weight", "numeric", "auto", standard=(1.0, 0.5)))


def random_world(tmp_path: Path, seed: int, dim: int, bits: int = 7, rows: int = 60) -> tuple[Path, Path]:
    rng = np.random.default_rng(seed)
    n = 1 << bits
    weights = FMWeights(rng.normal(0, 0.5, 1).astype(np.float32), rng.normal(0, 0.5, n).astype(np.float32),
                        rng.normal(0, 0.5, (n, dim)).astype(np.float32))
    model = tmp_path / f"random{seed}.fm"
    save(Model(weights, Schema("label", FIELDS), HashSpec(bits=bits), {"rows": 0}), model)
    genres = ["|".join(rng.choice(list("ABCDEFG"), rng.integers(1, 4), replace=False)) for _ in range(rows)]
    price = np.where(rng.random(rows) < 0.2, "", np.round(rng.lognormal(1, 1, rows), 2).astype(str))
    data = pl.DataFrame({"label": rng.integers(0, 2, rows).astype(str), "user": [f"u{u}" for u in rng.integers(0, 30, rows)],
                         "genres": genres, "price": price, "age": rng.integers(18, 80, rows).astype(str),
                         "weight": np.where(rng.random(rows) < 0.2, "", np.round(rng.normal(1.5, 1, rows), 3).astype(str)),
                         "id": [f"r{r}" for r in range(rows)]})
    path = tmp_path / f"data{seed}.csv"
    data.write_csv(path)
    return model, path


def brute_force_terms(model: Model, data: Path) -> list[list[float]]:
    """Every term of every row's logit, one at a time."""
    rows = open_input(str(data), schema=model.schema, hashing=model.hashing, require_label=False).all_rows()
    w, out = model.weights, []
    for r in range(len(rows)):
        idx = rows.indices[rows.offsets[r]:rows.offsets[r + 1]]
        x = rows.values[rows.offsets[r]:rows.offsets[r + 1]].astype(np.float64)
        found = [float(w.bias[0])] + [float(w.linear[i]) * x[p] for p, i in enumerate(idx)]
        found += [float(w.factors[idx[p]].astype(np.float64) @ w.factors[idx[q]]) * x[p] * x[q]
                  for p in range(len(idx)) for q in range(p + 1, len(idx))] if w.dim else []
        out.append(found)
    return out


@pytest.mark.parametrize("seed,dim", [(0, 4), (1, 1), (2, 0)])
def test_explain_terms_sum_to_the_logit(tmp_path, seed, dim):
    model_path, data = random_world(tmp_path, seed, dim)
    plain = invoke("predict", data, "-m", model_path, "--keep", "id")
    result = invoke("predict", data, "-m", model_path, "--keep", "id", "--explain", "3")
    assert result.exit_code == 0, result.stderr
    frame = pl.read_csv(result.stdout.encode(), infer_schema_length=0).cast(
        {c: pl.Float64 for c in ["logit", "value_1", "value_2", "value_3", "rest", "probability"]})
    assert frame.columns == ["id", "logit", "term_1", "value_1", "term_2", "value_2", "term_3", "value_3", "rest",
                             "probability"]
    assert frame["probability"].to_list() == pl.read_csv(plain.stdout.encode())["probability"].to_list()
    shown = frame.select(pl.sum_horizontal("value_1", "value_2", "value_3") + pl.col("rest")).to_series()
    assert np.abs(shown.to_numpy() - frame["logit"].to_numpy()).max() < 1e-5
    every = brute_force_terms(load(model_path), data)
    assert np.abs(np.array([sum(t) for t in every]) - frame["logit"].to_numpy()).max() < 1e-5
    for row, terms in zip(frame.iter_rows(named=True), every):
        largest = sorted(terms, key=abs, reverse=True)[:3]
        assert np.allclose([row[f"value_{j}"] for j in (1, 2, 3)], largest, atol=1e-5)
    first = frame.row(0, named=True)
    names = [first[f"term_{j}"] for j in (1, 2, 3)]
    assert all(n == "bias" or n.startswith(("user=", "genres=", "price=", "age=", "weight=")) for n in names)


def test_inspect_shows_collisions_and_the_hash_space_health(tmp_path):
    model, data = random_world(tmp_path, 3, 4, bits=5, rows=300)
    result = invoke("inspect", model, "--data", data, "--json", "--top", "50")
    assert result.exit_code == 0, result.stderr
    found = json.loads(result.stdout)
    assert found["rows"] == 300
    shared = [f for f in found["features_by_weight"] if f["tokens"] > 1]
    assert shared and all(len(f["names"]) > 1 for f in shared)
    health = found["health"]
    assert health["indices_shared"] > 0 and health["advice"].startswith("grow") and health["suggested_bits"] > 5
    assert {f["field"] for f in health["fields"]} == {"user", "genres", "price", "age", "weight"}
    assert len(found["fields"]["matrix"]) == 5
    table = invoke("inspect", model, "--data", data)
    assert table.exit_code == 0 and table.stdout == "" and "collision" in table.stderr
    pytest.importorskip("matplotlib")
    drawn = invoke("inspect", model, "--data", data, "--plot", tmp_path / "fields.png", "--json")
    assert drawn.exit_code == 0 and (tmp_path / "fields.png").read_bytes().startswith(b"\x89PNG")


def test_export_text_names_every_stored_index(tmp_path, movies_model):
    out = tmp_path / "weights.tsv"
    result = invoke("inspect", movies_model, "--data", MOVIES_TEST, "--export-text", out)
    assert result.exit_code == 0, result.stderr
    lines = out.read_text().splitlines()
    stored = load(movies_model).optimizer["seen"].sum()
    assert len(lines) == 2 + stored
    assert lines[0].split("\t")[:4] == ["index", "names", "count", "linear"] and lines[1].split("\t")[1] == "(bias)"
    named = [line.split("\t")[1] for line in lines[2:]]
    assert "user=u0" in named and any(n.startswith("genres=") for n in named)
    bare = invoke("inspect", movies_model, "--export-text", "-")
    assert bare.exit_code == 0 and len(bare.stdout.splitlines()) == len(lines)
    again = invoke("inspect", movies_model, "--export-text", tmp_path / "x.tsv", "--json")
    assert json.loads(again.stdout)["features_by_weight"][0]["field"] is None  # no --data: no names


def test_inspect_names_the_planted_interactions(tmp_path):
    """A planted world (sample_data/generate.py): only the first four categorical
    fields, C1..C4, interact. Inspect must find those fields and token pairs."""
    world = criteo_like(20_000, seed=3, vocab_max=50)
    data = tmp_path / "planted.tsv"
    data.write_bytes(world.text)
    model = tmp_path / "planted.fm"
    trained = invoke("train", data, "--preset", "criteo", "-o", model, "-q", "--bits", "18", "--epochs", "4",
                     "--threads", "1")
    assert trained.exit_code == 0, trained.stderr
    result = invoke("inspect", model, "--data", data, "--json", "--top", "20")
    assert result.exit_code == 0, result.stderr
    found = json.loads(result.stdout)
    planted = {"C1", "C2", "C3", "C4"}
    assert all({p["a"], p["b"]} <= planted for p in found["fields"]["top"][:6])
    pairs = [((p["a"]["field"], p["a"]["token"]), (p["b"]["field"], p["b"]["token"])) for p in found["pairs"]["pairs"]]
    assert all({a[0], b[0]} <= planted for a, b in pairs[:10])
    # The planted model's strongest token pairs, by mean |pair term| over the rows.
    ids, v = world.truth["ids"], world.truth["v"]
    text = pl.read_csv(data, separator="\t", has_header=False, infer_schema=False)
    name = {int(i): (f"C{c + 1}", t or "") for c in range(4)
            for i, t in zip(ids[:, 13 + c], text.get_column(text.columns[14 + c]).to_list())}
    strength = {}
    for a in range(13, 17):
        for b in range(a + 1, 17):
            together, counts = np.unique(ids[:, [a, b]], axis=0, return_counts=True)
            for (i, j), c in zip(together, counts):
                strength[frozenset([name[i], name[j]])] = abs(v[i] @ v[j]) * c
    truth = sorted(strength, key=strength.get, reverse=True)[:10]
    assert sum(frozenset(p) in truth for p in pairs) >= 6


def test_explain_from_stdin_and_its_column_names(tmp_path):
    model, data = random_world(tmp_path, 4, 2)
    piped = invoke("predict", "-", "-m", model, "--explain", "1", input=data.read_bytes())
    assert piped.exit_code == 0, piped.stderr
    assert piped.stdout.splitlines()[0] == "logit,term_1,value_1,rest,probability"
    assert len(piped.stdout.splitlines()) == 61
    clash = invoke("predict", data, "-m", model, "--explain", "2", "--keep", "rest")
    assert (clash.exit_code, clash.stderr) == (1, "error: --keep rest: with --explain that name is an output column\n")
    zero = invoke("predict", data, "-m", model, "--explain", "0")
    assert (zero.exit_code, zero.stderr) == (1, "error: --explain must be at least 1, got 0\n")


def test_inspect_a_model_without_factors(tmp_path):
    model, data = random_world(tmp_path, 5, 0)
    found = json.loads(invoke("inspect", model, "--data", data, "--json").stdout)
    assert found["dim"] == 0 and found["pairs"]["pairs"] == [] and found["fields"] is None
    assert found["features_by_contribution"][0]["mean_abs_contribution"] > 0
