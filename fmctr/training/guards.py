"""Checks that keep a training run from ending in a model that is surely wrong: the
memory the model and optimizer state will need, before anything is allocated; and a
loss or weights that stop being finite, as soon as they do (every weight NaN would be
written with exit 0 and score every row as NaN)."""

from __future__ import annotations

import math
import os

import numpy as np

from fmctr.errors import BadOptions, Diverged

# Settings beyond these are named as the likely cause of a diverged run.
LARGE_LR = 1.0
LARGE_INIT_STD = 1.0
LARGE_L2 = 1.0  # --l2-all, --l2-all-factors
LARGE_VALUE = 1e6


def model_bytes(num_features: int, dim: int, optimizer: str, validation: bool, kept: int = 0) -> int:
    """Bytes of the weights and optimizer state a run holds (fmctr.models.fm_engines),
    with `kept` more copies of the weights held meanwhile (the held-out run kept so far
    while a rival of the defaults trains: fmctr.training.selection)."""
    per_index = 4 * (1 + dim)  # linear weight and factors
    per_index += 4 * 4  # the cpu engine's table: linear weight, its two optimizer states, its --l2-all share
    per_index += 4 * dim * (2 if optimizer == "adam" else 1)  # the factors' optimizer state
    per_index += 1 + 8  # the seen flag; the feature counts of --l2-all
    if validation:
        per_index += 4 * (1 + dim)  # the best epoch's weights
    per_index += kept * 4 * (1 + dim)
    return num_features * per_index


def available_memory() -> int | None:
    """Memory this process can still take: MemAvailable, or the cgroup's limit if lower."""
    found = []
    try:
        with open("/proc/meminfo") as f:
            found += [int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:")]
    except OSError:
        try:
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            pass
    try:
        with open("/sys/fs/cgroup/memory.max") as f, open("/sys/fs/cgroup/memory.current") as g:
            limit = f.read().strip()
            if limit != "max":
                found.append(int(limit) - int(g.read().strip()))
    except (OSError, ValueError):
        pass
    return min(found) if found else None


def _gib(n: float) -> str:
    return f"{n / 2**30:,.1f} GiB"


def check_memory(bits: int, dim: int, optimizer: str, validation: bool, kept: int = 0) -> None:
    """Refuse a model that cannot fit, with the numbers, before allocating it."""
    need = model_bytes(1 << bits, dim, optimizer, validation, kept)
    available = available_memory()
    if available is not None and need > available:
        raise BadOptions(f"--bits {bits} with --dim {dim} needs about {_gib(need)} for the model and its {optimizer} "
                         f"state, more than the {_gib(available)} of memory available; use fewer --bits or a smaller --dim")


def check_loss(loss: float, cfg, source, epoch: int, rows_done: int) -> None:
    if not math.isfinite(loss):
        raise diverged(cfg, source, epoch, f"the loss is {loss} after {rows_done:,} rows")


def diverged(cfg, source, epoch: int, what: str) -> Diverged:
    return Diverged(f"training diverged in epoch {epoch}: {what}; {likely_cause(cfg, source)}")


def likely_cause(cfg, source) -> str:
    """The options or data values most likely to have made training diverge."""
    causes = []
    if cfg.lr > LARGE_LR:
        causes.append(f"--lr {cfg.lr:g}")
    if cfg.init_std > LARGE_INIT_STD:
        causes.append(f"--init-std {cfg.init_std:g}")
    l2_all = {"--l2-all": cfg.l2_all_linear, "--l2-all-factors": cfg.l2_all_factors}
    causes += [f"{name} {value:g}" for name, value in l2_all.items() if value > LARGE_L2]
    # The touch L2 shrinks a weight by lr * l2 per batch: past 1, it overshoots zero.
    touch = {"--l2-factors": cfg.l2_factors} if cfg.optimizer == "ftrl" else {"--l2": cfg.l2_linear, "--l2-factors": cfg.l2_factors}
    causes += [f"{name} {value:g}" for name, value in touch.items() if cfg.lr * value > 1 and cfg.lr <= LARGE_LR]
    largest = max((float(np.abs(b.values).max(initial=0)) for b in source.blocks()), default=0.0)
    if largest > LARGE_VALUE:
        causes.append(f"feature values up to {largest:g} (scale them, or use --numeric-mode log1p)")
    if not causes:
        return "no option or value stands out: try a smaller --lr"
    return "likely cause: " + ", ".join(causes) + " (try smaller values)"
