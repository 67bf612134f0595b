"""Training: epochs of shuffled mini-batches on an engine, validation, early stopping.

Two engines compute the same updates (see fmctr.kernel): `cpu`, fused numba kernels,
and `torch`, EmbeddingBag + autograd, for CUDA. The loop here is shared.
"""

from __future__ import annotations

import math
import os
import re
import time
from dataclasses import asdict, dataclass, replace

import numpy as np

from fmctr import kernel
from fmctr.batches import MemoryRows, RowSource
from fmctr.errors import BadOptions
from fmctr.hashing import Rows
from fmctr.metrics import evaluate
from fmctr.weights import FMWeights, initial_factors

OPTIMIZERS = ("adagrad", "adam")
ENGINES = ("auto", "cpu", "torch")
STOP_METRICS = ("logloss", "auc")
# Defaults chosen by measurement (README, "Accuracy"): without validation data a few
# epochs of small batches; with validation, early stopping decides.
DEFAULT_EPOCHS = 3
DEFAULT_MAX_EPOCHS = 20
# Small batches suit per-row CPU kernels; a GPU needs large ones to be busy.
DEFAULT_BATCH = {"cpu": 4, "torch": 1024}


@dataclass(frozen=True)
class TrainConfig:
    dim: int = 8
    epochs: int | None = None  # None: DEFAULT_EPOCHS, or up to DEFAULT_MAX_EPOCHS with validation
    batch_size: int | None = None  # None: DEFAULT_BATCH[engine]
    lr: float = 0.03
    optimizer: str = "adagrad"
    l2_linear: float = 0.01
    l2_factors: float = 0.05
    init_std: float = 0.01
    eps: float = 1e-8
    adagrad_init: float = 1.0
    seed: int = 0
    engine: str = "auto"
    device: str = "auto"
    patience: int = 2
    stop_metric: str = "logloss"
    threads: int | None = None

    def check(self) -> TrainConfig:
        rules = [
            (self.dim >= 0, f"--dim must be 0 or more, got {self.dim}"),
            (self.epochs is None or self.epochs >= 1, f"--epochs must be at least 1, got {self.epochs}"),
            (self.batch_size is None or self.batch_size >= 1, f"--batch-size must be at least 1, got {self.batch_size}"),
            (self.lr > 0 and math.isfinite(self.lr), f"--lr must be a positive number, got {self.lr}"),
            (self.l2_linear >= 0 and self.l2_factors >= 0, "--l2 and --l2-factors must be 0 or more"),
            (self.optimizer in OPTIMIZERS, f"unknown optimizer {self.optimizer!r} (choose from {', '.join(OPTIMIZERS)})"),
            (self.engine in ENGINES, f"unknown engine {self.engine!r} (choose from {', '.join(ENGINES)})"),
            (self.stop_metric in STOP_METRICS, f"unknown metric {self.stop_metric!r} (choose from {', '.join(STOP_METRICS)})"),
            (re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device) is not None, f"unknown device {self.device!r} (choose from auto, cpu, cuda, cuda:N)"),
            (self.patience >= 1, f"--patience must be at least 1, got {self.patience}"),
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
    valid: dict | None = None


@dataclass
class TrainResult:
    weights: FMWeights
    history: list[Epoch]
    best_epoch: int
    rows: int
    engine: str
    device: str
    config: TrainConfig  # with every default resolved

    def summary(self) -> dict:
        return {
            "rows": self.rows,
            "epochs_run": len(self.history),
            "best_epoch": self.best_epoch,
            "engine": self.engine,
            "device": self.device,
            "history": [asdict(e) for e in self.history],
        }


class NullProgress:
    """Progress callbacks that do nothing: the core is silent unless asked."""

    def start_epoch(self, epoch: int, epochs: int, rows: int) -> None: ...

    def advance(self, rows: int, loss: float) -> None: ...

    def end_epoch(self, record: Epoch) -> None: ...


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


def set_threads(threads: int | None) -> int:
    """Use `threads` (default: every core) in the numba kernels; returns the number."""
    import numba

    n = min(threads or os.cpu_count() or 1, numba.config.NUMBA_NUM_THREADS)
    numba.set_num_threads(n)
    return n


class CpuEngine:
    """Fused numba kernels over numpy arrays."""

    def __init__(self, w: FMWeights, cfg: TrainConfig, threads: int):
        self.w = w
        self.cfg = cfg
        n, k = w.num_features, w.dim
        adam = cfg.optimizer == "adam"
        self.bias_state = np.zeros(2, np.float32)
        self.linear_state1 = np.zeros(n, np.float32)
        self.linear_state2 = np.zeros(n, np.float32) if adam else self.linear_state1
        self.factor_state1 = np.zeros((n, k), np.float32)
        self.factor_state2 = np.zeros((n, k), np.float32) if adam else self.factor_state1
        self.threads = threads
        self.seen = np.zeros(n, np.bool_)
        self.counters = np.zeros(2, np.int64)
        self.code = kernel.ADAM if adam else kernel.ADAGRAD

    def train(self, rows: Rows, order: np.ndarray) -> float:
        cfg = self.cfg
        max_row = int((rows.offsets[order + 1] - rows.offsets[order]).max(initial=0))
        return kernel.train_rows(
            rows.indices, rows.values, rows.offsets, rows.labels, order, cfg.batch_size, self.threads,
            self.w.bias, self.w.linear, self.w.factors,
            self.bias_state, self.linear_state1, self.linear_state2, self.factor_state1, self.factor_state2,
            self.seen, max_row,
            self.code, cfg.lr, cfg.l2_linear, cfg.l2_factors, cfg.eps, 0.9, 0.999, self.counters,
            cfg.seed, cfg.init_std, cfg.adagrad_init,
        )

    def weights(self) -> FMWeights:
        return self.w



class TorchEngine:
    """EmbeddingBag model + autograd + row-wise optimizer, on any torch device."""

    def __init__(self, w: FMWeights, cfg: TrainConfig, device: str):
        import torch

        from fmctr.model import FactorizationMachine, RowwiseOptimizer

        self.torch = torch
        self.device = device
        self.cfg = cfg
        self.model = FactorizationMachine.from_weights(w, device)
        groups = [
            {"params": [self.model.linear.bias], "l2": 0.0},
            {"params": [self.model.linear.weight.weight], "l2": cfg.l2_linear},
        ]
        if self.model.pairwise is not None:
            groups.append({"params": [self.model.pairwise.embedding.weight], "l2": cfg.l2_factors})
        self.optimizer = RowwiseOptimizer(
            groups, kind=cfg.optimizer, lr=cfg.lr, eps=cfg.eps, initial_accumulator=cfg.adagrad_init
        )
        self.seen = torch.zeros(w.num_features, dtype=torch.bool, device=device)

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
            loss = t.nn.functional.binary_cross_entropy_with_logits(self.model(indices, offsets, values), labels)
            loss.backward()
            self.optimizer.step()
            total += float(loss.detach()) * len(batch)
        return total

    def weights(self) -> FMWeights:
        return self.model.to_weights()


def logits(w: FMWeights, rows: Rows) -> np.ndarray:
    """FM logits of CSR rows with the CPU kernel."""
    out = np.empty(len(rows), np.float64)
    kernel.fm_logits(rows.indices, rows.values, rows.offsets, w.bias, w.linear, w.factors, out)
    return out


def probabilities(w: FMWeights, rows: Rows) -> np.ndarray:
    z = logits(w, rows)
    return 1.0 / (1.0 + np.exp(-z))


def _better(metric: str, new: float, old: float | None) -> bool:
    if old is None:
        return True
    if math.isnan(new):
        return False
    return new < old if metric == "logloss" else new > old


def predict_source(w: FMWeights, source: RowSource) -> np.ndarray:
    """Probabilities for every row of a source, in order."""
    return np.concatenate([probabilities(w, block) for block in source.blocks()])


def train(
    rows: Rows | RowSource,
    cfg: TrainConfig,
    *,
    bits: int,
    valid: Rows | RowSource | None = None,
    progress=None,
) -> TrainResult:
    """Train an FM on hashed rows (in memory or streamed from a dataset). With
    `valid`, keep the best epoch by `cfg.stop_metric` and stop after `cfg.patience`
    epochs without improvement."""
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
    )
    progress = progress or NullProgress()
    if source.rows == 0:
        raise BadOptions("no training rows")
    threads = set_threads(cfg.threads)
    w = FMWeights.zeros(1 << bits, cfg.dim)
    engine = CpuEngine(w, cfg, threads) if engine_name == "cpu" else TorchEngine(w, cfg, device)
    if engine_name == "torch":
        import torch

        torch.manual_seed(cfg.seed)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
    rng = np.random.default_rng(cfg.seed)
    history: list[Epoch] = []
    best: FMWeights | None = None
    best_score: float | None = None
    best_epoch = 0
    since_best = 0
    valid_labels = valid_source.labels() if valid_source is not None else None
    for epoch in range(1, cfg.epochs + 1):
        progress.start_epoch(epoch, cfg.epochs, source.rows)
        started = time.perf_counter()
        loss = 0.0
        for block, order in source.shuffled(rng):
            block_loss = engine.train(block, order)
            loss += block_loss
            progress.advance(len(order), block_loss / len(order))
        seconds = time.perf_counter() - started
        record = Epoch(epoch, loss / source.rows, seconds, source.rows / max(seconds, 1e-9))
        current = engine.weights()
        if valid_source is not None:
            record.valid = evaluate(valid_labels, predict_source(current, valid_source))
            score = record.valid[cfg.stop_metric]
            if _better(cfg.stop_metric, score, best_score):
                best_score, best_epoch, since_best = score, epoch, 0
                best = current.copy()
            else:
                since_best += 1
        else:
            best_epoch = epoch
        history.append(record)
        progress.end_epoch(record)
        if valid_source is not None and since_best >= cfg.patience:
            break
    final = best if best is not None else engine.weights()
    return TrainResult(final, history, best_epoch, source.rows, engine_name, device, cfg)
