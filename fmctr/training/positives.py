"""Training from positives only (fmctr.datasets.negatives draws the negatives), with
the epochs chosen the way ordinary training chooses them (fmctr.training.selection):
the last positives held out, early stopping on them, then a refit on every positive -
but judged by NDCG@10 over the whole catalogue (fmctr.training.ranked), not logloss.
"""

from __future__ import annotations

import math
from functools import partial

import numpy as np

from fmctr.datasets.negatives import CatalogueRows, PatternRows, Positives, SampledRows, best_of_pool, draw
from fmctr.errors import BadOptions
from fmctr.training import blend, selection
from fmctr.training.config import TrainConfig
from fmctr.training.loop import TrainResult, train
from fmctr.models.softmax import MAX_ITEMS
from fmctr.models.towers import item_vectors, user_side
from fmctr.training.ranked import K, RankingCheck

LOSSES = ("logistic", "bpr", "softmax", "als", "blend")
# Above logistic alone on both carves of bench/recall.py (NDCG@10 0.2385 / 0.2760
# against 0.2319 / 0.2700), and with softmax among its models above logistic + ALS
# (0.2536 against 0.2493 over three seeds' carves; README "Training from positives only").
DEFAULT_LOSS = "blend"
# Training from positives starts from other defaults than CTR training (README, "Training
# from positives only"; negatives, pool, loss and dim compared by `bench/recall.py
# --choose` on carves of the training positives - dim 64 is above 32 on both carves; the
# rate, initial scale and L2 first set in exploratory runs on MovieLens-100k, then
# rechecked on the carves): with one id per side, a pair's gradient is the other side's
# factors, so factors that start at 0.01 under Adagrad's initial accumulator of 1 and
# CTR's L2 shrink to nothing and the model ranks by popularity alone (P@10 0.116
# against 0.22 on LightFM's protocol).
# One refit, not CTR training's two merged (fmctr.training.selection.merged): on the
# carves (`--choose --changes '[{"refits": 1}, {}]'`, NDCG@10) two merged scored 0.2521
# against 0.2510 - above on Microsoft's carve (0.2748 / 0.2697), below on LightFM's
# (0.2294 / 0.2322), so not above on both. `--refits 2` merges them here too.
POSITIVES_DEFAULTS = {"dim": 64, "lr": 0.05, "init_std": 0.1, "adagrad_init": 0.01,
                      "l2_linear": 0.0, "l2_factors": 1e-3, "l2_all_factors": 0.0, "refits": 1}
# The full-catalogue softmax updates every item at every batch: batches of positives,
# not of 4 rows (fmctr.models.softmax), and its gradient is a mean over 128 of them, so
# Adagrad's initial accumulator is far smaller (at 0.01 it dwarfs the squared gradients
# and the steps stall). Chosen on LightFM's protocol's carve (README).
LOSS_DEFAULTS = {"softmax": {"batch_size": 128, "lr": 0.1, "adagrad_init": 1e-6, "l2_factors": 3e-4},
                 "als": {"l2_factors": 0.01}}
# Implicit ALS (fmctr.models.ials): the weight of every (user, item) pair that is not a
# positive, against 1 for a positive.
UNOBSERVED = 0.5
NEGATIVES = 32  # drawn per positive
POOL = 4  # draws per negative, the best-scored kept (MinedRows)
STOP_METRIC = f"ndcg@{K}"
MAX_CHECK_USERS = 2000  # held-out users scored per check (a random subset beyond this)


def for_positives(cfg: TrainConfig, given: frozenset[str] | None = None, loss: str = "logistic") -> TrainConfig:
    """`cfg` with POSITIVES_DEFAULTS (and the loss's LOSS_DEFAULTS) for the options not
    `given` (the command line says which it set; a value equal to the ordinary default,
    e.g. --dim 8, is kept). Without `given`, an option at its ordinary default counts as
    not given."""
    defaults = {**POSITIVES_DEFAULTS, **LOSS_DEFAULTS.get(loss, {})}
    if given is None:
        ordinary, options = TrainConfig().options(), cfg.options()
        given = frozenset(name for name in defaults if options[name] != ordinary[name])
    return cfg.with_options(**{name: value for name, value in defaults.items() if name not in given})


class MinedRows(SampledRows):
    """Hard negatives: each of a positive's N negatives is the best-scored of `pool`
    candidates drawn for it, by the weights at the start of the epoch, leaving out the
    user's own training positives (the best-scored candidates would be those). As
    LightFM's WARP looks for a negative that outscores the positive, this spends the
    updates where the ranking is wrong, instead of on items already far below."""

    CHUNK = 8192  # positives whose users' vectors are made at once

    def __init__(self, positives: Positives, negatives: int, *, pool: int, **options):
        super().__init__(positives, negatives, **options)
        self.pool, self.now = pool, None
        keys = keys_of(positives)
        size = len(positives.catalogue)
        self.codes = keys.astype(np.int64) * size
        self.own = np.unique(self.codes + positives.items)

    def before_epoch(self, weights) -> None:
        self.now = weights

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        p, n = self.positives, self.negatives
        count, size = len(p.items), len(p.catalogue)
        drawn = draw(rng, count, n * self.pool, size, self.weights).reshape(count, n, self.pool)
        if self.now is None or self.pool == 1:
            return drawn[:, :, 0]
        items = item_vectors(self.now, p.catalogue)
        out = np.empty((count, n), np.int64)
        for lo in range(0, count, self.CHUNK):
            hi = min(lo + self.CHUNK, count)
            users = user_side(self.now, p.context.slice(lo, hi)).vectors
            best_of_pool(users, items, drawn[lo:hi], self.codes[lo:hi], self.own, out[lo:hi])
        return out


def keys_of(positives: Positives) -> np.ndarray:
    """A small integer per positive's user: the positives' own keys, or their rows'."""
    return positives.users if positives.users is not None else user_keys(positives.context)


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


def hold_out(positives: Positives, fraction: float, seed: int = 0, rebuild=None) -> tuple[Positives, RankingCheck] | None:
    """(the positives to train on, a check on the last `fraction` of them), or None
    when nothing would be left on either side. The check scores each held-out user by
    the row of their first held-out positive. Where user rows hold other positives (a
    history), that row would show the check its answers: `rebuild(cut, users)` then
    gives (the positives to train on, each checked user's row), built from the first
    `cut` positives alone."""
    n = len(positives.items)
    cut = n - int(round(n * fraction))
    if cut <= 0 or cut >= n:
        return None
    keys = keys_of(positives)
    fit, held = np.arange(cut), np.arange(cut, n)
    users, first = np.unique(keys[held], return_index=True)
    if len(users) > MAX_CHECK_USERS:
        pick = np.sort(np.random.default_rng(seed).choice(len(users), MAX_CHECK_USERS, replace=False))
        users, first = users[pick], first[pick]
    relevant = _items_by_user(keys[held], positives.items[held], users)
    seen = _items_by_user(keys[fit], positives.items[fit], users)
    kept, rows = (positives.take(fit), positives.context.take(held[first])) if rebuild is None else rebuild(cut, users)
    return kept, RankingCheck(rows, relevant, seen, positives.catalogue)


def _items_by_user(keys: np.ndarray, items: np.ndarray, users: np.ndarray) -> list[np.ndarray]:
    order = np.argsort(keys, kind="stable")
    keys, items = keys[order], items[order]
    lo, hi = np.searchsorted(keys, users, "left"), np.searchsorted(keys, users, "right")
    return [np.unique(items[a:b]) for a, b in zip(lo, hi)]


def _checked(cfg: TrainConfig, loss: str, unobserved: float | None, given) -> tuple[TrainConfig, float]:
    """The configuration with this mode's defaults, and the --unobserved weight, checked
    against the loss."""
    if loss not in LOSSES:
        raise BadOptions(f"unknown loss {loss!r} (choose from {', '.join(LOSSES)})")
    cfg = for_positives(cfg, given, loss)
    if loss not in ("logistic", "blend") and cfg.engine == "torch":
        raise BadOptions(f"--loss {loss} runs on the cpu engine; the torch engine trains --loss logistic")
    if loss not in ("logistic", "blend") and cfg.engine == "auto":  # (auto picks torch where there is a GPU)
        cfg = cfg.with_options(engine="cpu")
    if unobserved is not None and loss not in ("als", "blend"):
        raise BadOptions(f"--unobserved weighs the pairs that are not positives in --loss als or blend, not --loss {loss}")
    unobserved = UNOBSERVED if unobserved is None else unobserved
    if not (math.isfinite(unobserved) and unobserved > 0):
        raise BadOptions(f"--unobserved must be above 0 (got {unobserved:g})")
    if loss == "softmax" and cfg.optimizer != "adagrad":
        raise BadOptions(f"--loss softmax trains with adagrad, not {cfg.optimizer}")
    return cfg, unobserved


def train_positives(positives: Positives, cfg: TrainConfig, *, bits: int, negatives: int, sampling: str = "uniform",
                    loss: str = DEFAULT_LOSS, pool: int = POOL, unobserved: float | None = None, progress=None,
                    given: frozenset[str] | None = None, hold=hold_out) -> tuple[TrainResult, TrainResult | None]:
    """Train on positives, from POSITIVES_DEFAULTS where `cfg` does not set (`given`,
    see for_positives): (the model's run, the held-out run that chose its epochs, or
    None when the epochs were given or nothing was held out). `hold(positives,
    fraction, seed)` splits off the positives that choose the epochs. `--loss blend`
    trains logistic, als and softmax apart on the same split and sums them
    (fmctr.training.blend)."""
    original = cfg
    cfg, unobserved = _checked(cfg, loss, unobserved, given)

    def source(name: str):
        def make(p: Positives, seed: int = cfg.seed) -> SampledRows | CatalogueRows:
            if name == "als":
                return PatternRows(p, keys_of(p), unobserved=unobserved)
            if name == "softmax":
                return CatalogueRows(p, max_items=MAX_ITEMS)
            options = {"sampling": sampling, "pairs": name == "bpr", "seed": seed}
            if pool > 1:
                return MinedRows(p, negatives, pool=pool, **options)
            return SampledRows(p, negatives, **options)
        return make

    parts = None
    if selection.chooses_epochs(cfg, validation=False):
        fraction = selection.holdout_fraction(cfg, len(positives.items))
        parts = hold(positives, fraction, cfg.seed)
    run = partial(_chosen_and_refitted, positives, parts=parts, bits=bits, progress=progress)
    if loss != "blend":
        return run(cfg, source(loss))
    return _blend(positives, cfg, original, given, run, source, parts, progress)


def _blend(positives: Positives, cfg: TrainConfig, original: TrainConfig, given, run, source, parts,
           progress) -> tuple[TrainResult, TrainResult | None]:
    """`--loss blend`: logistic, als and - where the catalogue and the optimizer allow
    it - softmax, each trained as its loss alone would be, summed (fmctr.training.blend)."""
    configs = {"logistic": cfg, "als": for_positives(original, given, "als").with_options(engine="cpu")}
    softmax = for_positives(original, given, "softmax").with_options(engine="cpu")
    if len(positives.catalogue) <= MAX_ITEMS and softmax.optimizer == "adagrad":
        configs["softmax"] = softmax
    note = progress.note if progress is not None else (lambda message: None)
    runs = {}
    for n, (name, member) in enumerate(configs.items(), 1):
        note(f"blend, {n} of {len(configs)}: {blend.MEMBERS[name]}")
        runs[name] = run(member, source(name))
    result, chose = blend.blended(runs, parts[1] if parts is not None else None)
    note(blend.describe(result.notes["blend"]))
    return result, chose


def _chosen_and_refitted(positives: Positives, cfg: TrainConfig, source, *, parts, bits: int,
                         progress) -> tuple[TrainResult, TrainResult | None]:
    """One loss's run: its epochs chosen on `parts` (fit, check) and refitted on every
    positive, or trained for the fixed epochs where there are no parts."""
    if parts is None:
        fixed = cfg if cfg.epochs is not None else selection.fixed(cfg)
        return train(source(positives), fixed, bits=bits, progress=progress), None
    fit, check = parts
    chose = train(source(fit), cfg.with_options(stop_metric=STOP_METRIC), bits=bits, valid=check, progress=progress)
    if not cfg.refit:
        return chose, chose
    refit = selection.refit_config(cfg, chose)  # (refits merged: selection.merged; each draws its own negatives)
    merged, _ = selection.refitted(refit, lambda c: (train(source(positives, c.seed), c, bits=bits, progress=progress), None))
    return merged, chose
