"""The Factorization Machine as a model kind (fmctr.models.base.ModelKind):

    logit(x) = bias + sum_i w_i x_i + 1/2 sum_f [(sum_i v_if x_i)^2 - sum_i v_if^2 x_i^2]

Weights are fmctr.models.weights.FMWeights; scoring runs the fused CPU kernel or the
torch module; training runs fmctr.models.fm_engines; the model file holds `bias` and,
per index, `linear` and `factors`.
"""

from __future__ import annotations

from functools import partial

import numpy as np

from fmctr.hashing.tokens import Rows
from fmctr.models import scores
from fmctr.models.base import register
from fmctr.models.runtime import _torch
from fmctr.models.weights import FMWeights
from fmctr.tables import aligned_zeros, read_only, sparse_zeros


def logits(w: FMWeights, rows: Rows) -> np.ndarray:
    """FM logits of CSR rows with the CPU training kernel's arithmetic (float32)."""
    from fmctr.models import kernel

    out = np.empty(len(rows), np.float64)
    kernel.fm_logits(*map(read_only, (rows.indices, rows.values, rows.offsets)), w.bias, w.linear, w.factors, out)
    return out


def probabilities(w: FMWeights, rows: Rows) -> np.ndarray:
    """Click probabilities for predict and eval (fmctr.models.scores: float64, the same
    bits for a row in any batch)."""
    z = scores.logits(w.bias, w.linear, w.factors, rows.indices, rows.values, rows.offsets)
    with np.errstate(over="ignore"):  # exp(-z) of a very negative logit is inf: probability 0
        return 1.0 / (1.0 + np.exp(-z))


class TorchScorer:
    """Click probabilities from the torch module (on a GPU, or forced on a CPU)."""

    def __init__(self, w: FMWeights, device: str):
        from fmctr.models.torch_fm import FactorizationMachine

        self.torch = _torch()
        self.device = device
        self.model = FactorizationMachine.from_weights(w, device).eval()

    def __call__(self, rows: Rows) -> np.ndarray:
        t = self.torch
        with t.no_grad():
            z = self.model(
                t.from_numpy(rows.indices.astype(np.int64)).to(self.device),
                t.from_numpy(np.ascontiguousarray(rows.offsets[:-1])).to(self.device),
                t.from_numpy(np.ascontiguousarray(rows.values)).to(self.device),
            )
        return t.sigmoid(z.double()).cpu().numpy()


class FM:
    name = "fm"
    sections_names = ("bias", "linear", "factors")
    per_index = ("linear", "factors")

    def zeros(self, num_features: int, dim: int) -> FMWeights:
        return FMWeights.zeros(num_features, dim)

    def logits(self, weights: FMWeights, rows: Rows) -> np.ndarray:
        return logits(weights, rows)

    def engine(self, weights: FMWeights, cfg, *, engine: str, device: str, threads: int, optimizer: dict | None,
               touched: int | None = None):
        from fmctr.models.fm_engines import CpuEngine, TorchEngine

        if engine == "cpu":
            return CpuEngine(weights, cfg, threads, optimizer, touched)
        return TorchEngine(weights, cfg, device, optimizer)

    def scorer(self, weights: FMWeights, *, engine: str, device: str):
        if engine == "torch":
            return TorchScorer(weights, device)
        return lambda rows: probabilities(weights, rows)

    def shapes(self, rows: int, dim: int) -> dict[str, tuple[int, ...]]:
        return {"bias": (1,), "linear": (rows,), "factors": (rows, dim)}

    def sections(self, weights: FMWeights) -> dict[str, np.ndarray]:
        return {"bias": weights.bias, "linear": weights.linear, "factors": weights.factors}

    def from_sections(self, sections: dict[str, np.ndarray]) -> FMWeights:
        return FMWeights(sections["bias"], sections["linear"], sections["factors"])

    def merged(self, weights: list[FMWeights], optimizers: list[dict | None]) -> tuple[FMWeights, dict | None]:
        """One FM whose logit is the mean of the given FMs' logits: the bias and the
        linear weights averaged, the factors side by side, scaled by 1/sqrt(n) - over
        the joined factors a pair's <v_i, v_j> is the sum of the n models' - so its
        dim is n times theirs. Their optimizer states alike (averaged for the bias and
        the linear weights, side by side for the factors, the features any met). Where
        every FM knows the rows it met (FMWeights.met), only their union is combined:
        the others are zero in every table."""
        n = len(weights)
        rows = None
        if all(w.met is not None for w in weights):
            rows = np.unique(np.concatenate([w.met for w in weights]))
        mean = partial(_mean, rows=rows)
        factors = _side_by_side([w.factors for w in weights], rows, np.float32(1 / np.sqrt(n)))
        merged = FMWeights(_mean([w.bias for w in weights], None), mean([w.linear for w in weights]), factors, rows)
        if any(o is None for o in optimizers):
            return merged, None
        return merged, _merged_state(optimizers, mean, partial(_side_by_side, rows=rows))


def summed(weights: list[FMWeights], scales: list[float]) -> FMWeights:
    """One FM whose logit is sum_m scales[m] x the m-th FM's logit: the biases and the
    linear weights summed so, the factors side by side, each FM's times sqrt(scale)
    (over the joined factors a pair's <v_i, v_j> is then the scaled sum of the FMs'),
    so its dim is the sum of theirs. A blend of models trained apart (--loss blend)
    stays one FM, towers and all. Where every FM knows the rows it met, only their
    union is combined."""
    rows = np.unique(np.concatenate([w.met for w in weights])) if all(w.met is not None for w in weights) else None
    count, dims = weights[0].num_features, [w.dim for w in weights]
    at = slice(None) if rows is None else rows
    shape = (count, sum(dims))
    factors = aligned_zeros(shape) if rows is None else sparse_zeros(shape, len(rows))
    linear = np.zeros(count, np.float32) if rows is None else sparse_zeros((count,), len(rows))
    bias = np.zeros(1, np.float32)
    lo = 0
    for w, scale, dim in zip(weights, scales, dims):
        bias += np.float32(scale) * w.bias
        linear[at] += np.float32(scale) * w.linear[at]
        factors[at, lo : lo + dim] = w.factors[at] * np.float32(np.sqrt(scale))
        lo += dim
    return FMWeights(bias, linear, factors, rows)


def _mean(arrays: list[np.ndarray], rows: np.ndarray | None) -> np.ndarray:
    """The arrays' mean (float32), over `rows` alone when given (zero elsewhere)."""
    average = lambda parts: (sum(parts[1:], parts[0].copy()) / np.float32(len(parts))).astype(np.float32)  # noqa: E731
    if rows is None:
        return average(arrays)
    out = sparse_zeros(arrays[0].shape, len(rows))
    out[rows] = average([a[rows] for a in arrays])
    return out


def _side_by_side(arrays: list[np.ndarray], rows: np.ndarray | None, scale: np.float32 | None = None) -> np.ndarray:
    """The (features, k) arrays joined column-wise (each times `scale`), over `rows`
    alone when given (zero elsewhere)."""
    count, k = arrays[0].shape
    out = aligned_zeros((count, len(arrays) * k)) if rows is None else sparse_zeros((count, len(arrays) * k), len(rows))
    at = slice(None) if rows is None else rows
    for i, a in enumerate(arrays):
        out[at, i * k : (i + 1) * k] = a[at] if scale is None else a[at] * scale
    return out


def _merged_state(states: list[dict], mean, side_by_side) -> dict:
    """FM.merged's optimizer state (fmctr.models.fm_engines' optimizer_state); FTRL's
    linear state (z, n) averaged gives weights near, not at, the averaged ones."""
    first = dict(states[0])
    out = dict(first, bias=_mean([s["bias"] for s in states], None), seen=np.logical_or.reduce([s["seen"] for s in states]))
    for one, two in (("linear1", "linear2"), ("factors1", "factors2")):
        join = mean if one.startswith("linear") else side_by_side
        out[one] = join([s[one] for s in states])
        out[two] = out[one] if first[two] is first[one] else (None if first[two] is None else join([s[two] for s in states]))
    return out


register(FM())
