"""Recall: the schema's user and item sides, the exact tower split, `fmctr recall`,
the vectors it exports and ranking evaluation."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys

import pytest

from conftest import MOVIES_FLAGS, MOVIES_TRAIN, invoke
from fmctr.errors import BadSchema
from fmctr.models.modelfile import load
from fmctr.reading.schema import Schema, SchemaSpec, build_spec

SIDES = ["--item", "item,genres", "--user", "user"]


def test_sides_are_stored_in_the_model(tmp_path):
    model = tmp_path / "m.fm"
    result = invoke("train", MOVIES_TRAIN, *MOVIES_FLAGS, *SIDES, "-o", model, "-q", "--epochs", "1")
    assert result.exit_code == 0, result.stderr
    schema = load(model).schema
    assert schema.item == ("item", "genres") and schema.user == ("user",)
    assert schema.side(item=True).feature_names == ["item", "genres"]
    assert schema.side(item=False).feature_names == ["user", "price"]  # price: context, with the user
    assert Schema.from_dict(schema.to_dict()) == schema


def test_a_model_without_sides_keeps_its_header():
    schema = SchemaSpec().resolve(["label", "a", "b"])
    assert "item" not in schema.to_dict() and not schema.has_towers


def test_sides_from_a_schema_file(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('multi = ["genres"]\nitem = ["item", "genres"]\nuser = ["user"]\n')
    spec = build_spec(schema_file=path)
    assert spec.item == ("item", "genres") and spec.user == ("user",)


@pytest.mark.parametrize("flags, message", [
    (["--item", "item", "--user", "item"], "error: column 'item' is in both --user and --item: a column describes one side\n"),
    (["--item", "request_id"], "is not a feature (it is the label or ignored)\n"),
    (["--item", "nope"], "--item column 'nope' is not in the data"),
    (["--user", "user"], "error: --user needs --item: say which columns describe the item (the others go with the user)\n"),
    (["--item", "user,item,genres,price"], "every feature is an --item column: the user side needs at least one\n"),
])
def test_bad_sides_get_one_line(tmp_path, flags, message):
    result = invoke("train", MOVIES_TRAIN, *MOVIES_FLAGS, *flags, "-o", tmp_path / "m.fm", "-q")
    assert result.exit_code == 1
    assert message in result.stderr and result.stderr.count("\n") == 1


def test_spec_check_refuses_overlap():
    with pytest.raises(BadSchema, match="both --user and --item"):
        SchemaSpec(user=("a",), item=("a",)).check()


# --- the tower split is exact -----------------------------------------------------------

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

from fmctr.datasets.inputs import open_input  # noqa: E402
from fmctr.hashing.tokens import HashSpec  # noqa: E402
from fmctr.models import fm  # noqa: E402
from fmctr.models.modelfile import Model  # noqa: E402
from fmctr.models.retrieval import Exclusions, top_k  # noqa: E402
from fmctr.commands.recall import load_catalogue, open_side  # noqa: E402
from fmctr.models.towers import user_side  # noqa: E402
from fmctr.models.weights import FMWeights  # noqa: E402

USER_COLS = ["user", "age", "tags", "hour"]  # hour: context, not named by --user
ITEM_COLS = ["item", "genres", "price"]


def random_world(tmp_path, seed: int, *, numeric_mode: str = "raw", multi: bool = True, dim: int = 4,
                 users: int = 30, items: int = 60):
    """A random FM over user, context and item fields, and users/items CSVs."""
    rng = np.random.default_rng(seed)
    spec = SchemaSpec(label="label", numeric=("age", "price"), multi=("tags", "genres") if multi else (),
                      numeric_mode=numeric_mode, user=("user", "age", "tags"), item=("item", "genres", "price"))
    schema = spec.check().resolve(["label", *USER_COLS, *ITEM_COLS])
    hashing = HashSpec(bits=10)
    n = hashing.size
    weights = FMWeights(rng.normal(size=1).astype(np.float32), rng.normal(size=n).astype(np.float32),
                        rng.normal(size=(n, dim)).astype(np.float32))
    model = Model(weights, schema, hashing, {})
    words = ["a", "b", "c", "d", "e"]

    def bag(k: int) -> list[str]:
        return ["|".join(rng.choice(words, size=rng.integers(1, 4), replace=False)) for _ in range(k)]

    u = pl.DataFrame({"user": [f"u{i}" for i in range(users)], "age": rng.uniform(0, 3, users).round(2).astype(str),
                      "tags": bag(users), "hour": rng.integers(0, 5, users).astype(str)})
    i = pl.DataFrame({"item": [f"i{j}" for j in range(items)], "genres": bag(items),
                      "price": rng.uniform(0, 9, items).round(2).astype(str)})
    u.write_csv(tmp_path / "users.csv")
    i.write_csv(tmp_path / "items.csv")
    return model, u, i


def pair_scores(tmp_path, model, users: pl.DataFrame, items: pl.DataFrame) -> np.ndarray:
    """(users, items) logits of the ordinary FM over every joined pair."""
    pairs = users.join(items, how="cross")
    pairs.write_csv(tmp_path / "pairs.csv")
    data = open_input(str(tmp_path / "pairs.csv"), schema=model.schema, hashing=model.hashing, require_label=False)
    return fm.logits(model.weights, data.all_rows()).reshape(len(users), len(items))


def tower_top_k(tmp_path, model, k, exclude=None, scan=None):
    catalogue = load_catalogue(str(tmp_path / "items.csv"), model)
    [(rows, _)] = list(open_side(str(tmp_path / "users.csv"), model, item=False))
    side = user_side(model.weights, rows)
    positions, scores = top_k(side.vectors, catalogue.vectors, k, exclude=exclude, scan=scan, item_block=17,
                              user_block=7)
    return positions, side.constants[:, None] + scores


def assert_same_top_k(positions, scores, reference, k, tol=1e-3):
    """Scores are the FM's for those pairs, and no other item beats the K-th (ties aside)."""
    for u in range(len(reference)):
        got = positions[u][positions[u] >= 0]
        np.testing.assert_allclose(scores[u][: len(got)], reference[u][got], rtol=1e-4, atol=tol)
        best = np.sort(reference[u][np.isfinite(reference[u])])[::-1][:k]
        np.testing.assert_allclose(np.sort(reference[u][got])[::-1], best, rtol=1e-4, atol=tol)
        assert np.all(np.diff(scores[u][: len(got)]) <= tol)  # best first


@pytest.mark.parametrize("seed, numeric_mode, multi", [(0, "raw", True), (1, "log1p", True), (2, "fine", False),
                                                       (3, "raw", False), (4, "exact", True)])
@pytest.mark.parametrize("scan", [False, True])
def test_top_k_from_towers_is_the_fm_top_k(tmp_path, seed, numeric_mode, multi, scan):
    model, users, items = random_world(tmp_path, seed, numeric_mode=numeric_mode, multi=multi)
    reference = pair_scores(tmp_path, model, users, items)
    for k in (1, 5, 60, 100):
        positions, scores = tower_top_k(tmp_path, model, k, scan=scan)
        assert positions.shape == (len(users), min(k, len(items)))
        assert_same_top_k(positions, scores, reference, k)


@pytest.mark.parametrize("d", [3, 8, 17, 33])
def test_the_scan_gives_the_same_bits_whatever_the_threads_and_blocks(monkeypatch, d):
    """The kernel sums a leading d % 8 factors one at a time, then eights four users at
    a time; every user (the rows padded to whole groups) by the same code, so neither
    the threads nor the item blocks move a score's last bit or a tie's order."""
    import numba

    from fmctr.models import retrieval

    rng = np.random.default_rng(d)
    users = rng.standard_normal((37, d)).astype(np.float32)
    items = np.round(rng.standard_normal((3000, d)), 1).astype(np.float32)  # coarse values: ties
    seen = Exclusions.from_lists([rng.choice(3000, rng.integers(0, 30), replace=False) for _ in range(37)])
    runs = []
    for threads, block in ((1, 16384), (2, 17), (2, 1000)):
        monkeypatch.setattr(retrieval, "SCAN_ITEM_BLOCK", block)
        numba.set_num_threads(threads)
        runs.append(top_k(users, items, 25, exclude=seen, scan=True))
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    for positions, scores in runs[1:]:
        np.testing.assert_array_equal(positions, runs[0][0])
        np.testing.assert_array_equal(scores, runs[0][1])
    exact = users.astype(np.float64) @ items.T.astype(np.float64)
    positions, scores = runs[0]
    np.testing.assert_allclose(scores, np.take_along_axis(exact, positions, 1), atol=1e-4)
    for u in range(len(users)):
        exact[u, seen.items[seen.offsets[u]:seen.offsets[u + 1]]] = -np.inf
    np.testing.assert_allclose(scores, -np.sort(-exact, axis=1)[:, :25], atol=1e-4)


@pytest.mark.parametrize("scan", [False, True])
def test_excluded_items_are_left_out(tmp_path, scan):
    model, users, items = random_world(tmp_path, 5)
    reference = pair_scores(tmp_path, model, users, items)
    rng = np.random.default_rng(0)
    seen = [rng.choice(len(items), size=rng.integers(0, 59), replace=False) for _ in range(len(users))]
    seen[0] = np.arange(len(items))  # every item seen: nothing left
    for u, s in enumerate(seen):
        reference[u, s] = -np.inf
    positions, scores = tower_top_k(tmp_path, model, 10, exclude=Exclusions.from_lists(seen), scan=scan)
    assert (positions[0] == -1).all()
    assert_same_top_k(positions, scores, reference, 10)
    for u, s in enumerate(seen):
        assert not set(positions[u][positions[u] >= 0]) & set(s)


# --- ranking evaluation against brute force ---------------------------------------------

from fmctr.commands.recall import evaluate_ranking, seen_positions  # noqa: E402
from fmctr.ranking import mean_ranking_metrics  # noqa: E402


def brute_force_metrics(reference: np.ndarray, relevant: list[set], seen: list[set], k: int) -> dict:
    """Every user's whole ranking by the FM's own pair scores, seen items removed."""
    tops, first_ranks, aucs = [], [], []
    for u, scores in enumerate(reference):
        candidates = [i for i in range(len(scores)) if i not in seen[u]]
        ranked = sorted(candidates, key=lambda i: (-scores[i], i))
        tops.append(ranked[:k])
        rel = relevant[u] - seen[u]
        if not rel:
            first_ranks.append(0)
            aucs.append(float("nan"))
            continue
        best = max(scores[i] for i in rel)
        first_ranks.append(1 + sum(scores[i] > best for i in candidates))
        neg = [i for i in candidates if i not in rel]
        pairs = [(scores[p] > scores[q]) + 0.5 * (scores[p] == scores[q]) for p in rel for q in neg]
        aucs.append(float(np.mean(pairs)) if pairs else float("nan"))
    return mean_ranking_metrics(tops, [relevant[u] - seen[u] for u in range(len(reference))], k, first_ranks, aucs)


@pytest.mark.parametrize("seed", [0, 1])
def test_eval_ranking_is_the_brute_force_one(tmp_path, seed):
    model, users, items = random_world(tmp_path, seed, users=25, items=40)
    reference = pair_scores(tmp_path, model, users, items)
    rng = np.random.default_rng(seed)
    test_pairs = [(u, i) for u in range(25) for i in rng.choice(40, size=rng.integers(0, 6), replace=False)]
    labels = rng.integers(0, 2, len(test_pairs))
    seen = [set(rng.choice(40, size=rng.integers(0, 10), replace=False).tolist()) for _ in range(25)]
    test = pl.concat([users[[u]].with_columns(pl.lit(f"i{i}").alias("item")) for u, i in test_pairs])
    test.with_columns(pl.Series("label", labels.astype(str))).write_csv(tmp_path / "test.csv")
    seen_frame = pl.DataFrame({"user": [f"u{u}" for u in range(25) for _ in seen[u]],
                               "item": [f"i{i}" for u in range(25) for i in sorted(seen[u])]})
    catalogue = load_catalogue(str(tmp_path / "items.csv"), model)
    got = evaluate_ranking(str(tmp_path / "test.csv"), catalogue, model, k=5, user_id="user", item_id="item",
                           seen=seen_positions(seen_frame, catalogue))
    relevant = [set() for _ in range(25)]
    for (u, i), label in zip(test_pairs, labels):
        if label:
            relevant[u].add(int(i))
    expected = brute_force_metrics(reference, relevant, seen, 5)
    for name in ("precision", "recall", "ndcg", "map", "hit_rate", "mrr", "auc", "users"):
        assert got[name] == pytest.approx(expected[name], abs=1e-9), name


# --- the command line -------------------------------------------------------------------

from conftest import SAMPLE  # noqa: E402

WORLD = ["--multi", "genres", "--numeric", "age,year", "--item", "movie_id,genres,year", "--user", "user_id,age,occupation"]
USERS, ITEMS = SAMPLE / "users.csv", SAMPLE / "items.csv"
CLICKS_TRAIN, CLICKS_TEST = SAMPLE / "clicks_train.csv", SAMPLE / "clicks_test.csv"


@pytest.fixture(scope="module")
def world_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("world") / "recall.fm"
    result = invoke("train", CLICKS_TRAIN, *WORLD, "--epochs", "2", "-o", path, "-q")
    assert result.exit_code == 0, result.stderr
    return path


def test_recall_writes_k_ranked_candidates_per_user(world_model):
    result = invoke("recall", USERS, "--items", ITEMS, "-m", world_model, "-k", "3", "--keep", "user_id")
    assert result.exit_code == 0, result.stderr
    frame = pl.read_csv(result.stdout.encode())
    assert frame.columns == ["user_id", "movie_id", "rank", "score"]
    assert frame.height == 200 * 3 and frame.get_column("rank").to_list()[:3] == [1, 2, 3]
    assert (frame.group_by("user_id", maintain_order=True).agg(pl.col("score").diff().max())
            .get_column("score").max() <= 0)


def test_recall_from_stdin_leaves_seen_items_out(world_model):
    result = invoke("recall", "--items", ITEMS, "-m", world_model, "-k", "150", "--keep", "user_id",
                    "--exclude", CLICKS_TRAIN, input=USERS.read_text())
    assert result.exit_code == 0, result.stderr
    got = pl.read_csv(result.stdout.encode()).select("user_id", "movie_id")
    seen = pl.read_csv(CLICKS_TRAIN).select("user_id", "movie_id").unique()
    assert got.join(seen, on=["user_id", "movie_id"]).height == 0
    assert got.height == 200 * 150 - seen.height  # every other item, for every user


def test_with_features_feeds_predict(tmp_path, world_model):
    result = invoke("recall", USERS, "--items", ITEMS, "-m", world_model, "-k", "4", "--with-features")
    assert result.exit_code == 0, result.stderr
    candidates = pl.read_csv(result.stdout.encode())
    assert candidates.columns == ["user_id", "age", "occupation", "movie_id", "genres", "year", "rank", "score"]
    scored = invoke("predict", "-m", world_model, input=result.stdout)
    assert scored.exit_code == 0, scored.stderr
    probability = pl.read_csv(scored.stdout.encode()).get_column("probability").to_numpy()
    np.testing.assert_allclose(probability, 1 / (1 + np.exp(-candidates.get_column("score").to_numpy())), rtol=1e-5)


def test_exported_vectors_give_the_scores(tmp_path, world_model):
    items, users = tmp_path / "items.parquet", tmp_path / "users.csv"
    result = invoke("recall", USERS, "--items", ITEMS, "-m", world_model, "--export-items", items,
                    "--export-users", users)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""
    i, u = pl.read_parquet(items), pl.read_csv(users)
    dims = [c for c in i.columns if c.startswith("v")]
    assert i.columns == ["movie_id", *dims, "item_term"] and u.columns == ["user_id", *dims, "one", "constant"]
    scores = u.select(*dims, "one").to_numpy() @ i.select(*dims, "item_term").to_numpy().T + u.get_column(
        "constant").to_numpy()[:, None]
    top = pl.read_csv(invoke("recall", USERS, "--items", ITEMS, "-m", world_model, "-k", "1").stdout.encode())
    np.testing.assert_allclose(top.get_column("score").to_numpy(), scores.max(axis=1), rtol=1e-4)


def test_eval_ranking_json(world_model):
    result = invoke("eval", CLICKS_TEST, "-m", world_model, "--ranking", "--items", ITEMS, "--exclude", CLICKS_TRAIN,
                    "-k", "10", "--json")
    assert result.exit_code == 0, result.stderr
    metrics = json.loads(result.stdout)
    assert set(metrics) >= {"precision", "recall", "ndcg", "map", "mrr", "hit_rate", "auc", "users", "k"}
    assert 0 <= metrics["precision"] <= 1 and 0.5 < metrics["auc"] <= 1 and metrics["k"] == 10


def _one_error_line(result, text: str) -> None:
    assert result.exit_code == 1, result.stdout
    assert result.stderr.count("\n") == 1 and text in result.stderr, result.stderr


def test_bad_recall_input_gets_one_line(tmp_path, world_model, movies_model):
    empty, dup, no_id = tmp_path / "empty.csv", tmp_path / "dup.csv", tmp_path / "noid.csv"
    empty.write_text("movie_id,genres,year\n")
    dup.write_text("movie_id,genres,year\nm1,Drama,1990\nm1,Comedy,1991\n")
    no_id.write_text("movie_id,genres,year\nm1,Drama,1990\n,Comedy,1991\n")
    users_wo = tmp_path / "users.csv"
    users_wo.write_text("user_id,age\nu1,30\n")
    bad_test = tmp_path / "test.csv"
    bad_test.write_text("label,user_id,age,occupation,movie_id\n1,u1,30,artist,nope\n")
    run = functools.partial(invoke, "recall", USERS, "-m", world_model)
    _one_error_line(run("--items", empty), "error: ")
    _one_error_line(run("--items", empty), "the catalogue has no items")
    _one_error_line(run("--items", dup), "item id 'm1' appears more than once; ids must be unique")
    _one_error_line(run("--items", no_id), "item 2 has no id (column 'movie_id')")
    _one_error_line(run("--items", ITEMS, "--item-id", "sku"), "column(s) sku not found")
    _one_error_line(invoke("recall", users_wo, "--items", ITEMS, "-m", world_model),
                    "users.csv: user column(s) occupation not found (columns: user_id, age)")
    _one_error_line(invoke("recall", USERS, "--items", ITEMS, "-m", movies_model), "train it with --item COLS")
    _one_error_line(invoke("eval", bad_test, "-m", world_model, "--ranking", "--items", ITEMS),
                    "test.csv: item id 'nope' (row 1) is not in the catalogue")
    _one_error_line(run("--items", ITEMS, "-k", "0"), "-k must be at least 1, got 0")
    _one_error_line(run("--items", ITEMS, "--keep", "user_id,score"), "--keep score: the output has a column of that name")


def readme_commands() -> list[str]:
    readme = (SAMPLE.parent / "README.md").read_text()
    section = readme.split("## Two stages: recall, then rank\n", 1)[1].split("\n## ", 1)[0]
    return [line.strip() for line in section.splitlines() if line.startswith("    fmctr ")]


def test_the_readme_two_stage_commands_run_end_to_end(tmp_path):
    commands = readme_commands()
    assert len(commands) == 5 and any("| fmctr predict" in c for c in commands)
    (tmp_path / "sample_data").symlink_to(SAMPLE)
    script = "set -eo pipefail\nfmctr() { \"$PYTHON\" -m fmctr \"$@\"; }\n" + "\n".join(commands) + "\n"
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(SAMPLE.parent)}
    proc = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    scored = pl.read_csv(tmp_path / "scored.csv")
    assert scored.columns == ["user_id", "movie_id", "probability"] and scored.height == 200 * 50
    assert "precision@10" in proc.stderr and "AUC" in proc.stderr
    assert pl.read_parquet(tmp_path / "items.parquet").height == 150


def test_recall_has_help_and_is_in_the_readme():
    result = invoke("recall", "--help")
    assert result.exit_code == 0 and "--with-features" in result.stdout
    assert "fmctr recall" in (SAMPLE.parent / "README.md").read_text()


def test_rare_values_map_on_each_side_as_in_predict(tmp_path):
    """With --min-count, each side's rare values map to their field's rare token: the
    candidates' scores are still what predict gives the joined rows."""
    model = tmp_path / "rare.fm"
    flags = ["--ignore", "genres", "--numeric", "age,year", "--item", "movie_id,year", "--user", "user_id,age,occupation"]
    result = invoke("train", CLICKS_TRAIN, *flags, "--min-count", "30", "--epochs", "1", "-o", model, "-q")
    assert result.exit_code == 0, result.stderr
    result = invoke("recall", USERS, "--items", ITEMS, "-m", model, "-k", "3", "--with-features")
    assert result.exit_code == 0, result.stderr
    candidates = pl.read_csv(result.stdout.encode())
    scored = invoke("predict", "-m", model, input=result.stdout)
    probability = pl.read_csv(scored.stdout.encode()).get_column("probability").to_numpy()
    np.testing.assert_allclose(probability, 1 / (1 + np.exp(-candidates.get_column("score").to_numpy())), rtol=1e-5)


def test_preprocess_keeps_the_sides_for_training(tmp_path):
    hashed, model = tmp_path / "train.hashed", tmp_path / "m.fm"
    assert invoke("preprocess", CLICKS_TRAIN, *WORLD, "-o", hashed).exit_code == 0
    result = invoke("train", hashed, "--epochs", "1", "-o", model, "-q")
    assert result.exit_code == 0, result.stderr
    assert load(model).schema.item == ("movie_id", "genres", "year")


def test_without_a_label_every_test_row_is_held_out(tmp_path, world_model):
    positives = pl.read_csv(CLICKS_TEST, schema_overrides={"label": pl.String}).filter(pl.col("label") == "1")
    positives.drop("label").write_csv(tmp_path / "positives.csv")
    with_label = invoke("eval", CLICKS_TEST, "-m", world_model, "--ranking", "--items", ITEMS, "--json")
    without = invoke("eval", tmp_path / "positives.csv", "-m", world_model, "--ranking", "--items", ITEMS, "--json")
    assert without.exit_code == 0, without.stderr
    a, b = json.loads(with_label.stdout), json.loads(without.stdout)
    for name in ("precision", "recall", "ndcg", "map", "mrr", "auc", "users"):
        assert a[name] == pytest.approx(b[name]), name
