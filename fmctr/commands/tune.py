"""`fmctr tune`: a small, time-boxed search over dim, learning rate and L2, scored on
validation data.

The data is hashed once; every trial trains with early stopping on the validation
rows. The search is coordinate-wise from the defaults: first the defaults, then each
setting moved alone to each of its other values, then all the settings that helped
together; it stops when the time budget is spent (a trial that has begun finishes).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from fmctr.atomic import scratch_dir
from fmctr.errors import BadOptions
from fmctr.hashing.tokens import HashSpec
from fmctr.models.modelfile import Model
from fmctr.commands.jobs import Log, _as_dataset, _silent, open_input, train_model
from fmctr.reading.schema import SchemaSpec
from fmctr.training.config import DEFAULT_LR, L2_TOUCH_ROWS, TrainConfig

# Each setting's values to try besides the default (the learning rate as a multiple of
# the optimizer's default, 0.01 and 0.1 for Adagrad; the touch L2 as a multiple of its
# default of L2_TOUCH_ROWS / rows).
SPACE = {
    "dim": [4, 16],
    "lr_x": [1 / 3, 10 / 3],
    "l2_all_factors": [0.0, 1e-4, 1e-3],
    "touch_l2_x": [0.1, 10.0],
}
FLAGS = {"dim": "--dim", "l2_all_factors": "--l2-all-factors"}


@dataclass
class Trial:
    number: int
    settings: dict  # the settings that differ from the defaults
    flags: str  # the same as `fmctr train` options
    valid: dict  # validation metrics of the trial's best epoch
    epochs: int
    seconds: float
    model: Model | None = None  # kept for the best trial only

    def score(self, metric: str) -> float:
        value = self.valid[metric]
        return -value if metric == "auc" else value


def _config(base: TrainConfig, settings: dict, rows: int) -> TrainConfig:
    settings = dict(settings)
    scale = settings.pop("touch_l2_x", None)
    lr_scale = settings.pop("lr_x", None)
    cfg = base.with_options(**settings)
    if lr_scale is not None:
        cfg = cfg.with_options(lr=(base.lr or DEFAULT_LR[base.optimizer]) * lr_scale)
    if scale is not None:
        cfg = cfg.with_options(l2_linear=L2_TOUCH_ROWS[0] * scale / rows, l2_factors=L2_TOUCH_ROWS[1] * scale / rows)
    return cfg


def as_flags(settings: dict, cfg: TrainConfig) -> str:
    """A trial's settings as the `fmctr train` options that give them."""
    flags = [f"{FLAGS[k]} {v:g}" for k, v in settings.items() if k in FLAGS]
    if "lr_x" in settings:
        flags.append(f"--lr {cfg.lr:.3g}")
    if "touch_l2_x" in settings:
        flags.append(f"--l2 {cfg.l2_linear:.3g} --l2-factors {cfg.l2_factors:.3g}")
    return " ".join(flags) or "(defaults)"


def helpful(trials: list[Trial], defaults: Trial, metric: str) -> dict:
    """For each setting, its value that beat the defaults by the most (if any did)."""
    chosen: dict = {}
    for key in SPACE:
        alone = [t for t in trials if set(t.settings) == {key} and t.score(metric) < defaults.score(metric)]
        if alone:
            chosen[key] = min(alone, key=lambda t: t.score(metric)).settings[key]
    return chosen


def tune(
    path: str,
    valid: str,
    *,
    spec: SchemaSpec | None,
    hashing: HashSpec | None,
    base: TrainConfig,
    budget_s: float,
    metric: str = "auc",
    min_count: int | None = None,
    log: Log = _silent,
    on_trial: Callable[[Trial], None] | None = None,
) -> tuple[list[Trial], Trial]:
    """Run the search; return every trial and the best (with its model)."""
    if budget_s <= 0:
        raise BadOptions(f"--budget must be a positive number of seconds, got {budget_s}")
    if metric not in ("auc", "logloss"):
        raise BadOptions(f"unknown metric {metric!r} (choose from auc, logloss)")
    base = base.with_options(stop_metric=metric).check()
    started = time.monotonic()
    with scratch_dir("fmctr-tune-") as tmp:
        train_in = open_input(path, spec=spec, hashing=hashing, require_label=True, log=log)
        train_sets = train_in.shards or [_as_dataset(train_in, tmp / "train")]
        train_path = path if train_in.shards else str(train_sets[0].path)
        rows = sum(ds.rows for ds in train_sets)
        valid_in = open_input(valid, schema=train_in.schema, hashing=train_in.hashing, require_label=True, log=log)
        valid_path = valid if valid_in.shards else str(_as_dataset(valid_in, tmp / "valid").path)
        trials: list[Trial] = []
        best: Trial | None = None

        def run(settings: dict) -> Trial:
            nonlocal best
            t0 = time.monotonic()
            cfg = _config(base, settings, rows)
            model, result = train_model(train_path, spec=None, hashing=None, cfg=cfg,
                                        valid=valid_path, min_count=min_count, log=log)
            model.training["input"] = train_in.name
            trial = Trial(len(trials) + 1, settings, as_flags(settings, cfg), result.history[result.best_epoch - 1].valid,
                          len(result.history), time.monotonic() - t0)
            trials.append(trial)
            if best is None or trial.score(metric) < best.score(metric):
                if best is not None:
                    best.model = None
                trial.model, best = model, trial
            if on_trial is not None:
                on_trial(trial)
            return trial

        defaults = run({})
        plan = [{key: value} for key, values in SPACE.items() for value in values]
        for settings in plan + [None]:
            if settings is None:  # the settings that helped, together
                settings = helpful(trials, defaults, metric)
                if len(settings) < 2:
                    break
            if time.monotonic() - started >= budget_s:
                break
            run(settings)
    assert best is not None
    return trials, best
