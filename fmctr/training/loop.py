"""Training: epochs of shuffled pieces on an engine. The loop only calls its parts -
the schedule (fmctr.training.schedule), validation with early stopping and rate decay
(fmctr.training.validation), checkpoints (fmctr.training.checkpoints), replica syncs
(fmctr.training.distributed.ReplicaSync) and progress - and the model kind's engine
(fmctr.models.base.Engine) does the arithmetic.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from fmctr.datasets.batches import MemoryRows, RowSource
from fmctr.errors import BadOptions
from fmctr.hashing.tokens import Rows
from fmctr.models.kinds import kind_of
from fmctr.models.runtime import resolve_device, set_threads
from fmctr.training.checkpoints import Checkpoints
from fmctr.training.config import TrainConfig
from fmctr.training.guards import check_loss, check_memory, diverged
from fmctr.training.schedule import epoch_pieces
from fmctr.training.state import Epoch, Resume
from fmctr.training.validation import Validation, scores


@dataclass
class TrainResult:
    weights: object  # the model kind's weights (FMWeights for the FM)
    history: list[Epoch]
    best_epoch: int
    rows: int
    engine: str
    device: str
    config: TrainConfig  # with every default resolved
    optimizer: dict | None = None  # the optimizer's state after the last epoch
    notes: dict | None = None  # what a composite run records beside (fmctr.training.blend)


class NullProgress:
    """Progress callbacks that do nothing: the core is silent unless asked."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None: ...

    def note(self, message: str) -> None: ...

    def start_epoch(self, epoch: int, epochs: int, rows: int) -> None: ...

    def advance(self, rows: int, loss: float) -> None: ...

    def validated(self, metrics: dict, within_epoch: bool) -> None: ...

    def end_epoch(self, record: Epoch) -> None: ...


@dataclass
class Start:
    """Weights (and optimizer state) to continue from: a warm start."""

    weights: object
    optimizer: dict | None = None


@dataclass
class Run:
    """One training run's fixed parts, built once by `_begin`."""

    cfg: TrainConfig
    source: RowSource
    engine: object
    state: Resume
    rng: np.random.Generator
    progress: object
    checkpoints: Checkpoints
    validation: Validation | None = None
    sync: object = None
    piece_rows: int | None = None
    every: int | None = None  # rows between validation checks within an epoch
    total_rows: int = 0
    on_epoch: object = None
    stopped: bool = field(default=False)


def train(rows: Rows | RowSource, cfg: TrainConfig, *, bits: int, valid: Rows | RowSource | None = None,
          progress=None, start: Start | None = None, resume: Resume | None = None,
          checkpoints: Checkpoints | None = None, sync=None, on_epoch=None) -> TrainResult:
    """Train a model on hashed rows (in memory or streamed from a dataset). With
    `valid`, keep the best epoch by `cfg.stop_metric` and stop after `cfg.patience`
    checks without improvement.

    `start` warm-starts from weights; `resume` continues an interrupted run exactly;
    `checkpoints` writes checkpoints on a stop request or a timer. With `sync`
    (fmctr.training.distributed.ReplicaSync) this process is one rank of a
    data-parallel run and `rows` is its share. `on_epoch(record, weights)` is called
    after each epoch with that epoch's weights (e.g. to score a test set per epoch)."""
    run = _begin(rows, cfg, bits=bits, valid=valid, progress=progress, start=start, resume=resume,
                 checkpoints=checkpoints, sync=sync, on_epoch=on_epoch)
    first_epoch = run.state.epoch
    for epoch in range(first_epoch, run.cfg.epochs + 1):
        _epoch(run, epoch, resumed=epoch == first_epoch)
        if run.stopped:
            break
    state, engine = run.state, run.engine
    final = state.best if state.best is not None else engine.weights()
    return TrainResult(final, state.history, state.best_epoch, run.total_rows, run.cfg.engine, run.cfg.device,
                       run.cfg, engine.optimizer_state())


def _as_source(rows: Rows | RowSource | None) -> RowSource | None:
    """Rows as a source; a source, or a ranking check (fmctr.training.ranked), as it is."""
    return MemoryRows(rows) if isinstance(rows, Rows) else rows


def _begin(rows, cfg: TrainConfig, *, bits, valid, progress, start, resume, checkpoints, sync, on_epoch) -> Run:
    """Resolve the configuration, build the engine and the parts, and set the state."""
    source, valid_source = _as_source(rows), _as_source(valid)
    cfg.check()
    engine_name, device = resolve_device(cfg.engine, cfg.device)
    total_rows = source.rows if sync is None else int(sync.total([source.rows])[0])
    if total_rows == 0:
        raise BadOptions("no training rows")
    cfg = cfg.resolved(engine=engine_name, device=device, rows=total_rows, validation=valid is not None)
    threads = set_threads(cfg.threads)
    kind = kind_of(cfg.kind)
    if resume is None and start is None:
        check_memory(bits, cfg.dim, cfg.optimizer, valid is not None)
    if resume is not None:
        weights, optimizer = resume.weights, resume.optimizer
    else:
        weights = start.weights.copy() if start is not None else kind.zeros(1 << bits, cfg.dim)
        optimizer = start.optimizer if start is not None else None
    # (few features, met from zero by this process alone: the engine lays its tables out for them)
    few = source.few_features(1 << bits) if resume is None and start is None and sync is None else None
    met = few[0] if few is not None else None
    counts = source.feature_counts(1 << bits) if cfg.l2_all_linear or cfg.l2_all_factors else None
    engine = kind.engine(weights, cfg, engine=engine_name, device=device, threads=threads, optimizer=optimizer,
                         touched=None if met is None else len(met))
    if counts is not None:
        engine.set_counts(counts, source.rows, met)
    progress = progress or NullProgress()
    engine.prepare(progress.note)
    rng = np.random.default_rng(cfg.seed)
    state = resume or Resume(weights, {}, 1, 0, rng.bit_generator.state, 0.0, 0, [])
    if resume is not None:
        resume.check(cfg.epochs, source.rows)
        rng.bit_generator.state = resume.epoch_rng
    validation = None
    if valid_source is not None:
        validation = Validation(valid_source, partial(scores, kind), cfg, progress)
    every = cfg.valid_every if validation is not None else None
    piece_rows = min([r for r in (sync.rows if sync is not None else None, every) if r], default=None)
    if counts is not None and piece_rows is None:
        # Nothing reads the weights within an epoch (a check would score the features
        # not yet trained with their initial factors instead of zero): meet them now.
        engine.meet_in_advance(counts, met)
    engine.set_lr(cfg.lr * state.lr_scale)
    return Run(cfg, source, engine, state, rng, progress, checkpoints or Checkpoints(), validation, sync,
               piece_rows, every, total_rows, on_epoch)


def _epoch(run: Run, epoch: int, *, resumed: bool) -> None:
    """One epoch: train its pieces, validate, record it in the history."""
    state, engine, progress = run.state, run.engine, run.progress
    epoch_rng = run.rng.bit_generator.state
    loss = state.loss if resumed else 0.0
    rows_before = state.rows_done if resumed else 0
    rows_done = rows_before
    checks, record_valid = [], None  # this epoch's checks; the last one's metrics
    progress.start_epoch(epoch, run.cfg.epochs, run.source.rows)
    if rows_done:
        progress.advance(rows_done, loss / rows_done)  # resumed mid-epoch
    if run.cfg.lr_by_epoch is not None:  # a refit replays the rates of the run that chose its epochs
        engine.set_lr(run.cfg.lr_by_epoch[epoch - 1])
    started = time.perf_counter()
    skip = state.block if resumed else 0
    if hasattr(run.source, "before_epoch"):  # (negatives mined with this epoch's weights)
        run.source.before_epoch(engine.weights())
    for number, piece in epoch_pieces(run.source, run.rng, piece_rows=run.piece_rows, skip=skip, sync=run.sync):
        run.checkpoints.before_block(state, engine, epoch, number, epoch_rng, loss, rows_done, run.source.rows)
        if run.sync is not None:
            run.sync.before_piece(engine, piece)
        if piece is not None:
            piece_loss = getattr(engine, getattr(run.source, "method", "train"))(*piece)
            if run.sync is None:  # (a data-parallel run checks at the end of the epoch, on every rank)
                check_loss(piece_loss, run.cfg, run.source, epoch, rows_done + len(piece[1]))
            loss += piece_loss
            rows_done += len(piece[1])
            state.since_check += len(piece[1])
            progress.advance(len(piece[1]), piece_loss / len(piece[1]))
        if run.sync is not None:
            run.sync.after_piece(engine, piece)
        if run.every is not None and _any(run, state.since_check >= run.every):
            record_valid, check = run.validation.check(state, engine, epoch, rows_done, True)
            checks.append(check)
            run.stopped = run.validation.out_of_patience(state)
        run.checkpoints.after_block(state, engine, epoch, number, epoch_rng, loss, rows_done)
        if run.stopped:
            break
    seconds = time.perf_counter() - started
    epoch_rows, total_done = rows_done - rows_before, rows_done
    if run.sync is not None:
        loss, epoch_rows, total_done = run.sync.total([loss, epoch_rows, total_done])
    if _any(run, not (math.isfinite(loss) and engine.weights_finite())):
        raise diverged(run.cfg, run.source, epoch, "the loss or the weights are NaN or infinite")
    record = Epoch(epoch, loss / max(total_done, 1), seconds, epoch_rows / max(seconds, 1e-9))
    if run.validation is not None and run.every is None:
        record_valid, check = run.validation.check(state, engine, epoch, rows_done, False)
        checks.append(check)
        run.stopped = run.validation.out_of_patience(state)
    elif run.validation is None:
        state.best_epoch = epoch
    record.valid = record_valid
    record.checks = checks if run.every is not None else None
    record.lr = engine.lr
    state.history.append(record)
    if run.on_epoch is not None:
        run.on_epoch(record, engine.weights())
    progress.end_epoch(record)


def _any(run: Run, flag: bool) -> bool:
    """Whether the flag holds here or, in a data-parallel run, on any rank."""
    return run.sync.any(flag) if run.sync is not None else flag
