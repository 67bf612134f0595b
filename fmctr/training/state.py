"""The state of a training run that a checkpoint keeps: where it is, what it has
seen, and what validation has decided so far. Every part of the loop reads and
writes it; a checkpoint stores it and `--resume` continues from it exactly."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from fmctr.errors import BadModel
from fmctr.models.weights import FMWeights


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
        """From a checkpoint's arrays and its progress record, read as untrusted."""
        try:
            resume = cls(weights, optimizer, progress["epoch"], progress["block"], progress["epoch_rng"],
                         float(progress["loss"]), progress["rows_done"], [Epoch(**e) for e in progress["history"]],
                         best, progress["best_score"], progress["best_epoch"], progress["since_best"],
                         float(progress.get("lr_scale", 1.0)), progress.get("since_check", 0))
            np.random.default_rng().bit_generator.state = resume.epoch_rng
        except (KeyError, TypeError, ValueError) as e:
            raise BadModel(f"malformed checkpoint progress ({type(e).__name__}: {e})") from None
        counts = (resume.epoch, resume.block, resume.rows_done, resume.best_epoch, resume.since_best, resume.since_check,
                  *(e.epoch for e in resume.history))
        numbers = (resume.best_score, *(x for e in resume.history for x in (e.train_logloss, e.seconds, e.rows_per_s, e.lr)))
        if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts) or resume.epoch < 1 \
                or not all(x is None or isinstance(x, (int, float)) and not isinstance(x, bool) for x in numbers) \
                or not (math.isfinite(resume.loss) and resume.lr_scale > 0):
            raise BadModel("malformed checkpoint progress (epoch from 1, block and rows from 0, a finite loss)")
        return resume

    def check(self, epochs: int, rows: int) -> None:
        """Refuse progress beyond the run it resumes: an epoch past the last, more
        blocks or rows done than the epoch has."""
        if self.epoch > epochs or self.block > rows or self.rows_done > rows:
            raise BadModel(f"checkpoint progress (epoch {self.epoch}, block {self.block}, {self.rows_done:,} rows) "
                           f"is beyond the run it resumes ({epochs} epochs of {rows:,} rows)")
