"""Keep `fmctr --help` quick: typer's rich help imports rich.markdown (markdown-it) and
rich.traceback (rich.syntax, pygments) at import time - about a third of the time
`--help` takes - but uses the first only in the "markdown" markup mode, which fmctr
does not use, and the second only to print a traceback, which fmctr never lets typer
do (its commands catch their errors). Until something asks for them, each is a
stand-in module whose classes load the real module first.
"""

from __future__ import annotations

import importlib
import sys
import types

LAZY = {"rich.markdown": ("Markdown",), "rich.traceback": ("Traceback",)}


def _real(name: str) -> types.ModuleType:
    module = sys.modules.get(name)
    if module is not None and getattr(module, "__fmctr_stand_in__", False):
        del sys.modules[name]
    return importlib.import_module(name)


def _stand_in(name: str, classes: tuple[str, ...]) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__fmctr_stand_in__ = True

    def loader(cls_name: str):
        class Deferred:
            def __new__(cls, *args, **kwargs):
                return getattr(_real(name), cls_name)(*args, **kwargs)

        Deferred.__name__ = Deferred.__qualname__ = cls_name
        return Deferred

    for cls_name in classes:
        setattr(module, cls_name, loader(cls_name))

    def attribute(attr: str):
        if attr.startswith("__"):  # the import system asks for __path__ on `from rich.markdown import ...`
            raise AttributeError(attr)
        return getattr(_real(name), attr)

    module.__getattr__ = attribute
    return module


def install() -> None:
    """Put the stand-ins in place of the modules not imported yet."""
    for name, classes in LAZY.items():
        sys.modules.setdefault(name, _stand_in(name, classes))
