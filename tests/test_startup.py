"""A short command starts fast: it runs without building the typer app
(fmctr.commands.plain_args; a command line read that way means what it means to typer,
or is left to typer), imports only what it uses, and imports without the garbage
collector (fmctr.commands.importing). Held by what is imported, not by timing."""

from __future__ import annotations

import functools
import subprocess
import sys

import pytest
import typer

from conftest import CRITEO_TEST, CRITEO_TRAIN, invoke
from fmctr.commands import cli, importing, plain_args

PLAIN = {"eval": cli.eval_cmd, "predict": cli.predict, "info": cli.info, "inspect": cli.inspect_cmd,
         "recall": cli.recall_cmd}

LINES = [
    ("predict", ["x.tsv", "-m", "m.fm"]),
    ("predict", ["-m", "m.fm"]),
    ("predict", ["--model=m.fm", "-o", "-", "--keep", "a,b", "--keep", "c", "--threads", "007", "--precision=+3",
                 "--allow-missing-columns", "--force", "--format", "tsv", "--explain", "2", "--device", "cpu", "-"]),
    ("predict", ["", "-m", "", "--keep="]),
    ("eval", ["t.csv", "-m", "m.fm", "--json", "--bins", "20", "--plot", "p.png", "--ranking", "--items", "i.csv",
              "-k", "0", "--item-id", "item", "--user-id", "user", "--exclude", "seen.csv"]),
    ("info", ["m.fm"]),
    ("info", ["m.fm", "--json", "--verify"]),
    ("inspect", ["m.fm", "--data", "d.csv", "--top", "5", "--rows", "100", "--json", "--plot", "h.png",
                 "--export-text", "-"]),
    ("recall", ["u.csv", "--items", "i.csv", "-m", "m.fm", "-k", "3", "--keep", "user", "--with-features",
                "--export-items", "v.parquet", "--export-users", "u.csv", "--precision", "4", "--exclude", "s.csv"]),
]

LEFT_TO_TYPER = [
    ["x", "-m", "m", "--threads", "1_000"],  # typer reads 1000
    ["x", "-m", "m", "--threads", " 3"],  # typer reads 3
    ["x", "-m", "m", "--threads", "\uff13"],  # a full-width 3: typer refuses it, Python's int would not
    ["x", "-m", "m", "--threads", "-1"],  # a value that looks like an option
    ["x", "-m", "--force"],
    ["x", "y", "-m", "m"],
    ["x", "-m", "m", "-m", "n"],
    ["x", "-m", "m", "--help"],
    ["x", "-m", "m", "--", "y"],
    ["x", "-mm"],
    ["x", "-m=m"],
    ["x", "-m", "m", "--force=1"],
    ["x", "-m", "m", "--no-force"],
    ["x", "-m", "m", "--version"],
    ["x"],
    ["-m"],
]


def typer_reads(command, args: list[str]):
    """The keyword arguments typer calls `command` with, or the usage error it raises."""
    got = {}

    @functools.wraps(command.__wrapped__)
    def record(**kwargs):
        got.update(kwargs)

    app = typer.Typer()
    app.command()(record)
    try:
        app(args, standalone_mode=False)
    except Exception as e:
        return type(e).__name__
    return got


def test_the_plain_commands():
    found = {}
    for command in cli.app.registered_commands:
        plan = plain_args.plan(command.callback, typer.models.ArgumentInfo, typer.models.OptionInfo)
        if plan is not None:
            found[command.name or command.callback.__name__] = command.callback
    assert found == PLAIN


@pytest.mark.parametrize(("name", "args"), LINES)
def test_a_plain_line_means_what_it_means_to_typer(name, args):
    plan = plain_args.plan(PLAIN[name], typer.models.ArgumentInfo, typer.models.OptionInfo)
    plain = plain_args.parse(plan, args)
    assert plain is not None and plain == typer_reads(PLAIN[name], args)


@pytest.mark.parametrize("args", LEFT_TO_TYPER)
def test_anything_else_is_left_to_typer(args):
    plan = plain_args.plan(cli.predict, typer.models.ArgumentInfo, typer.models.OptionInfo)
    assert plain_args.parse(plan, args) is None


def test_a_short_predict_or_eval_imports_no_training_and_no_pydantic(tmp_path):
    """A 10-row predict or `eval --json`, as a whole process, loads only what scoring
    needs (what else they loaded was about a third of their start-up): no pydantic
    (typer's parameter checks), no training modules, no numba, no rich, no torch, and
    predict no numpy.ma (polars reads numpy arrays through it)."""
    model, ten, out = tmp_path / "c.fm", tmp_path / "ten.tsv", tmp_path / "p.csv"
    assert invoke("train", CRITEO_TRAIN, "--preset", "criteo", "--epochs", "1", "-o", model, "-q").exit_code == 0
    ten.write_text("".join(CRITEO_TEST.read_text().splitlines(keepends=True)[:10]))
    code = ("import sys; from fmctr.commands.cli import main; sys.argv = ['fmctr', *sys.argv[1:]]\n"
            "try: main()\nexcept SystemExit as e: assert not e.code, e.code\n"
            "sys.stderr.write(' '.join(sorted(sys.modules)))")
    for command, more in (("predict", ["-o", str(out)]), ("eval", ["--json"])):
        done = subprocess.run([sys.executable, "-c", code, command, str(ten), "-m", str(model), *more],
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        loaded = done.stderr.split()
        heavy = [m for m in loaded if m in {"pydantic", "numba", "rich", "torch"} or m.startswith("fmctr.training")
                 or command == "predict" and m == "numpy.ma"]
        assert heavy == [], command
    assert len(out.read_text().splitlines()) == 11


def test_imports_pause_the_collector_and_only_a_whole_process_freezes(monkeypatch):
    import gc

    monkeypatch.setattr(importing, "_whole_process", False)
    frozen = gc.get_freeze_count()
    with importing.collector_paused():
        assert not gc.isenabled()
    assert gc.isenabled() and gc.get_freeze_count() == frozen
    code = ("import gc; from fmctr.commands import importing; importing.whole_process()\n"
            "with importing.collector_paused(): import json\n"
            "assert gc.isenabled() and gc.get_freeze_count() > 0 and gc.get_count()[0] < 100")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr



def test_help_renders_without_markdown_or_tracebacks():
    """`fmctr --help` renders with rich markup: rich.markdown (markdown-it, about 0.1 s) and
    rich.traceback (rich.syntax, pygments) stay stand-ins (fmctr.commands.lazy_rich),
    even through typer's `from rich.markdown import Markdown`, which asks the module for
    __path__."""
    code = ("import sys; from fmctr.commands.cli import main; sys.argv = ['fmctr', '--help']\n"
            "try: main()\nexcept SystemExit as e: assert not e.code, e.code\n"
            "sys.stderr.write(' '.join(sorted(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "Usage" in done.stdout and "predict" in done.stdout
    loaded = done.stderr.split()
    assert "markdown_it" not in loaded and "pygments" not in loaded and "rich.syntax" not in loaded
