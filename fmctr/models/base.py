"""The model interface: what the training loop, the scorers and the model file ask of a
model. The FM (fmctr.models.fm) is one implementation; a model of another kind (user
and item towers, a field-aware FM) implements the same two protocols and registers
itself in KINDS, and neither the loop nor the CLI changes.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


class Engine(Protocol):
    """Trains one model's weights in place, block by block."""

    lr: float

    def prepare(self, note) -> None:
        """Get ready to train (compile kernels) before the first epoch's clock starts;
        `note(message)` tells the user about anything slow."""

    def train(self, rows, order: np.ndarray) -> float:
        """One pass over rows[order] in mini-batches; the summed logloss."""

    def weights(self):
        """The weights as they are now, in arrays of their own (the caller may keep them)."""

    def scoring_weights(self):
        """The weights as they are now, for scoring at once: valid until the engine's next
        call (an engine may reuse the arrays)."""

    def snapshot(self, previous=None):
        """A copy of the weights to keep (the best so far); `previous`, an earlier
        snapshot of this engine that is no longer needed, may be overwritten to make it."""

    def weights_finite(self) -> bool: ...

    def set_lr(self, lr: float) -> None: ...

    def set_counts(self, counts: np.ndarray, rows: int, met: np.ndarray | None = None) -> None:
        """Feature counts over the training rows, for the --l2-all penalty; `met`, where
        known, the features counted (those not zero)."""

    def meet_in_advance(self, counts: np.ndarray, met: np.ndarray | None = None) -> None:
        """Given the feature counts of every row it will train on (`met`, where known,
        those not zero), give those features their initial values now, before the
        first epoch (or do nothing)."""

    def first_touch(self, rows: np.ndarray) -> None:
        """Give those of the rows never trained before their initial values now (data-
        parallel ranks do this for every rank's rows before a piece)."""

    def replicated(self) -> tuple[list, list]:
        """What data-parallel ranks keep equal, live (not copies; numpy arrays or torch
        tensors): the tables indexed by model row (weights and optimizer state) and the
        scalars beside them (the bias and its state)."""

    def optimizer_state(self) -> dict: ...


class ModelKind(Protocol):
    """A kind of model: its weights, scoring, training engines and file sections."""

    name: str
    sections_names: tuple[str, ...]  # the model file's tensors of the weights
    per_index: tuple[str, ...]  # those with one row per hash index (stored only where trained)

    def zeros(self, num_features: int, dim: int):
        """Untrained weights over a hash space of num_features indices."""

    def logits(self, weights, rows) -> np.ndarray:
        """(n,) logits of hashed rows."""

    def engine(self, weights, cfg, *, engine: str, device: str, threads: int, optimizer: dict | None,
               touched: int | None = None) -> Engine:
        """An engine training `weights`; `touched`, where known, how many features the
        training rows hold (an engine may lay its tables out for a few)."""

    def scorer(self, weights, *, engine: str, device: str):
        """A callable rows -> (n,) click probabilities on the given engine."""

    def shapes(self, rows: int, dim: int) -> dict[str, tuple[int, ...]]:
        """Each section's shape in a model file that stores `rows` indices (float32)."""

    def sections(self, weights) -> dict[str, np.ndarray]:
        """The weights as named arrays for the model file (per-index ones over all indices)."""

    def from_sections(self, sections: dict[str, np.ndarray]):
        """Weights from the model file's arrays (per-index ones spread over all indices)."""

    def merged(self, weights: list, optimizers: list[dict | None]) -> tuple[object, dict | None]:
        """One model whose logit is the mean of the given models' logits, with their
        optimizer states joined to match (None if any is None)."""


KINDS: dict[str, ModelKind] = {}


def register(kind: ModelKind) -> ModelKind:
    KINDS[kind.name] = kind
    return kind
