"""Short commands start without building the typer app (fmctr.commands.plain_args): a
command line read that way means what it means to typer, or is left to typer."""

from __future__ import annotations

import functools

import pytest
import typer

from fmctr.commands import cli, plain_args

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
