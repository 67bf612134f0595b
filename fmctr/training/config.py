"""What a training run is asked to do, grouped by concern: the model, the optimizer,
regularisation, the schedule (epochs, batches, validation) and the runtime (engine,
device, threads, seed).

The command line, `tune`, checkpoints and tests all build a configuration the same
way: `TrainConfig.from_options(**options)`, keyed by the option names (`dim`, `lr`,
`l2_linear`, ...). `options()` gives them back, and `with_options` changes some.
Unset defaults (None) are decided by `resolved`, once the engine, the number of
training rows and whether there is validation data are known.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace

from fmctr.errors import BadOptions
from fmctr.models.runtime import ENGINES, known_device

OPTIMIZERS = ("adagrad", "adam", "ftrl")
STOP_METRICS = ("logloss", "auc", "ndcg@10")  # ndcg@10: training from positives (fmctr.training.ranked)
# Defaults chosen by measurement (README, "Accuracy"). With validation data, early
# stopping decides the epochs, up to DEFAULT_MAX_EPOCHS. Without it (and without
# --epochs), training holds out the last rows (fmctr.training.selection), lets early
# stopping decide there and trains again on every row for the epochs it chose.
# DEFAULT_EPOCHS is what a run gets when it holds nothing out (--holdout 0).
DEFAULT_EPOCHS = 3
DEFAULT_MAX_EPOCHS = 20
# Small batches suit per-row CPU kernels; a GPU needs large ones to be busy.
DEFAULT_BATCH = {"cpu": 4, "torch": 1024}
# The touch L2 defaults to these over the number of training rows: a feature seen in
# every batch then gets the same regularisation however many rows there are (in
# per-example units), which is what measurement asked for at 8k and at 1M rows.
L2_TOUCH_ROWS = (80.0, 400.0)
FTRL_L2 = 10.0  # FTRL's lambda2 is in per-example units already
# Adam's step does not shrink as a feature's squared gradients pile up, as Adagrad's
# does, so it wants a far smaller rate: at 0.03 it reached test AUC 0.62 on the Criteo
# sample, at 3e-4 0.747 (and 0.786 on the planted 1M rows, where Adagrad gets 0.787).
DEFAULT_LR = {"adagrad": 0.03, "ftrl": 0.03, "adam": 3e-4}
DEFAULT_L2_ALL_FACTORS = 3e-4
# The rivals of the defaults that held-out rows may choose (fmctr.training.selection)
RIVALS = ("l2", "l2_linear", "rate", "linear", "exact")


Names = list  # (an option's annotation: a list of strings)


@dataclass(frozen=True)
class ModelOptions:
    kind: str = "fm"
    dim: int = 8
    init_std: float = 0.01


@dataclass(frozen=True)
class OptimizerOptions:
    optimizer: str = "adagrad"
    lr: float | None = None  # None: DEFAULT_LR[optimizer]
    eps: float = 1e-8
    adagrad_init: float = 1.0
    ftrl_alpha: float = 0.05
    ftrl_beta: float = 1.0


@dataclass(frozen=True)
class Regularization:
    l2_linear: float | None = None  # None: L2_TOUCH_ROWS[0] / training rows (FTRL_L2 with ftrl)
    l2_factors: float | None = None  # None: L2_TOUCH_ROWS[1] / training rows
    # L2 on every weight, as a penalty on the mean loss, applied sparsely (fmctr.models.kernel)
    l2_all_linear: float = 0.0
    l2_all_factors: float = DEFAULT_L2_ALL_FACTORS
    l1: float = 0.0


@dataclass(frozen=True)
class Schedule:
    epochs: int | None = None  # None: DEFAULT_EPOCHS, or up to DEFAULT_MAX_EPOCHS with validation
    batch_size: int | None = None  # None: DEFAULT_BATCH[engine]
    patience: int = 2
    stop_metric: str = "logloss"
    lr_decay: float = 0.5  # with validation: the rate is multiplied by this after a check that does not improve
    valid_every: int | None = None  # rows between validation checks (None: once per epoch)
    # Without validation data or --epochs: the share of the rows held out to choose the
    # epochs (None: fmctr.training.selection decides; 0: hold nothing out), and
    # whether to train again on every row for the epochs chosen.
    holdout: float | None = None
    refit: bool = True
    rivals: Names | None = None  # there: the rivals of the defaults tried too (None: every one; selection.RIVALS)
    refits: int = 2  # there: refits on every row, each with a seed of its own, merged (selection.merged)
    lr_by_epoch: list | None = None  # each epoch's rate (a refit replays the rates that chose it)


@dataclass(frozen=True)
class Runtime:
    engine: str = "auto"
    device: str = "auto"
    threads: int | None = None
    seed: int = 0


TYPES = {"int": int, "float": (int, float), "str": str, "bool": bool, "list": list, "Names": list}  # by annotation
GROUPS = {"model": ModelOptions, "optimization": OptimizerOptions, "regularization": Regularization,
          "schedule": Schedule, "runtime": Runtime}
GROUP_OF = {f.name: group for group, cls in GROUPS.items() for f in fields(cls)}


@dataclass(frozen=True)
class TrainConfig:
    model: ModelOptions = ModelOptions()
    optimization: OptimizerOptions = OptimizerOptions()
    regularization: Regularization = Regularization()
    schedule: Schedule = Schedule()
    runtime: Runtime = Runtime()

    @classmethod
    def from_options(cls, **options) -> TrainConfig:
        """From option names (the groups' field names), unknown names refused."""
        if "l2_choice" in options:  # (checkpoints from before the rivals: only the factors' L2 was chosen)
            options = {"rivals": ["l2"] if options.pop("l2_choice") else [], **options}
        unknown = sorted(set(options) - set(GROUP_OF))
        if unknown:
            raise BadOptions(f"unknown training option(s): {', '.join(unknown)}")
        grouped: dict[str, dict] = {group: {} for group in GROUPS}
        for name, value in options.items():
            grouped[GROUP_OF[name]][name] = value
        return cls(**{group: GROUPS[group](**values) for group, values in grouped.items()})

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """From `asdict(cfg)` (grouped) or the flat options that checkpoints from
        before the grouping hold; read from a file, so each option's type is checked."""
        if not isinstance(d, dict) or not all(isinstance(g, dict) for g in d.values() if set(d) <= set(GROUPS)):
            raise BadOptions("malformed training options")
        options = {k: v for group in d.values() for k, v in group.items()} if set(d) <= set(GROUPS) else d
        cfg = cls.from_options(**options)
        for group, kind in GROUPS.items():
            for f in fields(kind):
                value, (base, _, optional) = getattr(cfg, f.name), f.type.partition(" | ")
                if not (value is None and optional) and not _of_type(value, base):
                    raise BadOptions(f"training option {f.name} = {value!r} is not a {base}")
        return cfg

    def options(self) -> dict:
        return {k: v for group in asdict(self).values() for k, v in group.items()}

    def with_options(self, **options) -> TrainConfig:
        return TrainConfig.from_options(**{**self.options(), **options})

    def __getattr__(self, name: str):
        # cfg.lr for cfg.optimization.lr: option names are unique across the groups.
        group = GROUP_OF.get(name)
        if group is None:
            raise AttributeError(name)
        return getattr(object.__getattribute__(self, group), name)

    def check(self) -> TrainConfig:
        for ok, message in _rules(self):
            if not ok:
                raise BadOptions(message)
        return self

    def resolved(self, *, engine: str, device: str, rows: int, validation: bool) -> TrainConfig:
        """Every unset default decided: epochs, batch size, rate and the touch L2."""
        o, r, s = self.optimization, self.regularization, self.schedule
        linear = r.l2_linear
        if linear is None:
            linear = FTRL_L2 if o.optimizer == "ftrl" else L2_TOUCH_ROWS[0] / rows
        factors = r.l2_factors if r.l2_factors is not None else L2_TOUCH_ROWS[1] / rows
        return replace(
            self,
            optimization=replace(o, lr=o.lr or DEFAULT_LR[o.optimizer]),
            regularization=replace(r, l2_linear=linear, l2_factors=factors),
            schedule=replace(s, epochs=s.epochs or (DEFAULT_MAX_EPOCHS if validation else DEFAULT_EPOCHS),
                             batch_size=s.batch_size or DEFAULT_BATCH[engine]),
            runtime=replace(self.runtime, engine=engine, device=device),
        )


def _of_type(value, base: str) -> bool:
    if base in ("list", "Names"):  # of numbers, of strings
        return isinstance(value, list) and all(_of_type(v, "float" if base == "list" else "str") for v in value)
    return isinstance(value, TYPES[base]) and (base == "bool" or not isinstance(value, bool))


def _rules(cfg: TrainConfig) -> list[tuple[bool, str]]:
    m, o, r, s, t = cfg.model, cfg.optimization, cfg.regularization, cfg.schedule, cfg.runtime
    return [
        (m.kind == "fm", f"unknown model kind {m.kind!r} (choose from fm)"),
        (m.dim >= 0, f"--dim must be 0 or more, got {m.dim}"),
        (s.rivals is None or set(s.rivals) <= set(RIVALS), f"unknown rivals {s.rivals} (choose from {', '.join(RIVALS)})"),
        (m.init_std >= 0 and math.isfinite(m.init_std), f"--init-std must be 0 or more, got {m.init_std}"),
        (o.optimizer in OPTIMIZERS, f"unknown optimizer {o.optimizer!r} (choose from {', '.join(OPTIMIZERS)})"),
        (o.lr is None or o.lr > 0 and math.isfinite(o.lr), f"--lr must be a positive number, got {o.lr}"),
        (r.l1 >= 0 and o.ftrl_alpha > 0 and o.ftrl_beta >= 0,
         "--l1 and --ftrl-beta must be 0 or more, --ftrl-alpha positive"),
        ((r.l2_linear or 0) >= 0 and (r.l2_factors or 0) >= 0, "--l2 and --l2-factors must be 0 or more"),
        (r.l2_all_linear >= 0 and r.l2_all_factors >= 0, "--l2-all and --l2-all-factors must be 0 or more"),
        (s.epochs is None or s.epochs >= 1, f"--epochs must be at least 1, got {s.epochs}"),
        (s.batch_size is None or s.batch_size >= 1, f"--batch-size must be at least 1, got {s.batch_size}"),
        (s.patience >= 1, f"--patience must be at least 1, got {s.patience}"),
        (s.stop_metric in STOP_METRICS, f"unknown metric {s.stop_metric!r} (choose from {', '.join(STOP_METRICS)})"),
        (0 < s.lr_decay <= 1, f"--lr-decay must be in (0, 1], got {s.lr_decay}"),
        (s.valid_every is None or s.valid_every >= 1, f"--valid-every must be at least 1 row, got {s.valid_every}"),
        (s.holdout is None or 0 <= s.holdout < 1, f"--holdout must be at least 0 and below 1, got {s.holdout}"),
        (s.refits >= 1, f"--refits must be at least 1, got {s.refits}"),
        (s.lr_by_epoch is None or s.epochs is not None and len(s.lr_by_epoch) >= s.epochs
         and all(v > 0 and math.isfinite(v) for v in s.lr_by_epoch), "a rate for every epoch, each positive"),
        (t.engine in ENGINES, f"unknown engine {t.engine!r} (choose from {', '.join(ENGINES)})"),
        (known_device(t.device), f"unknown device {t.device!r} (choose from auto, cpu, cuda, cuda:N)"),
        (t.threads is None or t.threads >= 1, f"--threads must be at least 1, got {t.threads}"),
    ]
