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
