"""Validation: score the validation rows, keep the best weights, decay the learning
rate after a check that does not improve, and say when patience has run out."""

from __future__ import annotations

import math

import numpy as np

from fmctr.metrics import evaluate
from fmctr.training.state import Resume


def better(metric: str, new: float, old: float | None) -> bool:
    if old is None:
        return True
    if math.isnan(new):
        return False
    return new < old if metric == "logloss" else new > old


class Validation:
    def __init__(self, source, score, cfg, progress):
        """`score(weights, source)` gives the probabilities of every row of `source`; a
        source with a `measure(weights)` (fmctr.training.ranked) measures itself."""
        self.source = source
        self.measure = getattr(source, "measure", None)
        self.labels = None if self.measure else source.labels()
        self.score = score
        self.cfg = cfg
        self.progress = progress

    def check(self, state: Resume, engine, epoch: int, rows_done: int, within_epoch: bool) -> tuple[dict, dict]:
        """One check; returns the metrics and the check's record (the metrics with
        where the check fell, the rate after it, and whether it was the best so far)."""
        cfg = self.cfg
        current = engine.scoring_weights()
        metrics = self.measure(current) if self.measure else evaluate(self.labels, self.score(current, self.source))
        score = metrics[cfg.stop_metric]
        if better(cfg.stop_metric, score, state.best_score):
            state.best_score, state.best_epoch, state.since_best = score, epoch, 0
            state.best = engine.snapshot(state.best)
        else:
            state.since_best += 1
            state.lr_scale *= cfg.lr_decay
            engine.set_lr(cfg.lr * state.lr_scale)
        state.since_check = 0
        check = {**metrics, "epoch": epoch, "rows": rows_done, "lr": engine.lr, "best": state.since_best == 0}
        self.progress.validated(check, within_epoch)
        return metrics, check

    def out_of_patience(self, state: Resume) -> bool:
        return state.since_best >= self.cfg.patience


def scores(kind, weights, source) -> np.ndarray:
    """Probabilities for every row of a source, in order, on the CPU."""
    return np.concatenate([1.0 / (1.0 + np.exp(-kind.logits(weights, block))) for block in source.blocks()])
