"""SIGTERM and SIGINT in every phase a command reaches: exit 143 / 130, one `error:`
line naming the signal, and nothing left behind - no temporary file in the output
folder, none in $TMPDIR (train alone keeps its checkpoint, as documented).

Each case runs a real process. Data comes through a pipe: once the test has written
more than a pipe holds, the process is reading (its handlers are installed), and
while the pipe stays open it cannot finish; the signal then lands where the test chose."""

from __future__ import annotations

import gzip
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import CRITEO_TEST, CRITEO_TRAIN, invoke

CRITEO = ["--preset", "criteo", "--bits", "18", "--threads", "1"]


@pytest.fixture(scope="module")
def rows_80k(tmp_path_factory) -> bytes:
    """20 MB: more than one 16 MiB block of the reader, so a part is hashed and written
    while the rest of the pipe is awaited."""
    return gzip.decompress(CRITEO_TRAIN.read_bytes()) * 4


@pytest.fixture
def dirs(tmp_path):
    out, tmp = tmp_path / "out", tmp_path / "tmp"
    out.mkdir()
    tmp.mkdir()
    return out, tmp


def wait_for(ready, proc, what: str, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not ready():
        assert proc.poll() is None, f"exited before {what}: {proc.stderr.read()}"
        assert time.monotonic() < deadline, f"no {what} after {seconds} s"
        time.sleep(0.02)


def interrupt(args, dirs, *, feed: bytes | None = None, ready=None, what="", sig=signal.SIGTERM):
    """Start `fmctr ARGS` in the output folder with a private $TMPDIR, feed its stdin,
    wait until `ready()`, send `sig`; return (exit code, stderr)."""
    out, tmp = dirs
    proc = subprocess.Popen([sys.executable, "-m", "fmctr", *map(str, args)], cwd=out,
                            env={**os.environ, "TMPDIR": str(tmp)}, stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=False)
    try:
        if feed is not None:
            proc.stdin.write(feed)  # returns when the process has taken all but a pipe's worth
            proc.stdin.flush()
        if ready is not None:
            wait_for(ready, proc, what)
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, stderr.decode()


def left(dirs, keep=()) -> list[str]:
    out, tmp = dirs
    return sorted(p.name for p in out.iterdir() if p.name not in keep) + sorted(p.name for p in tmp.iterdir())


def temp_in(folder, prefix=""):
    return lambda: any(p.name.startswith(prefix) for p in folder.iterdir())


def written_temp(folder):
    """A temporary output beside the target, with data in it (a file, or a directory with a part)."""
    return lambda: any(p.name.endswith(".tmp") and (any(p.iterdir()) if p.is_dir() else p.stat().st_size > 0)
                       for p in folder.iterdir())


def test_preprocess_while_hashing_and_writing(dirs, rows_80k):
    out, _ = dirs
    code, err = interrupt(["preprocess", "-", *CRITEO, "-o", "data.hashed"], dirs, feed=rows_80k,
                          ready=written_temp(out), what="part written")
    assert (code, err, left(dirs)) == (143, "error: interrupted by SIGTERM\n", [])


def test_train_while_reading(dirs, rows_80k):
    _, tmp = dirs
    code, err = interrupt(["train", "-", *CRITEO, "-q", "-o", "m.fm"], dirs, feed=rows_80k,
                          ready=temp_in(tmp, "fmctr-"), what="temporary dataset")
    assert (code, err, left(dirs)) == (143, "error: interrupted by SIGTERM\n", [])


def test_train_while_training_keeps_its_checkpoint(dirs):
    out, _ = dirs
    (out / "data.tsv").write_bytes(gzip.decompress(CRITEO_TRAIN.read_bytes()))  # one block an epoch: a short wait
    code, err = interrupt(["train", "data.tsv", *CRITEO, "-q", "-o", "m.fm", "--checkpoint-every", "0.01"], dirs,
                          ready=lambda: (out / "m.fm.ckpt").exists(), what="checkpoint")
    assert code == 143 and err.startswith("error: interrupted in epoch ") and len(err.splitlines()) == 1, err
    assert err.endswith("; checkpoint written to m.fm.ckpt; resume with: fmctr train --resume m.fm.ckpt\n")
    assert left(dirs, keep=["data.tsv"]) == ["m.fm.ckpt"]


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_predict_while_reading(dirs, rows_80k, criteo_model, sig, code):
    result = interrupt(["predict", "-", "-m", criteo_model, "-o", "p.csv"], dirs, feed=rows_80k, sig=sig)
    assert result == (code, f"error: interrupted by {sig.name}\n")
    assert left(dirs) == []


def test_predict_while_writing(dirs, rows_80k, criteo_model):
    out, _ = dirs
    result = interrupt(["predict", "-", "-m", criteo_model, "-o", "p.csv"], dirs, feed=rows_80k,
                       ready=written_temp(out), what="predictions written")
    assert result == (143, "error: interrupted by SIGTERM\n")
    assert left(dirs) == []


def test_eval_while_reading(dirs, rows_80k, criteo_model):
    result = interrupt(["eval", "-", "-m", criteo_model, "--json"], dirs, feed=rows_80k)
    assert result == (143, "error: interrupted by SIGTERM\n")
    assert left(dirs) == []


def test_tune_while_hashing(dirs, rows_80k):
    _, tmp = dirs
    result = interrupt(["tune", "-", "--valid", CRITEO_TEST, *CRITEO, "-q", "-o", "best.fm"], dirs, feed=rows_80k,
                       ready=temp_in(tmp, "fmctr-tune-"), what="temporary dataset")
    assert result == (143, "error: interrupted by SIGTERM\n")
    assert left(dirs) == []


def test_tune_while_training_a_trial(dirs, tmp_path):
    _, tmp = dirs
    hashed = tmp_path / "train.hashed"
    assert invoke("preprocess", CRITEO_TRAIN, *CRITEO, "-o", hashed).exit_code == 0
    trial = lambda: any(p.name.startswith("fmctr-") and not p.name.startswith("fmctr-tune-") for p in tmp.iterdir())
    result = interrupt(["tune", hashed, "--valid", CRITEO_TEST, "--threads", "1", "-q", "-o", "best.fm"], dirs,
                       ready=trial, what="trial")
    assert result == (143, "error: interrupted by SIGTERM\n")
    assert left(dirs) == []


HALF_MADE = """
import os, signal, sys
from fmctr.commands import cli

class HalfMade:  # as llvmlite's ObjectRef when the signal lands while numba compiles
    def __init__(self):
        os.kill(os.getpid(), signal.SIGTERM)  # Stopped is raised here, mid-construction
        self.handle = 1

    def __del__(self):
        del self.handle  # AttributeError: the object was never finished

@cli.errors_to_exit
def command():
    HalfMade()

try:
    command()
except Exception as e:  # typer.Exit, with the signal's code
    sys.exit(getattr(e, "exit_code", 1))
"""


def test_a_finalizer_that_fails_after_the_signal_adds_no_traceback():
    """Seen in CI: tune stopped while numba compiled a trial's kernel wrote the error
    line, then "Exception ignored in: <function ObjectRef.__del__ ...>" and a traceback."""
    proc = subprocess.run([sys.executable, "-c", HALF_MADE], capture_output=True, text=True, timeout=120)
    assert (proc.returncode, proc.stderr) == (143, "error: interrupted by SIGTERM\n")


def test_a_signal_while_numba_compiles_comes_again_once_it_is_done(monkeypatch):
    """A stop raised inside numba's compiler can leave a half-made llvmlite object that
    is freed twice at exit (glibc aborts: exit -6 instead of 143): while numba's or
    llvmlite's Python code is running, the handler sends the signal again shortly
    instead of raising; elsewhere it raises at once."""
    import numba

    from fmctr.commands import cli

    space: dict = {}
    exec(compile("import sys\ndef where():\n    return sys._getframe()\n",
                 os.path.join(os.path.dirname(numba.__file__), "compiler_stand_in.py"), "exec"), space)
    sent = []
    monkeypatch.setattr(cli, "_again_soon", sent.append)
    monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)  # (the handler replaces it when it stops)
    signals = cli._Signals()
    signals._handle(signal.SIGTERM, space["where"]())
    assert sent == [signal.SIGTERM] and signals.signal == 0
    with pytest.raises(cli.Stopped):
        signals._handle(signal.SIGTERM, sys._getframe())
    assert signals.signal == signal.SIGTERM and sent == [signal.SIGTERM]
