"""Checkpoints: a stop request between blocks writes one and ends the run; a timer
writes one every so many seconds. The loop calls `before_block` and `after_block`."""

from __future__ import annotations

import time
from collections.abc import Callable

from fmctr.errors import Interrupted
from fmctr.training.state import Resume


class Checkpoints:
    def __init__(self, write: Callable[[Resume], None] | None = None, *,
                 should_stop: Callable[[], bool] | None = None, every: float | None = None):
        self.write = write
        self.should_stop = should_stop
        self.every = every if write is not None else None
        self.last = time.monotonic()

    def _save(self, state: Resume, engine, epoch: int, block: int, epoch_rng: dict, loss: float, rows_done: int):
        state.weights, state.optimizer = engine.weights(), engine.optimizer_state()
        state.epoch, state.block, state.epoch_rng, state.loss, state.rows_done = epoch, block, epoch_rng, loss, rows_done
        self.write(state)

    def before_block(self, state: Resume, engine, epoch: int, block: int, epoch_rng: dict, loss: float,
                     rows_done: int, epoch_rows: int) -> None:
        """On a stop request: write a checkpoint (blocks done so far) and raise Interrupted."""
        if self.should_stop is not None and self.should_stop():
            if self.write is not None:
                self._save(state, engine, epoch, block, epoch_rng, loss, rows_done)
            raise Interrupted(epoch, rows_done, epoch_rows)

    def after_block(self, state: Resume, engine, epoch: int, block: int, epoch_rng: dict, loss: float,
                    rows_done: int) -> None:
        """Every `every` seconds: write a checkpoint that resumes after this block."""
        if self.every is not None and time.monotonic() - self.last >= self.every:
            self._save(state, engine, epoch, block + 1, epoch_rng, loss, rows_done)
            self.last = time.monotonic()
