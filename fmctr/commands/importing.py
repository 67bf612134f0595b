"""Imports without the cyclic garbage collector.

Importing numpy, polars, pyarrow and typer creates a few hundred thousand objects and
no garbage, yet the collector, run every 700 new objects, walks the young ones each
time, and all of them once more at exit: about 0.1 s of CPU here, a fifth of a short
`fmctr predict`. The commands pause it around their heavy imports; when fmctr is the
whole process (`main`, not a library caller or a test's in-process runner), what was
imported is also frozen (gc.freeze: never walked again, not even at exit). A long run
collects its own garbage as usual either way.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

_whole_process = False


def whole_process() -> None:
    """fmctr is this process's program: freeze what is imported from now on, and what
    was imported so far."""
    global _whole_process
    _whole_process = True
    gc.freeze()


@contextmanager
def collector_paused() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if _whole_process:
            gc.freeze()
        if enabled:
            gc.enable()
