"""Shared fixtures: the sample data, a CLI runner, and tiny data written per test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fmctr.commands.cli import app
from fmctr.models.modelfile import load
from fmctr.reading.schema import Schema

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "sample_data"
CRITEO_TRAIN = SAMPLE / "criteo_like_train.tsv.gz"
CRITEO_TEST = SAMPLE / "criteo_like_test.tsv"
MOVIES_TRAIN = SAMPLE / "movies_train.csv"
MOVIES_TEST = SAMPLE / "movies_test.csv"
MOVIES_FLAGS = ["--multi", "genres", "--numeric", "price", "--ignore", "request_id"]


try:
    import torch
except ImportError:  # the test extra leaves torch out: a CPU-only install is small
    torch = None
needs_torch = pytest.mark.skipif(
    torch is None, reason="the torch engine's tests need PyTorch: pip install torch==2.13.0 (a CPU build), or 'fmctr[torch]'")


def invoke(*args: str, input: str | bytes | None = None):
    """Run the CLI in-process; returns click's Result (exit_code, stdout, stderr)."""
    return CliRunner().invoke(app, [str(a) for a in args], input=input)


def train_and_load_schema(tmp_path: Path, train, test, *flags: str):
    """Write train/test frames as CSV, train two epochs with `flags`, check that the stored
    schema survives a JSON round trip; returns (model path, stored schema)."""
    train.write_csv(tmp_path / "train.csv")
    test.write_csv(tmp_path / "test.csv")
    model = tmp_path / "m.fm"
    result = invoke("train", tmp_path / "train.csv", *flags, "-o", model, "--epochs", "2", "-q")
    assert result.exit_code == 0, result.stderr
    stored = load(model).schema
    assert Schema.from_dict(json.loads(json.dumps(stored.to_dict()))) == stored
    return model, stored


@pytest.fixture(scope="session")
def movies_model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("models") / "movies.fm"
    result = invoke("train", MOVIES_TRAIN, *MOVIES_FLAGS, "-o", path, "-q")
    assert result.exit_code == 0, result.stderr
    return path


@pytest.fixture(scope="session")
def criteo_model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("models") / "criteo.fm"
    result = invoke("train", CRITEO_TRAIN, "--preset", "criteo", "-o", path, "-q", "--bits", "20")
    assert result.exit_code == 0, result.stderr
    return path
