"""Keep `fmctr --help` quick: typer's rich help imports rich.markdown (and with it
markdown-it and pygments, about a fifth of the time `--help` takes) at import time, but
uses it only in the "markdown" markup mode, which fmctr does not use. Until something
asks for it, rich.markdown is a stand-in whose Markdown loads the real module first.
"""

from __future__ import annotations

import importlib
import sys
import types


class _Markdown:
    def __new__(cls, *args, **kwargs):
        return _real().Markdown(*args, **kwargs)


def _real() -> types.ModuleType:
    if sys.modules.get("rich.markdown") is _STAND_IN:
        del sys.modules["rich.markdown"]
    return importlib.import_module("rich.markdown")


def _getattr(name: str):
    if name.startswith("__"):  # the import system asks for __path__ on `from rich.markdown import ...`
        raise AttributeError(name)
    return getattr(_real(), name)


_STAND_IN = types.ModuleType("rich.markdown")
_STAND_IN.Markdown = _Markdown
_STAND_IN.__getattr__ = _getattr


def install() -> None:
    """Put the stand-in in place unless rich.markdown is already imported."""
    sys.modules.setdefault("rich.markdown", _STAND_IN)
