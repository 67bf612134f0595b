"""The parameters of a Factorization Machine, as plain arrays every engine shares.

    logit(x) = bias + sum_i w_i x_i + 1/2 sum_f [(sum_i v_if x_i)^2 - sum_i v_if^2 x_i^2]

`dim = 0` leaves only bias and linear weights: logistic regression.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


@dataclass
class FMWeights:
    bias: np.ndarray  # (1,) float32
    linear: np.ndarray  # (n,) float32
    factors: np.ndarray  # (n, dim) float32
    # Where known, the only rows that can be non-zero (those a run from zero met), and
    # the only ones of its optimizer state: FM.merged then touches those rows alone.
    met: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def num_features(self) -> int:
        return len(self.linear)

    @property
    def dim(self) -> int:
        return self.factors.shape[1]

    @classmethod
    def zeros(cls, num_features: int, dim: int) -> FMWeights:
        """All zero. Training gives a row its initial factors (`initial_factors`) when
        it first meets the row, so a token never seen in training keeps exactly zero
        weight and contributes nothing at predict time."""
        return cls(np.zeros(1, np.float32), np.zeros(num_features, np.float32), np.zeros((num_features, dim), np.float32))

    def nonzero_rows(self) -> np.ndarray:
        """The rows whose linear weight or factors are not zero (int64, sorted): among
        `met` where known, else over the whole table."""
        if self.met is None:
            return np.flatnonzero((self.linear != 0) | np.any(self.factors != 0, axis=1)).astype(np.int64)
        met = np.asarray(self.met, np.int64)
        return met[(self.linear[met] != 0) | np.any(self.factors[met] != 0, axis=1)]

    def copy(self) -> FMWeights:
        return FMWeights(self.bias.copy(), self.linear.copy(), self.factors.copy())


MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's output function on uint64 arrays (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def initial_factors(rows: np.ndarray, dim: int, *, seed: int, std: float) -> np.ndarray:
    """Initial factors of the given rows: uniform on [-sqrt(3) std, sqrt(3) std] (mean 0,
    standard deviation std), drawn from a counter-based hash of (seed, row, f), so a
    row's start does not depend on when or where it is first met. Uniform, not
    Gaussian: no logarithm or cosine per value when a row is first met.
    fmctr.models.kernel computes the same values one at a time."""
    rows = np.asarray(rows, dtype=np.uint64)[:, None]
    f = np.arange(dim, dtype=np.uint64)[None, :]
    with np.errstate(over="ignore"):
        h = splitmix64(splitmix64(splitmix64(np.uint64(seed)) + rows) + f)
    u = (h >> np.uint64(11)).astype(np.float64) * 2.0**-53
    return ((2.0 * u - 1.0) * (np.sqrt(3.0) * std)).astype(np.float32)


def pack_seen(seen: np.ndarray) -> np.ndarray:
    """The training kernels' form of "which features were met": a bitmap, bit i & 7
    of byte i >> 3 (fmctr.models.kernel._first_meeting), from a bool per feature."""
    return np.packbits(seen, bitorder="little")


def unpack_seen(bits: np.ndarray, n: int) -> np.ndarray:
    """A bool per feature (what model files store) from pack_seen's bitmap."""
    return np.unpackbits(bits, count=n, bitorder="little").view(np.bool_)
