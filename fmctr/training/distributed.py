"""Data-parallel training over torch.distributed (launched by torchrun).

Each rank trains on its own share of the data with its usual engine and, every
`sync_rows` rows, the ranks average the rows of the model (weights and optimizer
state) that any of them touched since the last sync: the union of touched row ids
is gathered, those rows are summed with one all_reduce and divided by the number of
ranks. Sparse CTR models touch few rows between syncs, so a sync moves far less
than the whole table. gloo serves CPUs, NCCL GPUs.
"""

from __future__ import annotations

import os

import numpy as np

from fmctr.errors import BadOptions


def launched() -> bool:
    """Whether this process was started by torchrun (or the same environment)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def local_world() -> int:
    return int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))


class Replicas:
    """This process's place among the ranks, and the collectives training needs."""

    def __init__(self, device: str):
        try:
            import torch
            import torch.distributed as dist
        except ImportError:
            raise BadOptions("distributed training needs PyTorch: pip install 'fmctr[torch]'") from None
        self.torch, self.dist = torch, dist
        if not dist.is_initialized():
            backend = "nccl" if device.startswith("cuda") else "gloo"
            dist.init_process_group(backend=backend)
        self.rank = dist.get_rank()
        self.world = dist.get_world_size()
        self.device = device if device.startswith("cuda") else "cpu"

    def close(self) -> None:
        if self.dist.is_initialized():
            self.dist.destroy_process_group()

    def _tensor(self, values) -> object:
        return self.torch.as_tensor(values).to(self.device)

    def sum(self, values: list[float]) -> list[float]:
        t = self._tensor(np.asarray(values, np.float64))
        self.dist.all_reduce(t)
        return t.cpu().tolist()

    def max(self, value: int) -> int:
        t = self._tensor(np.asarray([value], np.int64))
        self.dist.all_reduce(t, op=self.dist.ReduceOp.MAX)
        return int(t.item())

    def union(self, ids: np.ndarray) -> np.ndarray:
        """The sorted union of every rank's row ids."""
        torch = self.torch
        size = self._tensor(np.asarray([len(ids)], np.int64))
        sizes = [torch.zeros_like(size) for _ in range(self.world)]
        self.dist.all_gather(sizes, size)
        longest = max(int(s.item()) for s in sizes)
        padded = np.full(longest, -1, np.int64)
        padded[: len(ids)] = ids
        gathered = [torch.zeros(longest, dtype=torch.int64, device=self.device) for _ in range(self.world)]
        self.dist.all_gather(gathered, self._tensor(padded))
        every = np.concatenate([g.cpu().numpy() for g in gathered])
        return np.unique(every[every >= 0])

    def average_rows(self, rows: np.ndarray, tables: list, scalars: list) -> None:
        """Average rows `rows` of every table (torch tensors or numpy arrays indexed by
        row, changed in place) and the scalar tensors/arrays, across the ranks."""
        torch = self.torch
        views = [torch.from_numpy(t) if isinstance(t, np.ndarray) else t for t in tables]
        index = torch.from_numpy(rows).to(views[0].device) if len(views) else None
        pieces = [v.index_select(0, index).reshape(len(rows), -1) for v in views]
        widths = [p.shape[1] for p in pieces]
        flat = [torch.from_numpy(s) if isinstance(s, np.ndarray) else s for s in scalars]
        packed = torch.cat([p.reshape(-1) for p in pieces] + [f.reshape(-1) for f in flat]).to(self.device)
        self.dist.all_reduce(packed)
        packed /= self.world
        at = 0
        for view, width in zip(views, widths):
            chunk = packed[at : at + len(rows) * width].reshape(len(rows), *view.shape[1:]).to(view.device)
            view.index_copy_(0, index, chunk)
            at += len(rows) * width
        for f in flat:
            f.copy_(packed[at : at + f.numel()].reshape(f.shape).to(f.device))
            at += f.numel()


class ReplicaSync:
    """The loop's part for data-parallel training: every rank trains pieces of at most
    `rows` rows and, after each, the ranks average the model rows any of them touched.
    A rank out of rows keeps joining the collectives until every rank is."""

    def __init__(self, replicas: Replicas, rows: int):
        self.replicas = replicas
        self.rows = rows

    def total(self, values: list[float]) -> list[float]:
        return self.replicas.sum(values)

    def any(self, flag: bool) -> bool:
        return bool(self.replicas.max(flag))

    def after_piece(self, engine, piece) -> None:
        if piece is not None:
            block, order = piece
            touched = np.unique(block.take(order).indices).astype(np.int64)
        else:
            touched = np.zeros(0, np.int64)
        engine.average(self.replicas, self.replicas.union(touched))
