"""Training: epochs of shuffled mini-batches on an engine, validation, early stopping.

Two engines compute the same updates (see fmctr.models.kernel): `cpu`, fused numba kernels,
and `torch`, EmbeddingBag + autograd, for CUDA. The loop here is shared.
"""

from __future__ import annotations

import itertools
import math
import os
import re
import time
from dataclasses import asdict, dataclass, replace

import numpy as np

from fmctr.models import kernel
from fmctr.datasets.batches import MemoryRows, RowSource
from fmctr.errors import BadOptions, Interrupted
from fmctr.hashing.tokens import Rows
from fmctr.metrics import evaluate
from fmctr.models.weights import FMWeights, initial_factors

OPTIMIZERS = ("adagrad", "adam", "ftrl")
ENGINES = ("auto", "cpu", "torch")
STOP_METRICS = ("logloss", "auc")
# Defaults chosen by measurement (README, "Accuracy"): without validation data a few
# epochs of small batches; with validation, early stopping decides.
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


@dataclass(frozen=True)
class TrainConfig:
    dim: int = 8
    epochs: int | None = None  # None: DEFAULT_EPOCHS, or up to DEFAULT_MAX_EPOCHS with validation
    batch_size: int | None = None  # None: DEFAULT_BATCH[engine]
    lr: float | None = None  # None: DEFAULT_LR[optimizer]
    optimizer: str = "adagrad"
    l2_linear: float | None = None  # None: L2_TOUCH_ROWS[0] / training rows
    l2_factors: float | None = None  # None: L2_TOUCH_ROWS[1] / training rows
    init_std: float = 0.01
    eps: float = 1e-8
    adagrad_init: float = 1.0
    l1: float = 0.0
    ftrl_alpha: float = 0.05
    ftrl_beta: float = 1.0
    seed: int = 0
    engine: str = "auto"
    device: str = "auto"
    patience: int = 2
    stop_metric: str = "logloss"
    threads: int | None = None
    lr_decay: float = 0.5  # with validation: the learning rate is multiplied by this after a check that does not improve
    valid_every: int | None = None  # rows between validation checks (None: once per epoch)
    # L2 on every weight, as a penalty on the mean loss, applied sparsely (see fmctr.models.kernel)
    l2_all_linear: float = 0.0
    l2_all_factors: float = 3e-4

    def check(self) -> TrainConfig:
        rules = [
            (self.dim >= 0, f"--dim must be 0 or more, got {self.dim}"),
            (self.epochs is None or self.epochs >= 1, f"--epochs must be at least 1, got {self.epochs}"),
            (self.batch_size is None or self.batch_size >= 1, f"--batch-size must be at least 1, got {self.batch_size}"),
            (self.lr is None or self.lr > 0 and math.isfinite(self.lr), f"--lr must be a positive number, got {self.lr}"),
            ((self.l2_linear or 0) >= 0 and (self.l2_factors or 0) >= 0, "--l2 and --l2-factors must be 0 or more"),
            (self.l2_all_linear >= 0 and self.l2_all_factors >= 0, "--l2-all and --l2-all-factors must be 0 or more"),
            (self.optimizer in OPTIMIZERS, f"unknown optimizer {self.optimizer!r} (choose from {', '.join(OPTIMIZERS)})"),
            (self.engine in ENGINES, f"unknown engine {self.engine!r} (choose from {', '.join(ENGINES)})"),
            (self.stop_metric in STOP_METRICS, f"unknown metric {self.stop_metric!r} (choose from {', '.join(STOP_METRICS)})"),
            (_known_device(self.device), f"unknown device {self.device!r} (choose from auto, cpu, cuda, cuda:N)"),
            (self.patience >= 1, f"--patience must be at least 1, got {self.patience}"),
            (self.init_std >= 0 and math.isfinite(self.init_std), f"--init-std must be 0 or more, got {self.init_std}"),
            (0 < self.lr_decay <= 1, f"--lr-decay must be in (0, 1], got {self.lr_decay}"),
            (self.valid_every is None or self.valid_every >= 1, f"--valid-every must be at least 1 row, got {self.valid_every}"),
            (self.l1 >= 0 and self.ftrl_alpha > 0 and self.ftrl_beta >= 0,
             "--l1 and --ftrl-beta must be 0 or more, --ftrl-alpha positive"),
            (self.threads is None or self.threads >= 1, f"--threads must be at least 1, got {self.threads}"),
        ]
        for ok, message in rules:
            if not ok:
                raise BadOptions(message)
        return self


@dataclass
class Epoch:
    epoch: int
    train_logloss: float
    seconds: float
    rows_per_s: float
    valid: dict | None = None  # metrics at the epoch's last validation check
    lr: float | None = None  # the learning rate the epoch ended with
    checks: list[dict] | None = None  # validation checks within the epoch (with --valid-every)


@dataclass
class TrainResult:
    weights: FMWeights
    history: list[Epoch]
    best_epoch: int
    rows: int
    engine: str
    device: str
    config: TrainConfig  # with every default resolved
    optimizer: dict | None = None  # the optimizer's state after the last epoch


class NullProgress:
    """Progress callbacks that do nothing: the core is silent unless asked."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None: ...

    def start_epoch(self, epoch: int, epochs: int, rows: int) -> None: ...

    def advance(self, rows: int, loss: float) -> None: ...

    def validated(self, metrics: dict, within_epoch: bool) -> None: ...

    def end_epoch(self, record: Epoch) -> None: ...


def _known_device(device: str) -> bool:
    return re.fullmatch(r"auto|cpu|cuda(:\d+)?", device) is not None


def _torch():
    try:
        import torch
    except ImportError:
        raise BadOptions("the torch engine needs PyTorch: pip install 'fmctr[torch]'") from None
    return torch


def _maybe_cuda() -> bool:
    """Whether an NVIDIA driver is present, without importing torch (1-2 s) to ask."""
    return os.path.exists("/proc/driver/nvidia/version") or os.environ.get("CUDA_VISIBLE_DEVICES") not in (None, "")


def resolve_device(engine: str, device: str) -> tuple[str, str]:
    """'auto' picks the fused CPU engine on a CPU and the torch engine on CUDA."""
    if not _known_device(device):
        raise BadOptions(f"unknown device {device!r} (choose from auto, cpu, cuda, cuda:N)")
    if device == "auto":
        device = "cpu"
        if engine != "cpu" and (engine == "torch" or _maybe_cuda()):
            try:
                import torch

                if torch.cuda.is_available():
                    device = "cuda"
            except ImportError:
                pass
    if engine == "auto":
        engine = "cpu" if device == "cpu" else "torch"
    if engine == "cpu" and device != "cpu":
        raise BadOptions(f"--engine cpu runs on the CPU only; use --engine torch for --device {device}")
    if engine not in ("cpu", "torch"):
        raise BadOptions(f"unknown engine {engine!r} (choose from {', '.join(ENGINES)})")
    if engine == "torch" and device != "cpu" and not _torch().cuda.is_available():
        raise BadOptions(f"--device {device}: CUDA is not available on this machine")
    if engine == "torch":
        _torch()
    return engine, device


def resolve_l2(cfg: TrainConfig, rows: int) -> TrainConfig:
    """Fill in the touch-L2 defaults for a number of training rows."""
    linear = cfg.l2_linear
    if linear is None:
        linear = FTRL_L2 if cfg.optimizer == "ftrl" else L2_TOUCH_ROWS[0] / rows
    factors = cfg.l2_factors if cfg.l2_factors is not None else L2_TOUCH_ROWS[1] / rows
    return replace(cfg, l2_linear=linear, l2_factors=factors)


def set_threads(threads: int | None) -> int:
    """Use `threads` (default: every core) in the numba kernels; returns the number."""
    import numba

    n = min(threads or os.cpu_count() or 1, numba.config.NUMBA_NUM_THREADS)
    numba.set_num_threads(n)
    return n


class CpuEngine:
    """Fused numba kernels over numpy arrays."""

    def __init__(self, w: FMWeights, cfg: TrainConfig, threads: int, optimizer: dict | None = None):
        self.w = w
        self.cfg = cfg
        n, k = w.num_features, w.dim
        adam = cfg.optimizer == "adam"
        two_linear = cfg.optimizer in ("adam", "ftrl")
        if optimizer is not None:
            self.bias_state = optimizer["bias"].copy()
            self.linear_state1, self.factor_state1 = optimizer["linear1"], optimizer["factors1"]
            self.linear_state2 = optimizer["linear2"] if two_linear else self.linear_state1
            self.factor_state2 = optimizer["factors2"] if adam else self.factor_state1
            self.seen = optimizer["seen"]
            self.counters = np.array([optimizer["step"], 0], np.int64)
        else:
            self.bias_state = np.zeros(2, np.float32)
            self.linear_state1 = np.zeros(n, np.float32)
            self.linear_state2 = np.zeros(n, np.float32) if two_linear else self.linear_state1
            self.factor_state1 = np.zeros((n, k), np.float32)
            self.factor_state2 = np.zeros((n, k), np.float32) if adam else self.factor_state1
            self.seen = np.zeros(n, np.bool_)
            self.counters = np.zeros(2, np.int64)
        # Each feature's linear weight, its optimizer state and its --l2-all share sit
        # side by side (one cache line where four arrays cost four misses); the
        # engine's arrays are views of this table.
        self.meta = np.zeros((n, 4), np.float32)
        self.meta[:, 0] = w.linear
        self.meta[:, 1] = self.linear_state1
        self.meta[:, 2] = self.linear_state2
        w.linear = self.meta[:, 0]
        self.linear_state1 = self.meta[:, 1]
        self.linear_state2 = self.meta[:, 2] if two_linear else self.linear_state1
        self.threads = threads
        self.lr = cfg.lr
        self.code = {"adagrad": kernel.ADAGRAD, "adam": kernel.ADAM, "ftrl": kernel.FTRL}[cfg.optimizer]
        self.ftrl = np.array([cfg.ftrl_alpha, cfg.ftrl_beta, cfg.l1, cfg.l2_linear], np.float64)
        self.inv_counts = np.zeros(0, np.float32)
        self.priors = np.array([cfg.l2_all_linear, cfg.l2_all_factors], np.float64)

    def train(self, rows: Rows, order: np.ndarray) -> float:
        cfg = self.cfg
        max_row = int((rows.offsets[order + 1] - rows.offsets[order]).max(initial=0))
        return kernel.train_rows(
            rows.indices, rows.values, rows.offsets, rows.labels, order, cfg.batch_size, self.threads,
            self.w.bias, self.w.linear, self.w.factors,
            self.bias_state, self.linear_state1, self.linear_state2, self.factor_state1, self.factor_state2,
            self.seen, max_row,
            self.code, self.lr, cfg.l2_linear, cfg.l2_factors, cfg.eps, 0.9, 0.999, self.counters,
            cfg.seed, cfg.init_std, cfg.adagrad_init, self.ftrl, self.inv_counts, self.priors,
        )

    def weights(self) -> FMWeights:
        return self.w

    def set_lr(self, lr: float) -> None:
        self.lr = lr

    def set_counts(self, counts: np.ndarray, rows: int) -> None:
        self.meta[:, 3] = rows / np.maximum(counts, 1)
        self.inv_counts = self.meta[:, 3]

    def average(self, replicas, rows: np.ndarray) -> None:
        """Average the given rows (weights and optimizer state) across ranks."""
        tables = [self.w.linear, self.w.factors, self.linear_state1, self.factor_state1]
        if self.cfg.optimizer == "adam":
            tables += [self.linear_state2, self.factor_state2]
        elif self.cfg.optimizer == "ftrl":
            tables.append(self.linear_state2)
        replicas.average_rows(rows, tables, [self.w.bias, self.bias_state])
        self.seen[rows] = True

    def optimizer_state(self) -> dict:
        """The optimizer's arrays (live, not copies), as fmctr.models.modelfile stores them."""
        return {
            "kind": self.cfg.optimizer, "step": int(self.counters[0]), "bias": self.bias_state,
            "linear1": self.linear_state1, "linear2": self.linear_state2,
            "factors1": self.factor_state1, "factors2": self.factor_state2, "seen": self.seen,
        }


class TorchEngine:
    """EmbeddingBag model + autograd + row-wise optimizer, on any torch device."""

    def __init__(self, w: FMWeights, cfg: TrainConfig, device: str, optimizer: dict | None = None):
        import torch

        from fmctr.models.torch_fm import FactorizationMachine, RowwiseOptimizer

        self.torch = torch
        self.device = device
        self.cfg = cfg
        self.model = FactorizationMachine.from_weights(w, device)
        ftrl = (cfg.ftrl_alpha, cfg.ftrl_beta, cfg.l1, cfg.l2_linear) if cfg.optimizer == "ftrl" else None
        groups = [
            {"params": [self.model.linear.bias], "l2": 0.0},
            {"params": [self.model.linear.weight.weight], "l2": cfg.l2_linear, "ftrl": ftrl},
        ]
        if self.model.pairwise is not None:
            groups.append({"params": [self.model.pairwise.embedding.weight], "l2": cfg.l2_factors})
        self.optimizer = RowwiseOptimizer(
            groups, kind=cfg.optimizer, lr=cfg.lr, eps=cfg.eps, initial_accumulator=cfg.adagrad_init
        )
        self.seen = torch.zeros(w.num_features, dtype=torch.bool, device=device)
        self.params = [g["params"][0] for g in groups]  # bias, linear, factors
        self.lr = cfg.lr
        self.inv_counts = None
        if optimizer is not None:
            self._load_optimizer(optimizer)

    def average(self, replicas, rows: np.ndarray) -> None:
        self.optimizer.init_state()
        tables, scalars = [], []
        for p in self.params:
            state = self.optimizer.state[p]
            group = [p, state["acc1"]] + ([state["acc2"]] if self._two_states(p) else [])
            (scalars if p is self.params[0] else tables).extend(group)
        with self.torch.no_grad():
            replicas.average_rows(rows, tables, scalars)
        self.seen[self.torch.from_numpy(rows).to(self.device)] = True

    def _two_states(self, p) -> bool:
        """Whether parameter p's optimizer keeps a second state (Adam's v; FTRL's n
        for the linear weights) rather than one accumulator."""
        return self.cfg.optimizer == "adam" or (self.cfg.optimizer == "ftrl" and p is self.params[1])

    def _load_optimizer(self, optimizer: dict) -> None:
        t = self.torch
        n = self.seen.shape[0]
        self.seen = t.from_numpy(optimizer["seen"].copy()).to(self.device)
        self.optimizer.step_count = optimizer["step"]
        pairs = [(optimizer["bias"][:1], optimizer["bias"][1:2]),
                 (optimizer["linear1"].reshape(n, 1), optimizer["linear2"].reshape(n, 1)),
                 (optimizer["factors1"], optimizer["factors2"])]
        for p, (first, second) in zip(self.params, pairs):
            acc1 = t.from_numpy(np.array(first, np.float32)).to(self.device)
            acc2 = t.from_numpy(np.array(second, np.float32)).to(self.device) if self._two_states(p) else acc1
            self.optimizer.state[p] = {"acc1": acc1, "acc2": acc2}

    def optimizer_state(self) -> dict:
        n = self.seen.shape[0]

        def acc(p, key):
            state = self.optimizer.state.get(p)
            return np.zeros(tuple(p.shape), np.float32) if not state else state[key].detach().cpu().numpy()

        bias, linear = self.params[0], self.params[1]
        k = self.params[2].shape[1] if len(self.params) > 2 else 0
        factors = (lambda key: acc(self.params[2], key)) if k else (lambda key: np.zeros((n, 0), np.float32))
        return {
            "kind": self.cfg.optimizer, "step": self.optimizer.step_count, "seen": self.seen.cpu().numpy(),
            "bias": np.array([acc(bias, "acc1")[0], acc(bias, "acc2")[0]], np.float32),
            "linear1": acc(linear, "acc1").reshape(n), "linear2": acc(linear, "acc2").reshape(n),
            "factors1": factors("acc1"), "factors2": factors("acc2"),
        }

    def init_new_rows(self, indices) -> None:
        """Give rows met for the first time their initial factors (as the CPU kernel does)."""
        t = self.torch
        unique = t.unique(indices)
        new = unique[~self.seen[unique]]
        if len(new) == 0:
            return
        self.seen[new] = True
        if self.model.pairwise is not None:
            cfg = self.cfg
            init = initial_factors(new.cpu().numpy(), self.model.pairwise.embedding.weight.shape[1], seed=cfg.seed, std=cfg.init_std)
            with t.no_grad():
                self.model.pairwise.embedding.weight[new] = t.from_numpy(init).to(self.device)

    def tensors(self, rows: Rows):
        t = self.torch
        return (
            t.from_numpy(rows.indices.astype(np.int64)).to(self.device),
            t.from_numpy(rows.offsets[:-1]).to(self.device),
            t.from_numpy(rows.values).to(self.device),
        )

    def train(self, rows: Rows, order: np.ndarray) -> float:
        t = self.torch
        total = 0.0
        for b0 in range(0, len(order), self.cfg.batch_size):
            batch = rows.take(order[b0 : b0 + self.cfg.batch_size])
            indices, offsets, values = self.tensors(batch)
            labels = t.from_numpy(batch.labels).to(self.device)
            self.init_new_rows(indices)
            self.optimizer.zero_grad(set_to_none=True)
            self.optimizer.batch_rows = len(batch)
            loss = t.nn.functional.binary_cross_entropy_with_logits(self.model(indices, offsets, values), labels)
            objective = loss if self.inv_counts is None else loss + self.prior_penalty(indices, len(batch))
            objective.backward()
            self.optimizer.step()
            total += float(loss.detach()) * len(batch)
        return total

    def weights(self) -> FMWeights:
        return self.model.to_weights()

    def set_lr(self, lr: float) -> None:
        self.lr = lr
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def set_counts(self, counts: np.ndarray, rows: int) -> None:
        self.inv_counts = self.torch.from_numpy((rows / np.maximum(counts, 1)).astype(np.float32)).to(self.device)

    def prior_penalty(self, indices, n_rows: int):
        """This batch's share of the --l2-all penalty: for each occurrence of feature
        i, l2_all / 2 * |theta_i|^2 * rows / count_i, over the batch's rows (the loss
        is a mean), so that an epoch applies l2_all / 2 * |theta_i|^2 to the mean loss."""
        embedding = self.torch.nn.functional.embedding  # sparse gradients, like the model's
        share = self.inv_counts[indices]
        penalty = 0.0
        if self.cfg.l2_all_linear and self.cfg.optimizer != "ftrl":
            w = embedding(indices, self.model.linear.weight.weight, sparse=True)[:, 0]
            penalty = penalty + self.cfg.l2_all_linear * (share * w * w).sum()
        if self.cfg.l2_all_factors and self.model.pairwise is not None:
            v = embedding(indices, self.model.pairwise.embedding.weight, sparse=True)
            penalty = penalty + self.cfg.l2_all_factors * (share * (v * v).sum(1)).sum()
        return 0.5 * penalty / n_rows


def logits(w: FMWeights, rows: Rows) -> np.ndarray:
    """FM logits of CSR rows with the CPU kernel."""
    out = np.empty(len(rows), np.float64)
    kernel.fm_logits(rows.indices, rows.values, rows.offsets, w.bias, w.linear, w.factors, out)
    return out


def probabilities(w: FMWeights, rows: Rows) -> np.ndarray:
    z = logits(w, rows)
    return 1.0 / (1.0 + np.exp(-z))


class Scorer:
    """Click probabilities from weights: the CPU kernel, or the torch model on a GPU
    (`engine="torch"` also forces the torch model on a CPU)."""

    def __init__(self, w: FMWeights, device: str = "auto", engine: str = "auto"):
        engine, device = resolve_device(engine, device)
        self.w = w
        self.model = None
        if engine == "torch":
            from fmctr.models.torch_fm import FactorizationMachine

            self.torch = _torch()
            self.device = device
            self.model = FactorizationMachine.from_weights(w, device).eval()

    def __call__(self, rows: Rows) -> np.ndarray:
        if self.model is None:
            return probabilities(self.w, rows)
        t = self.torch
        with t.no_grad():
            z = self.model(
                t.from_numpy(rows.indices.astype(np.int64)).to(self.device),
                t.from_numpy(np.ascontiguousarray(rows.offsets[:-1])).to(self.device),
                t.from_numpy(np.ascontiguousarray(rows.values)).to(self.device),
            )
        return t.sigmoid(z.double()).cpu().numpy()


def _better(metric: str, new: float, old: float | None) -> bool:
    if old is None:
        return True
    if math.isnan(new):
        return False
    return new < old if metric == "logloss" else new > old


def _pieces(blocks, rows: int | None):
    """The shuffled (rows, order) blocks, cut into pieces of at most `rows` rows."""
    for block, order in blocks:
        step = rows or len(order)
        for lo in range(0, len(order), step):
            yield block, order[lo : lo + step]


def predict_source(w: FMWeights, source: RowSource) -> np.ndarray:
    """Probabilities for every row of a source, in order."""
    return np.concatenate([probabilities(w, block) for block in source.blocks()])


@dataclass
class Resume:
    """Where an interrupted run stopped: everything to continue it exactly."""

    weights: FMWeights
    optimizer: dict
    epoch: int  # the epoch in progress (1-based)
    block: int  # blocks of that epoch already trained
    epoch_rng: dict  # the shuffling RNG's state when that epoch began
    loss: float  # summed training loss of those blocks
    rows_done: int
    history: list[Epoch]
    best: FMWeights | None = None
    best_score: float | None = None
    best_epoch: int = 0
    since_best: int = 0
    lr_scale: float = 1.0  # decays after validation checks that do not improve
    since_check: int = 0  # rows trained since the last validation check

    def progress(self) -> dict:
        """The JSON-able part (the arrays travel as tensors)."""
        return {
            "epoch": self.epoch, "block": self.block, "epoch_rng": self.epoch_rng, "loss": self.loss,
            "rows_done": self.rows_done, "history": [asdict(e) for e in self.history],
            "best_score": self.best_score, "best_epoch": self.best_epoch, "since_best": self.since_best,
            "lr_scale": self.lr_scale, "since_check": self.since_check,
        }

    @classmethod
    def from_parts(cls, weights: FMWeights, optimizer: dict, best: FMWeights | None, progress: dict) -> Resume:
        return cls(weights, optimizer, progress["epoch"], progress["block"], progress["epoch_rng"], progress["loss"],
                   progress["rows_done"], [Epoch(**e) for e in progress["history"]], best,
                   progress["best_score"], progress["best_epoch"], progress["since_best"],
                   progress.get("lr_scale", 1.0), progress.get("since_check", 0))


def train(
    rows: Rows | RowSource,
    cfg: TrainConfig,
    *,
    bits: int,
    valid: Rows | RowSource | None = None,
    progress=None,
    start: FMWeights | None = None,
    start_optimizer: dict | None = None,
    resume: Resume | None = None,
    should_stop=None,
    checkpoint=None,
    checkpoint_every: float | None = None,
    replicas=None,
    sync_rows: int = 1 << 16,
    on_epoch=None,
) -> TrainResult:
    """Train an FM on hashed rows (in memory or streamed from a dataset). With
    `valid`, keep the best epoch by `cfg.stop_metric` and stop after `cfg.patience`
    epochs without improvement.

    `start` (and `start_optimizer`) warm-start from a model; `resume` continues an
    interrupted run exactly. Between blocks, `should_stop()` is asked: when true,
    `checkpoint(Resume)` is called and Interrupted raised; `checkpoint` is also called
    every `checkpoint_every` seconds.

    With `replicas` (fmctr.distributed.Replicas) this process is one rank of a
    data-parallel run: `rows` is its share, and every `sync_rows` rows the ranks
    average the model rows any of them touched. `on_epoch(record, weights)` is called
    after each epoch with that epoch's weights (e.g. to score a test set per epoch)."""
    source = MemoryRows(rows) if isinstance(rows, Rows) else rows
    valid_source = MemoryRows(valid) if isinstance(valid, Rows) else valid
    cfg.check()
    engine_name, device = resolve_device(cfg.engine, cfg.device)
    cfg = replace(
        cfg,
        engine=engine_name,
        device=device,
        epochs=cfg.epochs or (DEFAULT_MAX_EPOCHS if valid is not None else DEFAULT_EPOCHS),
        batch_size=cfg.batch_size or DEFAULT_BATCH[engine_name],
        lr=cfg.lr or DEFAULT_LR[cfg.optimizer],
    )
    progress = progress or NullProgress()
    total_rows = source.rows if replicas is None else int(replicas.sum([source.rows])[0])
    if total_rows == 0:
        raise BadOptions("no training rows")
    cfg = resolve_l2(cfg, total_rows)
    threads = set_threads(cfg.threads)
    if resume is not None:
        w, optimizer = resume.weights, resume.optimizer
    else:
        w = start.copy() if start is not None else FMWeights.zeros(1 << bits, cfg.dim)
        optimizer = start_optimizer
    engine = CpuEngine(w, cfg, threads, optimizer) if engine_name == "cpu" else TorchEngine(w, cfg, device, optimizer)
    if cfg.l2_all_linear or cfg.l2_all_factors:
        engine.set_counts(source.feature_counts(1 << bits), source.rows)
    if engine_name == "torch":
        import torch

        torch.manual_seed(cfg.seed)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
    rng = np.random.default_rng(cfg.seed)
    state = resume or Resume(w, {}, 1, 0, rng.bit_generator.state, 0.0, 0, [])
    first_epoch = state.epoch
    if resume is not None:
        rng.bit_generator.state = resume.epoch_rng
    valid_labels = valid_source.labels() if valid_source is not None else None
    last_checkpoint = time.monotonic()

    def save_checkpoint(epoch: int, block: int, epoch_rng: dict, loss: float, rows_done: int) -> None:
        state.weights, state.optimizer = engine.weights(), engine.optimizer_state()
        state.epoch, state.block, state.epoch_rng, state.loss, state.rows_done = epoch, block, epoch_rng, loss, rows_done
        checkpoint(state)

    def validate(epoch: int, rows_done: int, within_epoch: bool) -> tuple[dict, dict]:
        """Score the validation rows; keep the best weights; decay the learning rate
        after a check that does not improve. Returns the metrics, and the check's
        record (the metrics with where the check fell, the rate after it, and
        whether it was the best so far)."""
        current = engine.weights()
        metrics = evaluate(valid_labels, predict_source(current, valid_source))
        score = metrics[cfg.stop_metric]
        if _better(cfg.stop_metric, score, state.best_score):
            state.best_score, state.best_epoch, state.since_best = score, epoch, 0
            state.best = current.copy()
        else:
            state.since_best += 1
            state.lr_scale *= cfg.lr_decay
            engine.set_lr(cfg.lr * state.lr_scale)
        state.since_check = 0
        check = {**metrics, "epoch": epoch, "rows": rows_done, "lr": engine.lr, "best": state.since_best == 0}
        progress.validated(check, within_epoch)
        return metrics, check

    every = cfg.valid_every if valid_source is not None else None
    piece_rows = min([r for r in (sync_rows if replicas is not None else None, every) if r], default=None)
    engine.set_lr(cfg.lr * state.lr_scale)
    stopped = False
    for epoch in range(first_epoch, cfg.epochs + 1):
        epoch_rng = rng.bit_generator.state
        skip = state.block if epoch == first_epoch else 0
        loss = state.loss if epoch == first_epoch else 0.0
        rows_done = state.rows_done if epoch == first_epoch else 0
        checks, record_valid = [], None  # this epoch's checks; the last one's metrics
        progress.start_epoch(epoch, cfg.epochs, source.rows)
        if rows_done:
            progress.advance(rows_done, loss / rows_done)  # resumed mid-epoch
        started = time.perf_counter()
        blocks = _pieces(source.shuffled(rng), piece_rows)
        for number in itertools.count():
            piece = next(blocks, None)
            if replicas is not None:
                if not replicas.max(piece is not None):
                    break  # every rank is done with this epoch
            elif piece is None:
                break
            if number < skip:
                continue  # trained before the interruption; the RNG draws stay the same
            if should_stop is not None and should_stop():
                if checkpoint is not None:
                    save_checkpoint(epoch, number, epoch_rng, loss, rows_done)
                raise Interrupted(epoch, rows_done, source.rows)
            if piece is not None:
                block, order = piece
                block_loss = engine.train(block, order)
                loss += block_loss
                rows_done += len(order)
                state.since_check += len(order)
                progress.advance(len(order), block_loss / len(order))
            if replicas is not None:
                touched = np.unique(block.take(order).indices) if piece is not None else np.zeros(0, np.int64)
                engine.average(replicas, replicas.union(touched.astype(np.int64)))
            if every is not None:
                due = state.since_check >= every
                if replicas.max(due) if replicas is not None else due:
                    record_valid, check = validate(epoch, rows_done, True)
                    checks.append(check)
                    stopped = state.since_best >= cfg.patience
            if checkpoint is not None and checkpoint_every is not None and time.monotonic() - last_checkpoint >= checkpoint_every:
                save_checkpoint(epoch, number + 1, epoch_rng, loss, rows_done)
                last_checkpoint = time.monotonic()
            if stopped:
                break
        seconds = time.perf_counter() - started
        epoch_rows = rows_done - (state.rows_done if epoch == first_epoch else 0)
        total_done = rows_done
        if replicas is not None:
            loss, epoch_rows, total_done = replicas.sum([loss, epoch_rows, total_done])
        record = Epoch(epoch, loss / max(total_done, 1), seconds, epoch_rows / max(seconds, 1e-9))
        if valid_source is not None and every is None:
            record_valid, check = validate(epoch, rows_done, False)
            checks.append(check)
            stopped = state.since_best >= cfg.patience
        elif valid_source is None:
            state.best_epoch = epoch
        record.valid = record_valid
        record.checks = checks if every is not None else None
        record.lr = engine.lr
        state.history.append(record)
        if on_epoch is not None:
            on_epoch(record, engine.weights())
        progress.end_epoch(record)
        if stopped:
            break
    final = state.best if state.best is not None else engine.weights()
    result = TrainResult(final, state.history, state.best_epoch, total_rows, engine_name, device, cfg)
    result.optimizer = engine.optimizer_state()
    return result
