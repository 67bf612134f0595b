"""Training from positives only (fmctr.datasets.negatives draws the negatives), with
the epochs chosen the way ordinary training chooses them (fmctr.training.selection):
the last positives held out, early stopping on them, then a refit on every positive -
but judged by NDCG@10 over the whole catalogue (fmctr.training.ranked), not logloss.
"""

from __future__ import annotations

import numpy as np

from fmctr.datasets.negatives import Positives, SampledRows
from fmctr.errors import BadOptions
from fmctr.training import selection
from fmctr.training.config import TrainConfig
from fmctr.training.loop import TrainResult, train
from fmctr.training.ranked import K, RankingCheck

LOSSES = ("logistic", "bpr")
# Training from positives starts from other defaults than CTR training (bench/recall.py,
# chosen on carves of the training positives, README "Recall"): with one id per side,
# a pair's gradient is the other side's factors, so factors that start at 0.01 under
# Adagrad's initial accumulator of 1 and CTR's L2 shrink to nothing and the model ranks
# by popularity alone (P@10 0.116 against 0.22 on LightFM's protocol).
POSITIVES_DEFAULTS = {"dim": 32, "lr": 0.05, "init_std": 0.1, "adagrad_init": 0.01,
                      "l2_linear": 0.0, "l2_factors": 0.0, "l2_all_factors": 0.0}
STOP_METRIC = f"ndcg@{K}"
MAX_CHECK_USERS = 2000  # held-out users scored per check (a random subset beyond this)


def for_positives(cfg: TrainConfig) -> TrainConfig:
    """`cfg` with POSITIVES_DEFAULTS for the options left at their ordinary default."""
    ordinary = TrainConfig().options()
    given = cfg.options()
    return cfg.with_options(**{name: value for name, value in POSITIVES_DEFAULTS.items()
                               if given[name] == ordinary[name]})


def user_keys(context) -> np.ndarray:
    """A small integer per distinct context row (a user, or a user in a context)."""
    lengths = np.diff(context.offsets)
    if len(lengths) and (lengths == lengths[0]).all():
        table = context.indices.reshape(len(lengths), -1)
        if not (context.values == 1).all():
            table = np.concatenate([table, context.values.view(np.int32).reshape(len(lengths), -1)], axis=1)
        return np.unique(table, axis=0, return_inverse=True)[1].ravel()
    keys = [context.indices[a:b].tobytes() + context.values[a:b].tobytes()
            for a, b in zip(context.offsets[:-1], context.offsets[1:])]
    return np.unique(np.array(keys, dtype=object), return_inverse=True)[1].ravel()


def hold_out(positives: Positives, fraction: float, seed: int = 0) -> tuple[Positives, RankingCheck] | None:
    """(the positives to train on, a check on the last `fraction` of them), or None
    when nothing would be left on either side."""
    n = len(positives.items)
    cut = n - int(round(n * fraction))
    if cut <= 0 or cut >= n:
        return None
    keys = user_keys(positives.context)
    fit, held = np.arange(cut), np.arange(cut, n)
    users, first = np.unique(keys[held], return_index=True)
    if len(users) > MAX_CHECK_USERS:
        pick = np.sort(np.random.default_rng(seed).choice(len(users), MAX_CHECK_USERS, replace=False))
        users, first = users[pick], first[pick]
    relevant = _items_by_user(keys[held], positives.items[held], users)
    seen = _items_by_user(keys[fit], positives.items[fit], users)
    check = RankingCheck(positives.context.take(held[first]), relevant, seen, positives.catalogue)
    return positives.take(fit), check


def _items_by_user(keys: np.ndarray, items: np.ndarray, users: np.ndarray) -> list[np.ndarray]:
    order = np.argsort(keys, kind="stable")
    keys, items = keys[order], items[order]
    lo, hi = np.searchsorted(keys, users, "left"), np.searchsorted(keys, users, "right")
    return [np.unique(items[a:b]) for a, b in zip(lo, hi)]


def train_positives(positives: Positives, cfg: TrainConfig, *, bits: int, negatives: int, sampling: str = "uniform",
                    loss: str = "logistic", progress=None) -> tuple[TrainResult, TrainResult | None]:
    """Train on positives with sampled negatives, from POSITIVES_DEFAULTS where `cfg`
    leaves an option at its ordinary default: (the model's run, the held-out run that
    chose its epochs, or None when the epochs were given or nothing was held out)."""
    if loss not in LOSSES:
        raise BadOptions(f"unknown loss {loss!r} (choose from {', '.join(LOSSES)})")
    cfg = for_positives(cfg)
    if loss == "bpr" and cfg.engine == "torch":
        raise BadOptions("--loss bpr runs on the cpu engine; the torch engine trains --loss logistic")

    def source(p: Positives) -> SampledRows:
        return SampledRows(p, negatives, sampling=sampling, pairs=loss == "bpr", seed=cfg.seed)

    parts = None
    if selection.chooses_epochs(cfg, validation=False):
        fraction = selection.holdout_fraction(cfg, len(positives.items))
        parts = hold_out(positives, fraction, cfg.seed)
    if parts is None:
        fixed = cfg if cfg.epochs is not None else selection.fixed(cfg)
        return train(source(positives), fixed, bits=bits, progress=progress), None
    fit, check = parts
    chose = train(source(fit), cfg.with_options(stop_metric=STOP_METRIC), bits=bits, valid=check, progress=progress)
    if not cfg.refit:
        return chose, chose
    refit = selection.refit_config(cfg, chose)
    return train(source(positives), refit, bits=bits, progress=progress), chose
