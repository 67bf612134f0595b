"""Exact top-K by maximum inner product, blocked: users block x items block; never a
users x items matrix in memory. Each user keeps a running top K. Two ways, with the
same results up to ties:

- small catalogues (numpy only, so nothing waits for numba to load): a block's scores
  by one float32 BLAS product (user_block x item_block), folded into the running top
  K with argpartition;
- large ones (`scan`: fmctr.models.topk_kernel, numba, every core): each thread
  streams the items in blocks that stay in cache and scores its users against them
  four users x a tile of items at a time, folding each tile into the user's heap -
  only when one of its scores beats the user's K-th best so far, which after the
  first blocks it almost never does. Memory: the heaps and a transposed copy of the item vectors.

Ties go to the lower item position (the scan; argpartition leaves them to chance).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# From this many items, or scores in all, the numba kernel (about 7x argpartition's
# throughput here) pays for its load time (0.3 s to a few seconds on a busy machine).
SCAN_FROM = 1 << 16
SCAN_FROM_SCORES = 1 << 26
USER_BLOCK = 512
ITEM_BLOCK = 8192
SCAN_ITEM_BLOCK = 16384  # the kernel's items per block (dim 16: 1.1 MB, in a core's L2 cache)


@dataclass
class Exclusions:
    """Per user (in the order of the users' vectors), item positions to leave out: CSR,
    `items[offsets[u]:offsets[u+1]]`."""

    offsets: np.ndarray  # int64, n + 1
    items: np.ndarray  # int64

    @classmethod
    def none(cls, users: int) -> Exclusions:
        return cls(np.zeros(users + 1, np.int64), np.zeros(0, np.int64))

    @classmethod
    def from_lists(cls, lists: list) -> Exclusions:
        offsets = np.zeros(len(lists) + 1, np.int64)
        np.cumsum([len(x) for x in lists], out=offsets[1:])
        items = np.concatenate([np.asarray(x, np.int64) for x in lists]) if lists else np.zeros(0, np.int64)
        return cls(offsets, items)

    def block(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        """(user row within the block, item position) of users lo..hi-1's exclusions."""
        start, stop = self.offsets[lo], self.offsets[hi]
        counts = np.diff(self.offsets[lo : hi + 1])
        return np.repeat(np.arange(hi - lo), counts), self.items[start:stop]


def top_k(users: np.ndarray, items: np.ndarray, k: int, *, exclude: Exclusions | None = None,
          user_block: int = USER_BLOCK, item_block: int = ITEM_BLOCK, scan: bool | None = None
          ) -> tuple[np.ndarray, np.ndarray]:
    """The K items of largest <user, item> for every user: (positions (n, K) int64,
    scores (n, K) float32), best first. K is at most the number of items; a user with
    fewer candidates (exclusions) has -1 positions and -inf scores at the end.
    `scan` forces the numba kernel (True) or BLAS blocks and argpartition (False);
    None chooses by size (SCAN_FROM, SCAN_FROM_SCORES)."""
    n, m = len(users), len(items)
    k = min(k, m)
    positions = np.full((n, k), -1, np.int64)
    scores = np.full((n, k), -np.inf, np.float32)
    if k == 0 or n == 0:
        return positions, scores
    users = np.ascontiguousarray(users, np.float32)
    items = np.ascontiguousarray(items, np.float32)
    exclude = exclude or Exclusions.none(n)
    if (m >= SCAN_FROM or n * m >= SCAN_FROM_SCORES) if scan is None else scan:
        _scan(users, items, exclude, scores, positions)
    else:
        _blocks(users, items, exclude, scores, positions, user_block, item_block)
    for lo in range(0, n, user_block):
        _sort(scores[lo : lo + user_block], positions[lo : lo + user_block])
    return positions, scores


def _blocks(users, items, exclude: Exclusions, scores, positions, user_block: int, item_block: int) -> None:
    n, m = len(users), len(items)
    buffer = np.empty(min(user_block, n) * min(item_block, m), np.float32)
    for lo in range(0, n, user_block):
        hi = min(lo + user_block, n)
        rows, excluded = exclude.block(lo, hi)
        for start in range(0, m, item_block):
            stop = min(start + item_block, m)
            block = buffer[: (hi - lo) * (stop - start)].reshape(hi - lo, stop - start)
            np.matmul(users[lo:hi], items[start:stop].T, out=block)
            inside = (excluded >= start) & (excluded < stop)
            block[rows[inside], excluded[inside] - start] = -np.inf
            _merge(block, start, scores[lo:hi], positions[lo:hi])


def _scan(users, items, exclude: Exclusions, scores, positions) -> None:
    import numba

    from fmctr.models.topk_kernel import GROUP, fused_top_k

    n = len(users)
    padded = -n % GROUP  # the kernel scores whole groups of users: zero users fill the last
    users = np.concatenate([users, np.zeros((padded, users.shape[1]), np.float32)]) if padded else users
    best_s = np.concatenate([scores, np.full((padded, scores.shape[1]), -np.inf, np.float32)]) if padded else scores
    best_i = np.concatenate([positions, np.full((padded, positions.shape[1]), -1, np.int64)]) if padded else positions
    offsets = np.concatenate([exclude.offsets, np.repeat(exclude.offsets[-1:], padded)])
    owner = np.repeat(np.arange(n), np.diff(exclude.offsets))
    order = np.lexsort((exclude.items, owner))  # the kernel searches each user's exclusions
    chunks = max(1, min(len(users) // GROUP, 4 * numba.get_num_threads()))
    fused_top_k(users, np.ascontiguousarray(items.T), SCAN_ITEM_BLOCK, best_s, best_i, offsets,
                np.ascontiguousarray(exclude.items[order]), chunks)
    if padded:
        scores[:], positions[:] = best_s[:n], best_i[:n]


def _merge(block: np.ndarray, start: int, best_s: np.ndarray, best_i: np.ndarray) -> None:
    """Fold one block's scores into the running top K (in place), by argpartition."""
    k = best_s.shape[1]
    if block.shape[1] > k:
        part = np.argpartition(block, block.shape[1] - k, axis=1)[:, -k:]
    else:
        part = np.broadcast_to(np.arange(block.shape[1]), block.shape)
    cand_s = np.concatenate([best_s, np.take_along_axis(block, part, axis=1)], axis=1)
    cand_i = np.concatenate([best_i, part + start], axis=1)
    cand_s[cand_i < 0] = -np.inf
    keep = np.argpartition(cand_s, cand_s.shape[1] - k, axis=1)[:, -k:]
    best_s[:] = np.take_along_axis(cand_s, keep, axis=1)
    best_i[:] = np.take_along_axis(cand_i, keep, axis=1)
    best_i[np.isneginf(best_s)] = -1  # excluded items never count as found


def _sort(best_s: np.ndarray, best_i: np.ndarray) -> None:
    """Each row best first; ties by item position; the empty (-1) places last."""
    empty = best_i < 0
    order = np.lexsort((np.where(empty, np.iinfo(np.int64).max, best_i), -best_s.astype(np.float64)), axis=1)
    best_s[:] = np.take_along_axis(best_s, order, axis=1)
    best_i[:] = np.take_along_axis(best_i, order, axis=1)
