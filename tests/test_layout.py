"""The package layout tells the data's story: each layer imports only from the layers
before it (reading -> hashing -> datasets -> models -> training -> commands), only
the CLI imports typer, and only the commands import rich."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "fmctr"
# Leaf modules (no fmctr imports of their own) sit at layer 0 with the package itself.
ORDER = {"fmctr": 0, "fmctr.errors": 0, "fmctr.atomic": 0, "fmctr.metrics": 0, "fmctr.tables": 0, "fmctr.ranking": 0,
         "fmctr.reading": 1,
         "fmctr.hashing": 2, "fmctr.datasets": 3, "fmctr.models": 4, "fmctr.training": 5, "fmctr.commands": 6,
         "fmctr.__main__": 7}


def layer(module: str) -> int:
    parts = module.split(".")
    for n in (2, 1):
        key = ".".join(parts[:n])
        if key in ORDER:
            return ORDER[key]
    raise AssertionError(f"{module} is in no layer")


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[str]:
    """Modules imported at run time (not those under `if TYPE_CHECKING:`)."""
    tree = ast.parse(path.read_text())
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for child in node.body for n in ast.walk(child)}
    found = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module:
            found.append(node.module)
            found += [f"{node.module}.{a.name}" for a in node.names if node.module.startswith("fmctr")]
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names]
    return found


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_imports_go_only_downward(path):
    here = module_name(path)
    upward = [m for m in imports(path) if m.startswith("fmctr") and layer(m) > layer(here)]
    assert upward == [], f"{here} imports from later layers: {upward}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_only_the_commands_talk_to_people(path):
    here = module_name(path)
    found = {m.split(".")[0] for m in imports(path)}
    if here != "fmctr.commands.cli":
        assert "typer" not in found
    if not here.startswith("fmctr.commands"):
        assert "rich" not in found


def test_no_function_a_reader_has_to_scroll():
    """No function in the core (everything but the CLI's option lists) runs past 60 lines."""
    long = []
    for path in MODULES:
        if module_name(path) == "fmctr.commands.cli":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > 60:
                    long.append(f"{module_name(path)}.{node.name}: {length} lines")
    assert long == []
