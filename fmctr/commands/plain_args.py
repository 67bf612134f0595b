"""A command line read straight off a typer command's signature, for the plain cases.

Typer checks each parameter of the command it runs through a pydantic TypeAdapter;
importing pydantic and building those costs about 0.1 s of CPU, more than a 10-row
`fmctr predict` needs for its work. The common command lines (`predict FILE -m MODEL
-o OUT --keep id`) need none of it, so they are parsed here, from the same
`Annotated[..., typer.Option(...)]` declarations typer reads, and the command function
is called directly. Anything this does not plainly understand - `--help`, an unknown or
repeated option, a missing value, a value that starts with `-`, a number typer might
read otherwise - gives None, and the caller runs typer, which says what is wrong in its
usual words. So a line parsed here means what it means to typer, or is not parsed here.
"""

from __future__ import annotations

import inspect
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

_INT = re.compile(r"[+-]?[0-9]+")  # pydantic reads more ("1_000", " 7"); those go to typer


def _int(text: str) -> int:
    if not _INT.fullmatch(text):
        raise ValueError(text)
    return int(text)


CONVERT: dict[Any, Callable[[str], Any]] = {str: str, Path: Path, int: _int}

# ParameterInfo settings that change how a value is read; a command using any goes to typer.
_SPECIAL = ("callback", "envvar", "parser", "click_type", "prompt", "is_eager", "min", "max", "count",
            "default_factory")


@dataclass(frozen=True)
class Param:
    name: str  # the function's keyword
    convert: Callable[[str], Any] | None  # None: a flag (given means True)
    default: Any
    required: bool
    multiple: bool = False


@dataclass(frozen=True)
class Plan:
    """How to read one command's line: its arguments in order, its options by name."""

    arguments: tuple[Param, ...]
    options: dict[str, Param]


def _value_type(annotation) -> tuple[Any, bool]:
    """The type of one value, and whether the option repeats (list[str])."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:  # Optional[X]
        annotation, args = args[0], list(typing.get_args(args[0]))
    if typing.get_origin(annotation) is list and args == [str]:
        return str, True
    return annotation, False


def _param(parameter: inspect.Parameter, argument_info: type, option_info: type) -> tuple[Param, list[str]] | None:
    """One parameter, and its option names ([] for an argument); None if not plain."""
    if typing.get_origin(parameter.annotation) is not typing.Annotated:
        return None
    annotation, info = typing.get_args(parameter.annotation)[:2]
    if not isinstance(info, (argument_info, option_info)) or any(getattr(info, a, None) for a in _SPECIAL) \
            or getattr(info, "expose_value", True) is not True:
        return None
    value_type, multiple = _value_type(annotation)
    required = parameter.default is ... or parameter.default is inspect.Parameter.empty
    default = None if required else parameter.default
    if value_type not in CONVERT and value_type is not bool \
            or not (default is None or multiple or isinstance(default, value_type)):
        return None  # (typer would convert a default of another type)
    if isinstance(info, argument_info):
        if multiple or value_type is bool:
            return None
        return Param(parameter.name, CONVERT[value_type], default, required), []
    # In Annotated, Option's first positional (its `default` field) is the first option name.
    decls = [info.default] if isinstance(info.default, str) else []
    decls += list(info.param_decls or ())
    names = decls or [f"--{parameter.name.replace('_', '-')}"]
    if value_type is bool:
        if not decls or any("/" in n for n in names) or default is not False or multiple:
            return None  # --x/--no-x pairs and flags that default to on are typer's
        return Param(parameter.name, None, False, False), names
    return Param(parameter.name, CONVERT[value_type], default, required, multiple), names


def plan(fn: Callable, argument_info: type, option_info: type) -> Plan | None:
    """How to read `fn`'s command line (typer's ArgumentInfo and OptionInfo are passed
    in: only the CLI module imports typer); None when a parameter is not plain."""
    arguments, options = [], {}
    for parameter in inspect.signature(fn).parameters.values():
        found = _param(parameter, argument_info, option_info)
        if found is None:
            return None
        param, names = found
        if not names:
            arguments.append(param)
        for name in names:
            options[name] = param
    return Plan(tuple(arguments), options)


def _is_value(arg: str) -> bool:
    return arg == "-" or not arg.startswith("-")


def parse(plan: Plan, args: list[str]) -> dict[str, Any] | None:
    """The keyword arguments `args` give the command, or None if typer should read them."""
    given: dict[str, Any] = {}
    positional: list[str] = []
    rest = iter(args)
    for arg in rest:
        if _is_value(arg):
            positional.append(arg)
            continue
        name, eq, text = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        param = plan.options.get(name)
        if param is None or param.name in given and not param.multiple:
            return None
        if param.convert is None:
            if eq:
                return None
            given[param.name] = True
            continue
        if not eq:
            text = next(rest, None)
            if text is None or not _is_value(text):
                return None
        try:
            value = param.convert(text)
        except ValueError:
            return None
        if param.multiple:
            given.setdefault(param.name, []).append(value)
        else:
            given[param.name] = value
    if len(positional) > len(plan.arguments):
        return None
    try:
        given.update((p.name, p.convert(text)) for p, text in zip(plan.arguments, positional))
    except ValueError:
        return None
    params = list(plan.arguments) + list(plan.options.values())
    if any(p.required and p.name not in given for p in params):
        return None
    return {p.name: given.get(p.name, p.default) for p in params}
