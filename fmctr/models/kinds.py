"""The model kinds fmctr knows, by name, and scoring through them."""

from __future__ import annotations

from fmctr.errors import BadOptions
from fmctr.models import fm  # noqa: F401  (registers the FM)
from fmctr.models.base import KINDS, ModelKind
from fmctr.models.runtime import resolve_device


def kind_of(name: str) -> ModelKind:
    if name not in KINDS:
        raise BadOptions(f"unknown model kind {name!r} (choose from {', '.join(KINDS)})")
    return KINDS[name]


def scorer(weights, *, kind: str = "fm", device: str = "auto", engine: str = "auto"):
    """A callable rows -> click probabilities: the CPU kernel, or the torch model on a
    GPU (`engine="torch"` also forces the torch model on a CPU)."""
    engine, device = resolve_device(engine, device)
    return kind_of(kind).scorer(weights, engine=engine, device=device)
