"""The torch engine: the FM as EmbeddingBag layers, and row-wise optimizers.

Serves GPUs and torch.distributed; on a CPU the fused kernels in fmctr.models.kernel are
faster and compute the same thing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fmctr.models.weights import FMWeights


def segment_sum(values: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Sum consecutive slices of `values` (nnz, d) that start at `offsets` -> (n, d)."""
    positions = torch.arange(values.shape[0], device=values.device)
    return F.embedding_bag(positions, values, offsets, mode="sum")


class FeaturesLinear(nn.Module):
    """bias + sum_i w_i x_i."""

    def __init__(self, num_features: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1))
        self.weight = nn.EmbeddingBag(num_features, 1, mode="sum", sparse=True)

    def forward(self, indices, offsets, values):
        """(nnz,), (n,), (nnz,) -> (n,)"""
        return self.bias + self.weight(indices, offsets, per_sample_weights=values).squeeze(1)


class FactorizationMachineLayer(nn.Module):
    """1/2 sum_f [(sum_i v_if x_i)^2 - sum_i v_if^2 x_i^2], the O(kn) pairwise term."""

    def __init__(self, num_features: int, dim: int):
        super().__init__()
        self.embedding = nn.EmbeddingBag(num_features, dim, mode="sum", sparse=True)

    def forward(self, indices, offsets, values):
        """(nnz,), (n,), (nnz,) -> (n,)"""
        sum_then_square = self.embedding(indices, offsets, per_sample_weights=values).pow(2).sum(1)
        vx = F.embedding(indices, self.embedding.weight, sparse=True) * values.unsqueeze(1)
        square_then_sum = segment_sum(vx.pow(2).sum(1, keepdim=True), offsets).squeeze(1)
        return 0.5 * (sum_then_square - square_then_sum)


class FactorizationMachine(nn.Module):
    """Rendle's FM: linear part plus pairwise factor interactions. Returns logits."""

    def __init__(self, num_features: int, dim: int):
        super().__init__()
        self.linear = FeaturesLinear(num_features)
        self.pairwise = FactorizationMachineLayer(num_features, dim) if dim > 0 else None

    def forward(self, indices, offsets, values):
        """(nnz,), (n,), (nnz,) -> (n,) logits"""
        logits = self.linear(indices, offsets, values)
        return logits if self.pairwise is None else logits + self.pairwise(indices, offsets, values)

    @classmethod
    def from_weights(cls, w: FMWeights, device: str = "cpu") -> FactorizationMachine:
        model = cls(w.num_features, w.dim)
        model.load_weights(w)
        return model.to(device)

    def load_weights(self, w: FMWeights) -> None:
        with torch.no_grad():
            self.linear.bias.copy_(torch.from_numpy(w.bias))
            self.linear.weight.weight.copy_(torch.from_numpy(w.linear).unsqueeze(1))
            if self.pairwise is not None:
                self.pairwise.embedding.weight.copy_(torch.from_numpy(w.factors))

    def to_weights(self) -> FMWeights:
        linear = self.linear.weight.weight.detach().cpu().squeeze(1).numpy().copy()
        if self.pairwise is None:
            factors = torch.zeros(len(linear), 0).numpy()
        else:
            factors = self.pairwise.embedding.weight.detach().cpu().numpy().copy()
        return FMWeights(self.linear.bias.detach().cpu().numpy().copy(), linear, factors)


class RowwiseOptimizer(torch.optim.Optimizer):
    """Adagrad or Adam that updates only the rows a batch touched (lazy, like the CPU
    kernel), with L2 added to the gradient of those rows only. Dense parameters (the
    bias) get the same update rule without L2. A group with `ftrl` set (alpha, beta,
    l1, l2) is updated by FTRL-Proximal instead, on the batch's summed gradient
    (`batch_rows` times the mean), as fmctr.models.kernel does for the linear weights."""

    def __init__(self, params, *, kind: str, lr: float, eps: float, initial_accumulator: float = 0.0, betas=(0.9, 0.999)):
        super().__init__(params, dict(lr=lr, eps=eps, betas=betas, l2=0.0, ftrl=None))
        self.initial_accumulator = initial_accumulator
        self.kind = kind
        self.step_count = 0
        self.batch_rows = 1

    @torch.no_grad()
    def init_state(self) -> None:
        """Create every parameter's state now (a step creates it otherwise)."""
        for group in self.param_groups:
            for p in group["params"]:
                if not self.state[p]:
                    self.state[p]["acc1"] = torch.zeros_like(p)
                    two = self.kind == "adam" or group["ftrl"] is not None
                    self.state[p]["acc2"] = torch.zeros_like(p) if two else self.state[p]["acc1"]

    @torch.no_grad()
    def step(self, closure=None):
        self.step_count += 1
        for group in self.param_groups:
            lr, eps, l2 = group["lr"], group["eps"], group["l2"]
            beta1, beta2 = group["betas"]
            c1 = 1 - beta1**self.step_count
            c2 = 1 - beta2**self.step_count
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["acc1"] = torch.zeros_like(p)  # Adagrad: sum of squared gradients
                    two = self.kind == "adam" or group["ftrl"] is not None
                    state["acc2"] = torch.zeros_like(p) if two else state["acc1"]
                if p.grad.is_sparse:
                    grad = p.grad.coalesce()
                    rows = grad.indices()[0]
                    g = grad.values() + (0.0 if group["ftrl"] is not None else l2) * p[rows]
                else:
                    rows = slice(None)
                    g = p.grad
                if group["ftrl"] is not None:
                    self._ftrl(p, state, rows, g * self.batch_rows, *group["ftrl"])
                elif self.kind != "adam":
                    acc = state["acc1"][rows] + g * g
                    state["acc1"][rows] = acc
                    p[rows] = p[rows] - lr * g / ((acc + self.initial_accumulator).sqrt() + eps)
                else:
                    m = beta1 * state["acc1"][rows] + (1 - beta1) * g
                    v = beta2 * state["acc2"][rows] + (1 - beta2) * g * g
                    state["acc1"][rows] = m
                    state["acc2"][rows] = v
                    p[rows] = p[rows] - lr * (m / c1) / ((v / c2).sqrt() + eps)

    @staticmethod
    def _ftrl(p, state, rows, g, alpha, beta, l1, l2) -> None:
        """FTRL-Proximal: acc1 holds z, acc2 holds n (see fmctr.kernel._ftrl_one)."""
        n_old = state["acc2"][rows]
        n_new = n_old + g * g
        sigma = (n_new.sqrt() - n_old.sqrt()) / alpha
        z = state["acc1"][rows] + g - sigma * p[rows]
        state["acc1"][rows] = z
        state["acc2"][rows] = n_new
        w = -(z - z.sign() * l1) / ((beta + n_new.sqrt()) / alpha + l2)
        p[rows] = torch.where(z.abs() <= l1, torch.zeros_like(w), w)
