"""Files fmctr reads are untrusted: a damaged or crafted hashed dataset, model file,
checkpoint or schema file is one `error:` line and exit 1, never a crash, an
out-of-bounds access or a silent wrong result (README, "Reliability")."""

from __future__ import annotations

import itertools
import json
import shutil

import numpy as np
import pytest

from conftest import MOVIES_FLAGS, MOVIES_TEST, MOVIES_TRAIN, invoke
from damage import craft, edit_array, edit_manifest, split
from fmctr.commands.jobs import CheckpointPlan, train_model
from fmctr.errors import Interrupted
from fmctr.training.config import TrainConfig

BITS = ["--bits", "16"]
# `fine`, not `auto`: auto's standardised price is fitted per file, and a test below
# hashes another file apart that must agree with this schema
FLAGS = [*MOVIES_FLAGS, "--numeric-mode", "fine"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A hashed dataset, a model trained on it, and a checkpoint of an interrupted run."""
    root = tmp_path_factory.mktemp("untrusted")
    hashed, model, ckpt = root / "movies.hashed", root / "movies.fm", root / "run.fm.ckpt"
    assert invoke("preprocess", MOVIES_TRAIN, *FLAGS, *BITS, "-o", hashed).exit_code == 0
    assert invoke("train", hashed, "-o", model, "-q", "--epochs", "1").exit_code == 0
    calls = itertools.count()
    with pytest.raises(Interrupted):
        train_model(str(hashed), spec=None, hashing=None, cfg=TrainConfig.from_options(epochs=3, threads=1),
                    output=str(root / "run.fm"), checkpoints=CheckpointPlan(ckpt, None, lambda: next(calls) >= 1))
    return hashed, model, ckpt


def one_error(result, message: str) -> None:
    assert (result.exit_code, result.stdout) == (1, ""), result.stderr
    assert result.stderr == f"error: {message}\n"


def offsets_backwards(o):
    o[5] = o[7] + 3
    return o


def index_at(value):
    def edit(i):
        i[100] = value
        return i
    return edit


DATASET_CASES = [
    ("indices cut short", "indices", lambda i: i[:1000],
     "{part}: part has 5,000 labels, 5,001 offsets and 1,000 indices; the manifest says 5,000 rows and {nnz:,} indices"),
    ("offsets running backwards", "offsets", offsets_backwards,
     "{part}.offsets.npy: row offsets must start at 0, never decrease and end at the number of indices ({nnz:,})"),
    ("offsets past the end", "offsets", lambda o: np.concatenate([o[:-1], [o[-1] + 10**8]]),
     "{part}.offsets.npy: row offsets must start at 0, never decrease and end at the number of indices ({nnz:,})"),
    ("index of 2^bits", "indices", index_at(1 << 16), "{part}.indices.npy: feature index 65536 outside the hash space [0, 65536)"),
    ("negative index", "indices", index_at(-5), "{part}.indices.npy: feature index -5 outside the hash space [0, 65536)"),
    ("int64 indices", "indices", lambda i: i.astype(np.int64),
     "{part}.indices.npy: int64 array of shape ({nnz},); expected a 1-D int32 array"),
    ("short values", "values", lambda v: v[:10], "{part}.values.npy: expected {nnz:,} finite values, one per index"),
    ("NaN value", "values", lambda v: np.where(np.arange(len(v)) == 3, np.nan, v).astype(np.float32),
     "{part}.values.npy: expected {nnz:,} finite values, one per index"),
    ("labels of 5", "labels", lambda y: np.where(y == 1, 5, y).astype(np.float32), "{part}.labels.npy: labels must be 0 or 1"),
]


@pytest.mark.parametrize("name,array,edit,message", DATASET_CASES, ids=[c[0] for c in DATASET_CASES])
def test_a_damaged_part_is_refused_before_any_kernel(tmp_path, files, name, array, edit, message):
    hashed, model, _ = files
    bad = tmp_path / "bad.hashed"
    shutil.copytree(hashed, bad)
    nnz = json.loads((bad / "manifest.json").read_text())["parts"][0]["nnz"]
    if array == "values":  # (these one-hot rows have no values file: give them one)
        np.save(bad / "part-00000.values.npy", np.ones(nnz, np.float32))
        edit_manifest(bad, lambda m: m["parts"][0].update(values=True))
    edit_array(bad, array, edit)
    expected = message.format(part=bad / "part-00000", nnz=nnz)
    one_error(invoke("eval", bad, "-m", model, "--json"), expected)
    one_error(invoke("train", bad, "-o", tmp_path / "m.fm", "-q", "--epochs", "1"), expected)
    one_error(invoke("train", bad, "-m", model, "-o", tmp_path / "m.fm", "-q", "--epochs", "1"), expected)


@pytest.mark.parametrize("part_name", ["../outside/part-00000", "/etc/part-00000", "sub/part-00000", ".."])
def test_a_manifest_names_no_file_outside_its_directory(tmp_path, files, part_name):
    hashed, model, _ = files
    shutil.copytree(hashed, tmp_path / "outside")  # a readable dataset where the name points
    bad = tmp_path / "bad.hashed"
    shutil.copytree(hashed, bad)
    edit_manifest(bad, lambda m: m["parts"][0].update(name=part_name))
    one_error(invoke("eval", bad, "-m", model), f"{bad}: malformed manifest (part 0 must name a file in the dataset's directory)")


@pytest.mark.parametrize("content,message", [
    ("[" * 100_000 + "]" * 100_000, "{m}: not a readable hashed dataset manifest (nested too deeply)"),
    ('{"format": "fmctr-hashed", "format_version": 2, "schema": 3, "hashing": {}}',
     "{d}: malformed manifest (schema, hashing or min_count)"),
    ('{"format": "fmctr-hashed", "format_version": 2, "schema": {"label": "label", "fields": []}, '
     '"hashing": {"bits": 16}, "parts": "abc"}', "{d}: malformed manifest (no list of parts)"),
])
def test_a_malformed_manifest(tmp_path, files, content, message):
    hashed, model, _ = files
    bad = tmp_path / "bad.hashed"
    shutil.copytree(hashed, bad)
    (bad / "manifest.json").write_text(content)
    one_error(invoke("eval", bad, "-m", model), message.format(m=bad / "manifest.json", d=bad))


def set_tensor(name, dtype=None, shape=None, raw=None):
    def edit(meta, tensors):
        old = tensors[name]
        tensors[name] = [dtype or old[0], old[1] if shape is None else shape, old[2] if raw is None else raw]
    return edit


def duplicate_row(meta, tensors):
    rows = np.frombuffer(tensors["rows"][2], np.int64).copy()
    rows[1] = rows[0]
    tensors["rows"][2] = rows.tobytes()


MODEL_CASES = [
    ("empty bias", set_tensor("bias", shape=[0], raw=b""), "model file's 'bias' tensor is float32 [0], expected float32 [1]"),
    ("2-D bias", set_tensor("bias", shape=[1, 1]), "model file's 'bias' tensor is float32 [1, 1], expected float32 [1]"),
    ("int32 factors", set_tensor("factors", dtype="I32"), "model file's 'factors' tensor is int32 [{rows}, 8], expected float32 [{rows}, 8]"),
    ("duplicate rows", duplicate_row, "model file's rows are not unique, ascending indices below 65536"),
    ("short optimizer state", set_tensor("opt.bias", shape=[1], raw=b"\0" * 4),
     "model file's 'opt.bias' tensor is float32 [1], expected float32 [2]"),
]


@pytest.mark.parametrize("version", [3, 2])
@pytest.mark.parametrize("name,edit,message", MODEL_CASES, ids=[c[0] for c in MODEL_CASES])
def test_a_crafted_model_is_refused(tmp_path, files, name, edit, message, version):
    """With a checksum that matches (a forger's, or an older fmctr's), the content is checked."""
    hashed, model, _ = files
    bad = tmp_path / "bad.fm"
    bad.write_bytes(craft(model.read_bytes(), edit, version=version))
    header, _ = split(model.read_bytes())
    expected = f"{bad}: " + message.format(rows=header["rows"]["shape"][0])
    if name != "short optimizer state":  # scoring does not read the optimizer state
        one_error(invoke("eval", hashed, "-m", bad, "--json"), expected)
    one_error(invoke("train", MOVIES_TEST, "-m", bad, "-o", tmp_path / "w.fm", "-q", "--epochs", "1"), expected)
    assert not (tmp_path / "w.fm").exists()


def test_the_checksum_covers_the_header_and_the_dtypes(tmp_path, files):
    hashed, model, _ = files
    data = model.read_bytes()
    at = data.index(b'\\"seed\\": 0')
    seed = tmp_path / "seed.fm"
    seed.write_bytes(data[: at + 10] + b"1" + data[at + 11 :])  # "seed": 0 -> 1, one bit
    header, body = split(data)
    header["factors"]["dtype"] = "I32"
    from damage import join

    dtype = tmp_path / "dtype.fm"
    dtype.write_bytes(join(header, body))
    for bad in (seed, dtype):
        one_error(invoke("eval", hashed, "-m", bad), f"{bad}: model file is corrupt (checksum mismatch)")


def test_a_version_2_model_still_loads(tmp_path, files):
    hashed, model, _ = files
    old = tmp_path / "old.fm"
    old.write_bytes(craft(model.read_bytes(), version=2))
    a, b = invoke("eval", hashed, "-m", model, "--json"), invoke("eval", hashed, "-m", old, "--json")
    assert (a.exit_code, b.exit_code) == (0, 0) and a.stdout == b.stdout


def test_deeply_nested_model_header(tmp_path, files):
    hashed, model, _ = files
    header, body = split(model.read_bytes())
    header["__metadata__"]["fmctr"] = "[" * 100_000 + "]" * 100_000
    from damage import join

    bad = tmp_path / "deep.fm"
    bad.write_bytes(join(header, body))
    one_error(invoke("eval", hashed, "-m", bad), f"{bad}: not an fmctr model file (no fmctr header)")


@pytest.mark.parametrize("name,content,message", [
    ("s.json", "[" * 100_000 + "]" * 100_000, "not valid JSON: nested too deeply"),
    ("s.toml", "a = " + "[" * 100_000 + "]" * 100_000, "not valid TOML: nested too deeply"),
    ("s.json", "[1, 2]", "a schema file holds a table of keys (label, numeric, ...), not a list"),
])
def test_a_malformed_schema_file(tmp_path, name, content, message):
    schema = tmp_path / name
    schema.write_text(content)
    one_error(invoke("train", MOVIES_TRAIN, "--schema", schema, "-o", tmp_path / "m.fm", "-q"), f"{schema}: {message}")


def crafted_checkpoint(tmp_path, ckpt, edit, name="c.ckpt"):
    path = tmp_path / name
    path.write_bytes(craft(ckpt.read_bytes(), edit))
    return path


def test_a_checkpoint_writes_only_beside_itself_over_a_model(tmp_path, files):
    _, _, ckpt = files
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    for output in (str(victim), "/tmp/elsewhere/victim.fm"):
        path = crafted_checkpoint(tmp_path, ckpt, lambda meta, t: meta["training"]["resume"].update(output=output))
        one_error(invoke("train", "--resume", path, "-q"),
                  f"{path}: the checkpoint names no model file to write beside it (its output is elsewhere, "
                  "or an existing file that is not a model): give -o/--output")
    assert victim.read_text() == "precious\n"


def test_resume_refuses_other_data(tmp_path, files):
    hashed, _, ckpt = files
    other = tmp_path / "other.hashed"
    shutil.copytree(hashed, other)
    edit_array(other, "labels", lambda y: 1 - y)
    edit_manifest(other, lambda m: m["parts"][0].update(positives=5000 - m["parts"][0]["positives"]))
    path = crafted_checkpoint(tmp_path, ckpt, None)
    one_error(invoke("train", other, "--resume", path, "-o", tmp_path / "m.fm", "-q"),
              f"{other}: not the data the checkpoint's run started on (it has changed, or it is another file); "
              "resume with that data")
    # An older checkpoint (no fingerprint) with a relative input: from the checkpoint's
    # directory, not the working directory; the number of rows is checked.
    def old_style(meta, tensors):
        meta["training"]["resume"].update(input="movies.hashed", fingerprints=None)
    path = crafted_checkpoint(tmp_path, ckpt, old_style)
    one_error(invoke("train", "--resume", path, "-o", tmp_path / "m.fm", "-q"), f"{tmp_path / 'movies.hashed'}: no such file")
    short = tmp_path / "movies.hashed"
    assert invoke("preprocess", MOVIES_TEST, *FLAGS, *BITS, "-o", short).exit_code == 0
    one_error(invoke("train", "--resume", path, "-o", tmp_path / "m.fm", "-q"),
              f"{short}: 1,000 training rows, but the checkpoint's run started on 5,000; resume with that data")


@pytest.mark.parametrize("progress,message", [
    ({"epoch": -3}, "malformed checkpoint progress (epoch from 1, block and rows from 0, a finite loss)"),
    ({"block": -1}, "malformed checkpoint progress (epoch from 1, block and rows from 0, a finite loss)"),
    ({"epoch": 9}, "checkpoint progress (epoch 9, block 0, 0 rows) is beyond the run it resumes (3 epochs of 5,000 rows)"),
    ({"block": 10**9}, "checkpoint progress (epoch 2, block 1000000000, 0 rows) is beyond the run it resumes (3 epochs of 5,000 rows)"),
    ({"epoch_rng": "x"}, "malformed checkpoint progress (TypeError: state must be a dict)"),
])
def test_resume_refuses_progress_beyond_the_run(tmp_path, files, progress, message):
    _, _, ckpt = files
    path = crafted_checkpoint(tmp_path, ckpt, lambda meta, t: meta["checkpoint"].update(progress))
    one_error(invoke("train", "--resume", path, "-o", tmp_path / "m.fm", "-q"), message)
