"""The numba scan of fmctr.models.retrieval: fold a block of scores into each user's
running top K, a min-heap whose root is the K-th best so far. Items are ordered by
(score, then lower position first), so the result does not depend on the block sizes.
"""

from __future__ import annotations

import numba

RUN = 64  # scores whose maximum is compared with the K-th best at once


@numba.njit(cache=True, nogil=True, inline="always")
def _worse(s1, i1, s2, i2) -> bool:
    """Whether (s1, i1) ranks below (s2, i2): a lower score, or the same at a later position."""
    return s1 < s2 or (s1 == s2 and i1 > i2)


@numba.njit(cache=True, nogil=True)
def _replace_root(heap_s, heap_i, s, i) -> None:
    """Put (s, i) in place of the heap's worst and sift it down."""
    k = len(heap_s)
    at = 0
    while True:
        child = 2 * at + 1
        if child >= k:
            break
        if child + 1 < k and _worse(heap_s[child + 1], heap_i[child + 1], heap_s[child], heap_i[child]):
            child += 1
        if not _worse(heap_s[child], heap_i[child], s, i):
            break
        heap_s[at], heap_i[at] = heap_s[child], heap_i[child]
        at = child
    heap_s[at], heap_i[at] = s, i


@numba.njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def scan_block(block, start, best_s, best_i) -> None:
    """block (users, items) float32 scores of items start.. ; best_s/best_i (users, K):
    each row a heap (unordered; -inf and -1 where empty)."""
    n, m = block.shape
    for r in numba.prange(n):
        row, heap_s, heap_i = block[r], best_s[r], best_i[r]
        least = heap_s[0]
        for j0 in range(0, m, RUN):
            j1 = min(j0 + RUN, m)
            top = row[j0]
            for j in range(j0 + 1, j1):
                top = max(top, row[j])
            if not top > least:
                continue
            for j in range(j0, j1):
                # (items come in rising positions, so one level with the root ranks below it)
                if row[j] > least:
                    _replace_root(heap_s, heap_i, row[j], start + j)
                    least = heap_s[0]
