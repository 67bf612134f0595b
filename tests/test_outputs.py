"""Outputs never destroy data: no command writes over its own input, replaces what
fmctr did not write (unless --force), or turns a device, FIFO or symlink into a
regular file; mistakes are found before any data is read; a closed or full stdout is
an error."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading

import pytest

from conftest import MOVIES_FLAGS, MOVIES_TEST, MOVIES_TRAIN, invoke
from fmctr.models.modelfile import load

ONE_EPOCH = [*MOVIES_FLAGS, "-q", "--epochs", "1"]


def data_copy(tmp_path, name="d.csv"):
    path = tmp_path / name
    path.write_bytes(MOVIES_TEST.read_bytes())
    return path


def refused(result, message):
    assert (result.exit_code, result.stderr) == (1, f"error: {message}\n")


def test_preprocess_refuses_a_directory_fmctr_did_not_make(tmp_path):
    project = tmp_path / "myproject"
    project.mkdir()
    (project / "notes.txt").write_text("precious\n")
    # Refused before stdin is read (stdin is empty: reading it would be another error).
    refused(invoke("preprocess", "-", "-o", project, input=""),
            f"{project}: exists and is not an fmctr hashed dataset; refusing to replace it (--force replaces it)")
    assert [p.name for p in tmp_path.iterdir()] == ["myproject"] and (project / "notes.txt").exists()
    result = invoke("preprocess", MOVIES_TRAIN, *MOVIES_FLAGS, "-o", project, "--force")
    assert result.exit_code == 0, result.stderr
    assert (project / "manifest.json").exists() and not (project / "notes.txt").exists()
    # A hashed dataset fmctr wrote (or an empty directory) is replaced without --force.
    assert invoke("preprocess", MOVIES_TEST, *MOVIES_FLAGS, "-o", project).exit_code == 0
    (tmp_path / "empty").mkdir()
    assert invoke("preprocess", MOVIES_TEST, *MOVIES_FLAGS, "-o", tmp_path / "empty").exit_code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "myproject"]


def test_preprocess_into_the_directory_holding_its_input(tmp_path):
    shards = tmp_path / "shards"
    assert invoke("preprocess", MOVIES_TEST, *MOVIES_FLAGS, "-o", shards).exit_code == 0
    data = data_copy(shards)
    refused(invoke("preprocess", data, *MOVIES_FLAGS, "-o", shards),
            f"{shards}: is also an input of this command ({data}); give another output")
    assert data.exists()


@pytest.mark.parametrize("case", ["train", "train --valid", "train -m", "predict", "predict -m", "eval --plot"])
def test_no_command_writes_over_its_own_input(tmp_path, movies_model, case):
    data = data_copy(tmp_path)
    model = tmp_path / "m.fm"
    model.write_bytes(movies_model.read_bytes())
    args, victim = {
        "train": (["train", data, *ONE_EPOCH, "-o", data], data),
        "train --valid": (["train", MOVIES_TRAIN, *ONE_EPOCH, "--valid", data, "-o", data], data),
        "train -m": (["train", data, "-m", model, "-q", "--epochs", "1", "-o", model], model),
        "predict": (["predict", data, "-m", model, "-o", data], data),
        "predict -m": (["predict", data, "-m", model, "-o", model], model),
        "eval --plot": (["eval", data, "-m", model, "--plot", data], data),
    }[case]
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    refused(invoke(*args, "--force"), f"{victim}: is also an input of this command ({victim}); give another output")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    # The same file under another name (a symlink, a relative path) is the same input.
    link = tmp_path / "link.csv"
    link.symlink_to(data)
    result = invoke("predict", f"{tmp_path}/./d.csv", "-m", model, "-o", link)
    refused(result, f"{link}: is also an input of this command ({tmp_path}/./d.csv); give another output")


def test_a_file_of_another_kind_is_replaced_only_with_force(tmp_path, movies_model):
    notes = tmp_path / "notes.csv"
    notes.write_text("id,comment\n1,keep me\n")
    refused(invoke("train", MOVIES_TEST, *ONE_EPOCH, "-o", notes),
            f"{notes}: exists and is not an fmctr model file; refusing to replace it (--force replaces it)")
    refused(invoke("predict", MOVIES_TEST, "-m", movies_model, "-o", notes),
            f"{notes}: exists and is not a predictions CSV (its header ends in 'probability'); "
            "refusing to replace it (--force replaces it)")
    assert notes.read_text() == "id,comment\n1,keep me\n"
    assert invoke("predict", MOVIES_TEST, "-m", movies_model, "-o", notes, "--force").exit_code == 0
    assert notes.read_text().startswith("probability\n")
    # What fmctr wrote is replaced as before: predictions, models.
    assert invoke("predict", MOVIES_TEST, "-m", movies_model, "-o", notes).exit_code == 0
    model = tmp_path / "m.fm"
    assert invoke("train", MOVIES_TEST, *ONE_EPOCH, "-o", model).exit_code == 0
    assert invoke("train", MOVIES_TEST, *ONE_EPOCH, "-o", model).exit_code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.fm", "notes.csv"]


def test_output_mistakes_are_found_before_reading(tmp_path):
    """stdin is empty: had the data been read first, the error would be 'empty file'."""
    out = tmp_path / "no" / "model.fm"
    refused(invoke("train", "-", "-o", out, input=""), f"{out}: cannot write: directory {out.parent} does not exist")
    refused(invoke("train", "-", "-o", tmp_path, input=""), f"{tmp_path}: is a directory; give a file name to write")
    (tmp_path / "file").write_text("x")
    refused(invoke("preprocess", "-", "-o", tmp_path / "file", input=""), f"{tmp_path / 'file'}: exists and is not a directory")
    refused(invoke("train", "-", "-o", "-", "--json", input=""), "-o - and --json both write to stdout: give one of them")


def read_fifo(path, into: list):
    def run():
        with open(path, "rb") as f:
            into.append(f.read())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_a_fifo_is_written_through(tmp_path, movies_model):
    fifo = tmp_path / "preds.fifo"
    os.mkfifo(fifo)
    got: list = []
    reader = read_fifo(fifo, got)
    result = invoke("predict", MOVIES_TEST, "-m", movies_model, "-o", fifo)
    reader.join(10)
    assert result.exit_code == 0, result.stderr
    assert got[0].decode() == invoke("predict", MOVIES_TEST, "-m", movies_model).stdout
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and [p.name for p in tmp_path.iterdir()] == ["preds.fifo"]
    got.clear()
    reader = read_fifo(fifo, got)
    result = invoke("train", MOVIES_TEST, *ONE_EPOCH, "-o", fifo)  # a model through a pipe
    reader.join(10)
    assert result.exit_code == 0, result.stderr
    assert b"fmctr-model" in got[0][:4096]
    assert [p.name for p in tmp_path.iterdir()] == ["preds.fifo"]  # no preds.fifo.ckpt


@pytest.fixture
def char_device(tmp_path):
    """A private copy of /dev/null (the real one is never an output of a test: a
    regression would replace the system's)."""
    path = tmp_path / "null"
    try:
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        with open(path, "wb") as f:
            f.write(b"x")
    except OSError:
        pytest.skip("cannot make a character device here (not root, or a nodev file system)")
    return path


def test_a_character_device_is_written_through(tmp_path, movies_model, char_device):
    for args in (["predict", MOVIES_TEST, "-m", movies_model, "-o", char_device],
                 ["train", MOVIES_TEST, *ONE_EPOCH, "-o", char_device]):
        result = invoke(*args)
        assert result.exit_code == 0, result.stderr
        assert stat.S_ISCHR(os.lstat(char_device).st_mode)
    refused(invoke("preprocess", MOVIES_TEST, *MOVIES_FLAGS, "-o", char_device), f"{char_device}: exists and is not a directory")
    assert [p.name for p in tmp_path.iterdir()] == ["null"]  # no null.ckpt


def test_a_symlink_keeps_pointing_at_the_new_file(tmp_path, movies_model):
    """The link's target is replaced atomically (its temp beside the target); the link stays."""
    (tmp_path / "store").mkdir()
    (tmp_path / "links").mkdir()
    target, link = tmp_path / "store" / "preds.csv", tmp_path / "links" / "latest.csv"
    target.write_text("probability\n0.5\n")
    link.symlink_to(target)
    result = invoke("predict", MOVIES_TEST, "-m", movies_model, "-o", link)
    assert result.exit_code == 0, result.stderr
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert len(target.read_text().splitlines()) == 1001
    assert [p.name for p in (tmp_path / "store").iterdir()] == ["preds.csv"]
    model_link = tmp_path / "links" / "model.fm"
    model_link.symlink_to(tmp_path / "store" / "model.fm")  # dangling: its target is created
    assert invoke("train", MOVIES_TEST, *ONE_EPOCH, "-o", model_link).exit_code == 0
    assert model_link.is_symlink() and load(model_link).training["rows"] == 1000


def fmctr_in_shell(command: str) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", "-c", f"{sys.executable} -m fmctr {command}"], capture_output=True, text=True)


def test_closed_and_failing_streams_are_errors(movies_model):
    eval_closed = fmctr_in_shell(f"eval {MOVIES_TEST} -m {movies_model} --json >&-")
    assert (eval_closed.returncode, eval_closed.stderr) == (1, "error: stdout: cannot write: it is closed\n")
    predict_closed = fmctr_in_shell(f"predict {MOVIES_TEST} -m {movies_model} >&-")
    assert (predict_closed.returncode, predict_closed.stderr) == (1, "error: stdout: cannot write: it is closed\n")
    stdin_closed = fmctr_in_shell(f"predict - -m {movies_model} <&-")
    assert (stdin_closed.returncode, stdin_closed.stderr) == (1, "error: <stdin>: cannot read: it is closed\n")
    if not stat.S_ISCHR(os.stat("/dev/full").st_mode):
        pytest.skip("/dev/full is not a device here")
    full = fmctr_in_shell(f"predict {MOVIES_TEST} -m {movies_model} > /dev/full")  # the shell opens it: never replaced
    assert (full.returncode, full.stderr) == (1, "error: stdout: cannot write: No space left on device\n")
