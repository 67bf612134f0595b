"""Recall: the schema's user and item sides, the exact tower split, `fmctr recall`,
the vectors it exports and ranking evaluation."""

from __future__ import annotations

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
from fmctr.models.modelfile import Model, save  # noqa: E402
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
                                                       (3, "raw", False)])
@pytest.mark.parametrize("scan", [False, True])
def test_top_k_from_towers_is_the_fm_top_k(tmp_path, seed, numeric_mode, multi, scan):
    model, users, items = random_world(tmp_path, seed, numeric_mode=numeric_mode, multi=multi)
    reference = pair_scores(tmp_path, model, users, items)
    for k in (1, 5, 60, 100):
        positions, scores = tower_top_k(tmp_path, model, k, scan=scan)
        assert positions.shape == (len(users), min(k, len(items)))
        assert_same_top_k(positions, scores, reference, k)


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
