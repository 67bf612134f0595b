"""The numba top-K of fmctr.models.retrieval for large catalogues: scores computed a
tile at a time in registers and folded at once into each user's running top K, a
min-heap whose root is the K-th best so far; a tile is looked at score by score only
when its maximum beats that. Items are ordered by (score, then lower position first),
so the result does not depend on the block sizes or the number of threads.

One level of threads (numba's), no BLAS: a BLAS product per block and a numba pass
over it fought over the cores (OpenBLAS's threads spin after each call) and ran at
half the speed of the product alone; fused, nothing is stored and the pass is free.
"""

from __future__ import annotations

import numba
import numpy as np

# fastmath flags that let LLVM vectorise a maximum (no NaN) while keeping -inf, which
# marks excluded items and empty heap places.
VECTOR = {"nnan", "nsz", "reassoc", "contract", "arcp"}


@numba.njit(cache=True, nogil=True, error_model="numpy", fastmath=VECTOR)
def _run_max(row, j0, j1):
    top = row[j0]
    for j in range(j0 + 1, j1):
        top = max(top, row[j])
    return top


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


GROUP = 4  # users scored together, so that each item tile is loaded once for them
TILE = 256  # items per tile: GROUP x TILE running sums stay in registers and L1


@numba.njit(cache=True, nogil=True, error_model="numpy", fastmath=VECTOR)
def _tile_scores(users, items_t, u0, g, j0, t, acc) -> None:
    """acc[:g, :t] = users[u0:u0+g] . items_t[:, j0:j0+t] (float32)."""
    d = users.shape[1]
    for a in range(g):
        row = acc[a]
        for j in range(t):
            row[j] = 0.0
        for f in range(d):
            uf = users[u0 + a, f]
            column = items_t[f, j0 : j0 + t]
            for j in range(t):
                row[j] += uf * column[j]


@numba.njit(cache=True, nogil=True)
def _excluded(ex_items, lo, hi, item) -> bool:
    """Whether `item` is in the sorted ex_items[lo:hi] (binary search)."""
    end = hi
    while lo < hi:
        mid = (lo + hi) // 2
        if ex_items[mid] < item:
            lo = mid + 1
        else:
            hi = mid
    return lo < end and ex_items[lo] == item


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _fold_tile(acc, a, t, j0, heap_s, heap_i, ex_items, ex_lo, ex_hi) -> None:
    least = heap_s[0]
    if not _run_max(acc[a], 0, t) > least:
        return
    for j in range(t):
        if acc[a, j] > least and not _excluded(ex_items, ex_lo, ex_hi, j0 + j):
            _replace_root(heap_s, heap_i, acc[a, j], j0 + j)
            least = heap_s[0]


@numba.njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def fused_top_k(users, items_t, item_block, best_s, best_i, ex_offsets, ex_items, chunks) -> None:
    """Every user's top K (heaps in best_s/best_i) over items_t (dim, m), computing
    each score in registers and never storing a block: users are split into `chunks`
    (one per thread); each streams the items block by block (item_block items, kept in
    cache) and scores its users GROUP at a time, TILE items at a time. Exclusions:
    ex_items[ex_offsets[u]:ex_offsets[u+1]] sorted."""
    n = users.shape[0]
    m = items_t.shape[1]
    per = (n + chunks - 1) // chunks
    for c in numba.prange(chunks):
        acc = np.empty((GROUP, TILE), np.float32)
        lo, hi = c * per, min(n, (c + 1) * per)
        for b0 in range(0, m, item_block):
            b1 = min(b0 + item_block, m)
            for u0 in range(lo, hi, GROUP):
                g = min(GROUP, hi - u0)
                for j0 in range(b0, b1, TILE):
                    t = min(TILE, b1 - j0)
                    _tile_scores(users, items_t, u0, g, j0, t, acc)
                    for a in range(g):
                        u = u0 + a
                        _fold_tile(acc, a, t, j0, best_s[u], best_i[u], ex_items, ex_offsets[u], ex_offsets[u + 1])
