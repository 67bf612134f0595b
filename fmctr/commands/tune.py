"""`fmctr tune`: a search over the rate, the initial scale, dim, every L2, the batch
size and the optimizer that spends its time budget, with the noise taken into account.

The data is hashed once. Every trial trains single-threaded with the same seed, so
it is bit-for-bit repeatable and two trials differ only by their settings; each
stops early on the validation data (--valid), or, without it, on the last rows of
the training data held out as `fmctr train` holds them out (fmctr.training.selection).
The plan of trials is fmctr.commands.search's; no trial starts that, by the mean
trial time so far, would leave too little of the budget for the checks below.

Then the checks: the defaults and the best trial run again with two more seeds.
Without --valid each of these runs holds out rows of its own - the share of the rows
just before the search's held-out rows, then the share before that (blocks 1 and 2)
- and the best wins only if it beats the defaults on each block: the search chose it
for its score on its rows (among many trials, the luckiest there), and only rows it
was not chosen on say whether it is better. On the 442-row diabetes set the best of
84 trials beat the defaults by 2.1 standard errors on the search's 77 held-out rows
and tested 0.044 AUC below them (with the blocks: 0.8256, the defaults' 0.8259, as
the best lost on block 2). With --valid (one set of rows) the best wins only if
the mean of its three scores beats the defaults' mean by more than the seeds' spread
(the larger range of the two). Otherwise the defaults win.
Without --valid the winner's settings train the final model as `fmctr train` would
(epochs chosen on the held-out rows, then the refits on every row, merged).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from types import SimpleNamespace

from fmctr.atomic import scratch_dir
from fmctr.commands import search
from fmctr.commands.jobs import Log, _as_dataset, _silent, hashed_exact, open_input, selection_record, train_model
from fmctr.datasets.batches import DatasetRows
from fmctr.datasets.hashed import open_many
from fmctr.errors import BadOptions, Diverged
from fmctr.hashing.tokens import HashSpec
from fmctr.models.modelfile import Model
from fmctr.models.runtime import resolve_device
from fmctr.reading.schema import SchemaSpec
from fmctr.training import selection
from fmctr.training.config import DEFAULT_BATCH, DEFAULT_LR, FTRL_L2, L2_TOUCH_ROWS, TrainConfig

SEEDS = 3  # the defaults and the best each run with this many seeds in all
FLAGS = {"dim": "--dim", "init_std": "--init-std", "l2_all_factors": "--l2-all-factors", "l2_all": "--l2-all",
         "optimizer": "--optimizer"}

# Tune's trials and model keep the configuration they are given, where `fmctr train`
# would also try the defaults' rivals on its held-out rows (fmctr.training.selection):
# the options printed to give tune's model say so.
NO_RIVALS = "--no-rivals"


@dataclass
class Trial:
    number: int
    settings: dict  # the settings that differ from the defaults (fmctr.commands.search)
    flags: str  # the same as `fmctr train` options
    valid: dict  # validation metrics of the trial's best epoch
    epochs: int
    seconds: float
    seed: int
    check: bool = False  # a run with another seed, to measure the noise
    block: int = 0  # without --valid, the share of held-out rows it was scored on (0: the search's)
    error: str | None = None  # why it did not finish (diverged, too large)
    model: Model | None = None  # kept for the defaults and the best trial only
    chosen: object = None  # the run's history, best epoch and configuration (TrainResult without weights)

    def score(self, metric: str) -> float:
        """Lower is better; a failed trial scores infinity."""
        value = self.valid.get(metric, math.nan)
        if value is None or math.isnan(value):
            return math.inf
        return -value if metric == "auc" else value


@dataclass
class Outcome:
    trials: list[Trial]
    defaults: Trial
    best: Trial  # the search's best trial
    winner: Trial  # the best if it beat the defaults by more than the noise, else the defaults
    metric: str
    means: dict = field(default_factory=dict)  # "defaults", "best": mean score over the seeds (lower is better)
    noise: float | None = None  # with --valid: the larger range of the two's scores over the seeds
    gains: list[float] | None = None  # without --valid: how far the best beat the defaults on each block
    model: Model | None = None  # the model to write
    train_flags: str = ""  # `fmctr train` options that give the model
    exact: list[str] = field(default_factory=list)  # the fields hashed as `exact` (tune._hashing)

    @property
    def gain(self) -> float | None:
        """How far the winner's mean score is better than the defaults' (metric units)."""
        if not self.means:
            return None
        return self.means["defaults"] - self.means["best"]

    def summary(self) -> str:
        hashed = (f"{', '.join(self.exact)} hashed as --numeric-mode exact (chosen on the rows that score the "
                  f"trials); " if self.exact else "")
        return hashed + self._said()

    def _said(self) -> str:
        m = "AUC" if self.metric == "auc" else "logloss"
        value = lambda s: -s if self.metric == "auc" else s  # noqa: E731
        if len([t for t in self.trials if not t.check]) == 1:
            return (f"only the defaults ran: the budget left no time for another trial and its noise checks "
                    f"(a trial took {self.defaults.seconds:.0f}s; try --budget {7 * self.defaults.seconds:.0f} or more)")
        if self.best is self.defaults:
            return f"no trial beat the defaults (trial 1, valid {m} {value(self.defaults.score(self.metric)):.4f})"
        seeds = (f"mean of {SEEDS} seeds {value(self.means['best']):.4f} against {value(self.means['defaults']):.4f} "
                 f"for the defaults")
        if self.gains is not None:
            return self._blocks_said(m, seeds)
        if self.winner is self.defaults:
            return (f"nothing beat the defaults by more than the noise (±{self.noise:.4f}): the best, trial "
                    f"{self.best.number}, was better by {self.gain:.4f} valid {m} ({seeds}); kept the defaults")
        return (f"trial {self.winner.number} won: valid {m} better than the defaults by {self.gain:.4f} ({seeds}), "
                f"more than the noise (±{self.noise:.4f})")

    def _blocks_said(self, m: str, seeds: str) -> str:
        gains = ", ".join(f"{g:+.4f}" for g in self.gains)
        if self.winner is self.defaults:
            return (f"nothing beat the defaults on every held-out block: the best, trial {self.best.number}, was "
                    f"better by {gains} valid {m} on its own rows and the blocks before them ({seeds}); kept the "
                    f"defaults")
        return (f"trial {self.winner.number} won: valid {m} better than the defaults on each held-out block, by "
                f"{gains} ({seeds})")

    def to_json(self) -> dict:
        return {"trials": [{"trial": t.number, "options": t.flags, "valid": t.valid, "epochs": t.epochs,
                            "seconds": round(t.seconds, 3), "seed": t.seed, "check": t.check, "block": t.block,
                            "error": t.error, "best": t is self.winner} for t in self.trials],
                "winner": self.winner.number, "best_trial": self.best.number, "metric": self.metric,
                "exact": self.exact,
                "beat_defaults": self.winner is not self.defaults, "gain": self.gain, "noise": self.noise,
                "gains": self.gains, "summary": self.summary(), "train_options": self.train_flags}


@dataclass
class _Data:
    """The hashed training data, and how trials are scored: `valid` (a path) or the
    last `fraction` of the training rows; `blocks`: the shares the checks hold out."""

    train: str
    name: str
    rows: int
    engine: str
    valid: str | None
    fraction: float | None
    blocks: list[int] = field(default_factory=list)


def config(base: TrainConfig, settings: dict, data: _Data) -> TrainConfig:
    """The training configuration of a trial's settings."""
    s = dict(settings)
    lr_x, touch, batch_x = s.pop("lr_x", None), s.pop("touch_l2_x", None), s.pop("batch_x", None)
    if "l2_all" in s:
        s["l2_all_linear"] = s.pop("l2_all")
    cfg = base.with_options(**s)
    if lr_x is not None:
        cfg = cfg.with_options(lr=(base.lr or DEFAULT_LR[cfg.optimizer]) * lr_x)
    if touch is not None:
        linear = FTRL_L2 if cfg.optimizer == "ftrl" else L2_TOUCH_ROWS[0] / data.rows
        cfg = cfg.with_options(l2_linear=linear * touch, l2_factors=L2_TOUCH_ROWS[1] * touch / data.rows)
    if batch_x is not None:
        cfg = cfg.with_options(batch_size=max(1, round(DEFAULT_BATCH[data.engine] * batch_x)))
    return cfg


def as_flags(settings: dict, cfg: TrainConfig) -> str:
    """A trial's settings as the `fmctr train` options that give them."""
    flags = [f"{FLAGS[k]} {v:g}" if not isinstance(v, str) else f"{FLAGS[k]} {v}"
             for k, v in settings.items() if k in FLAGS]
    if "lr_x" in settings:
        flags.append(f"--lr {cfg.lr:.3g}")
    if "touch_l2_x" in settings:
        flags.append(f"--l2 {cfg.l2_linear:.3g} --l2-factors {cfg.l2_factors:.3g}")
    if "batch_x" in settings:
        flags.append(f"--batch-size {cfg.batch_size}")
    return " ".join(flags) or "(defaults)"


def _space(base: TrainConfig) -> dict[str, search.Setting]:
    return search.space(optimizer=base.optimizer, init_std=base.init_std, dim=base.dim,
                        l2_all_factors=base.l2_all_factors, l2_all=base.l2_all_linear)


def _trainer(data: _Data, base: TrainConfig, metric: str, min_count: int | None, log: Log):
    """A function that runs one trial: settings and seed -> (Trial, model or None)."""

    def run(number: int, settings: dict, seed: int, check: bool = False, block: int = 0) -> Trial:
        cfg = config(base, settings, data).with_options(seed=seed)
        flags = as_flags(settings, cfg) + (f" --seed {seed}" if check else "")
        t0 = time.monotonic()
        try:
            model, result = train_model(data.train, spec=None, hashing=None, cfg=cfg, valid=data.valid,
                                        valid_fraction=data.fraction, valid_block=block, min_count=min_count, log=log)
        except (Diverged, BadOptions) as e:
            if number == 1:
                raise
            return Trial(number, settings, flags, {"auc": math.nan, "logloss": math.nan}, 0, time.monotonic() - t0,
                         seed, check, block, str(e))
        model.training["input"] = data.name
        best = result.history[result.best_epoch - 1]
        chosen = SimpleNamespace(history=result.history, best_epoch=result.best_epoch, config=result.config)
        return Trial(number, settings, flags, best.valid, len(result.history), time.monotonic() - t0, seed, check,
                     block, model=model, chosen=chosen)

    return run


def _reserve(trials: list[Trial], best: Trial, refit: bool) -> float:
    """Seconds to keep for the checks (and the final training without --valid)."""
    mean = sum(t.seconds for t in trials) / len(trials)
    keep = (SEEDS - 1) * (trials[0].seconds + max(best.seconds, mean))
    return keep + (0.5 * max(best.seconds, mean) if refit else 0.0)  # (a refit has no validation checks)


def _search(run, book: search.Book, *, metric: str, seed: int, budget_s: float, started: float,
            max_trials: int | None, refit: bool, on_trial) -> tuple[list[Trial], Trial, Trial]:
    """The search trials, until the budget (or --max-trials) is spent; returns them,
    the defaults' trial and the best."""
    trials: list[Trial] = []
    best = defaults = None
    for settings in search.plan(book, seed):
        if trials and (max_trials is not None and len(trials) >= max_trials or time.monotonic() - started
                       + sum(t.seconds for t in trials) / len(trials) + _reserve(trials, best, refit) > budget_s):
            break
        trial = run(len(trials) + 1, settings, seed)
        book.record(settings, trial.score(metric))
        trials.append(trial)
        if best is None or trial.score(metric) < best.score(metric):
            if best is not None and best is not defaults:
                best.model = None
            best = trial
        elif trial is not defaults:
            trial.model = None
        defaults = defaults or trial
        if on_trial is not None:
            on_trial(trial)
    return trials, defaults, best


def _check_noise(run, trials: list[Trial], out: Outcome, seed: int, on_trial, blocks: list[int]) -> None:
    """Run the defaults and the best with more seeds, each check on held-out rows of
    its own where there are such (`blocks`, without --valid); the best wins only if it
    beats the defaults on every block, or with --valid if its mean beats the defaults'
    by more than the spread over the seeds."""
    scores = {}
    for name, trial in (("defaults", out.defaults), ("best", out.best)):
        runs = [trial]
        for s, block in zip(range(seed + 1, seed + SEEDS), blocks or [0] * (SEEDS - 1)):
            runs.append(run(len(trials) + 1, trial.settings, s, check=True, block=block))
            trials.append(runs[-1])
            if on_trial is not None:
                on_trial(runs[-1])
        scores[name] = [t.score(out.metric) for t in runs]
    out.means = {name: sum(v) / len(v) for name, v in scores.items()}
    if any(blocks):
        out.gains = [d - b for d, b in zip(scores["defaults"], scores["best"])]
        won = all(g > 0 for g in out.gains)  # (not when a score is infinite)
    else:
        out.noise = max(max(v) - min(v) for v in scores.values())
        won = out.gain > out.noise
    if not won:
        out.winner = out.defaults


def _open(path: str, valid: str | None, tmp, *, spec, hashing, base: TrainConfig, log: Log) -> _Data:
    """Hash the data once; without --valid, the share of the rows to hold out."""
    train_in = open_input(path, spec=spec, hashing=hashing, require_label=True, log=log)
    train_sets = train_in.shards or [_as_dataset(train_in, tmp / "train")]
    train_path = path if train_in.shards else str(train_sets[0].path)
    rows = DatasetRows(train_sets)
    engine = resolve_device(base.engine, base.device)[0]
    if valid is not None:
        valid_in = open_input(valid, schema=train_in.schema, hashing=train_in.hashing, require_label=True, log=log)
        valid_path = valid if valid_in.shards else str(_as_dataset(valid_in, tmp / "valid").path)
        return _Data(train_path, train_in.name, rows.rows, engine, valid_path, None)
    fraction = selection.holdout_fraction(base, rows.rows)
    if selection.split(rows, fraction) is None:
        raise BadOptions(f"{train_in.name}: the last {fraction:.0%} of the rows are none or hold one class only, so "
                         f"they cannot score the trials: give validation data with --valid")
    return _Data(train_path, train_in.name, rows.rows, engine, None, fraction, _blocks(rows, fraction))


def _hashing(path: str, valid: str | None, data: _Data, base: TrainConfig, tmp, log: Log,
             min_count: int | None) -> tuple[_Data, list[str]]:
    """As `fmctr train` tries its rival of the data (fmctr.training.selection.exact_fields):
    the defaults trained on the data hashed again with the whole-number columns as
    `exact`, kept only where the rows that score the trials choose it by the rivals'
    margin: (the data to search on, the fields hashed as `exact`; none: [])."""
    [hashed] = open_many(data.train)
    fields = selection.exact_fields(hashed.schema, base)
    if not fields or min_count or not os.path.isfile(path) or (valid is not None and not os.path.isfile(valid)):
        return data, []  # (as train: not with --min-count, nor on data it cannot read again)
    train_in, rows = hashed_exact(path, hashed.schema, fields, hashed.hashing, tmp / "exact-train")
    if rows.rows != data.rows:  # (the file changed meanwhile)
        return data, []
    other = replace(data, train=str(rows.datasets[0].path))
    if valid is not None:
        valid_in = open_input(valid, schema=train_in.schema, hashing=hashed.hashing, require_label=True)
        other = replace(other, valid=str(_as_dataset(valid_in, tmp / "exact-valid").path))
    losses = []
    for d in (data, other):
        _, result = train_model(d.train, spec=None, hashing=None, cfg=config(base, {}, d), valid=d.valid,
                                valid_fraction=d.fraction, log=log)
        scored = DatasetRows(open_many(d.valid)) if d.valid else DatasetRows(open_many(d.train)).split_tail(d.fraction)[1]
        losses.append(selection.held_losses(result, scored))
    return (other, fields) if selection.rival_wins(*losses) else (data, [])


def _exact_flag(exact: list[str], data: _Data) -> str:
    """--numeric-mode exact where every numeric field is hashed so (otherwise no option
    of `fmctr train` says which are: tune's summary does)."""
    numeric = [f.name for f in open_many(data.train)[0].schema.fields if f.kind == "numeric"]
    return "--numeric-mode exact" if exact and exact == numeric else ""


def _blocks(rows: DatasetRows, fraction: float) -> list[int]:
    """The held-out shares of the checks: 1 and 2 (the rows before the search's),
    or 0 again for one that holds a single class (it cannot score)."""
    def usable(block: int) -> bool:
        fit, held = rows.split_block(fraction, block)
        return fit.rows > 0 and held.rows > 0 and selection.usable(held.labels())

    return [block if usable(block) else 0 for block in range(1, SEEDS)]


def _refit(winner: Trial, cfg: TrainConfig, data: _Data, min_count: int | None, log: Log) -> Model:
    """Without --valid, the final model as `fmctr train` makes it: every row, for the
    epochs (and at the rates) the winner's trial chose on the held-out rows, the
    refits merged (fmctr.training.selection.merged)."""
    refit = selection.refit_config(cfg.with_options(holdout=data.fraction), winner.chosen)
    result, first = selection.refitted(refit, lambda c: tuple(reversed(
        train_model(data.train, spec=None, hashing=None, cfg=c, min_count=min_count, log=log))))
    model = replace(first, weights=result.weights, optimizer=result.optimizer)
    model.training.update(input=data.name, config=asdict(result.config),
                          selection=selection_record(winner.chosen, int(round(data.rows * data.fraction)), result.config))
    return model


def tune(
    path: str,
    valid: str | None,
    *,
    spec: SchemaSpec | None,
    hashing: HashSpec | None,
    base: TrainConfig,
    budget_s: float,
    metric: str = "auc",
    min_count: int | None = None,
    max_trials: int | None = None,
    log: Log = _silent,
    on_trial: Callable[[Trial], None] | None = None,
) -> Outcome:
    """Run the search and the noise checks; return the outcome with the model to write."""
    if budget_s <= 0:
        raise BadOptions(f"--budget must be a positive number of seconds, got {budget_s}")
    if max_trials is not None and max_trials < 1:
        raise BadOptions(f"--max-trials must be at least 1, got {max_trials}")
    if metric not in ("auc", "logloss"):
        raise BadOptions(f"unknown metric {metric!r} (choose from auc, logloss)")
    base = base.with_options(stop_metric=metric, threads=1).check()
    started = time.monotonic()
    with scratch_dir("fmctr-tune-") as tmp:
        data = _open(path, valid, tmp, spec=spec, hashing=hashing, base=base, log=log)
        data, exact = _hashing(path, valid, data, base, tmp, log, min_count)
        run = _trainer(data, base, metric, min_count, log)
        book = search.Book(_space(base))
        trials, defaults, best = _search(run, book, metric=metric, seed=base.seed, budget_s=budget_s,
                                         started=started, max_trials=max_trials, refit=valid is None,
                                         on_trial=on_trial)
        out = Outcome(trials, defaults, best, best, metric, exact=exact)
        if best is not defaults:
            _check_noise(run, trials, out, base.seed, on_trial, data.blocks)
        cfg = config(base, out.winner.settings, data)
        out.train_flags = " ".join(f for f in (as_flags(out.winner.settings, cfg), f"--seed {base.seed} --threads 1",
                                               NO_RIVALS, _exact_flag(exact, data)) if f and f != "(defaults)")
        out.model = out.winner.model if valid is not None else _refit(out.winner, cfg, data, min_count, log)
    for t in trials:
        t.model = None
    return out
