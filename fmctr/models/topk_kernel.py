"""The numba top-K of fmctr.models.retrieval for large catalogues: scores computed a
tile at a time (4 users x TILE items) and folded at once into each user's running top
K, a min-heap whose root is the K-th best so far; a tile is looked at score by score
only when one of its scores beats that. Items are ordered by (score, then lower
position first).

Where the time goes is the tile: a score is a sum over d = dim + 1 factors. Taken a
factor at a time, every score is loaded and stored d times; `_add_eight` takes eight
factors at once with the 4 x 8 user values held in registers, so each item's eight
values are loaded once for four users and each score stored once per eight factors
(3x the throughput of a factor at a time here). The users are padded to a multiple of
4, so every user's score is computed by the same code whatever the threads.

One level of threads (numba's), no BLAS: a BLAS product per block and a numba pass
over it fought over the cores (OpenBLAS's threads spin after each call) and ran at
half the speed of the product alone; fused, nothing is stored and the pass is free.
"""

from __future__ import annotations

import numba
import numpy as np

# fastmath flags that let LLVM vectorise sums and comparisons (no NaN) while keeping
# -inf, which marks excluded items and empty heap places.
VECTOR = {"nnan", "nsz", "reassoc", "contract", "arcp"}


@numba.njit(cache=True, nogil=True, error_model="numpy", fastmath=VECTOR)
def _above(row, t, least) -> int:
    """How many of row[:t] beat `least` (a count, which LLVM vectorises; numba's max
    of floats it does not)."""
    n = 0
    for j in range(t):
        n += row[j] > least
    return n


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


GROUP = 4  # users scored together: each item value loaded once serves four
TILE = 1024  # items per tile: GROUP x TILE scores (16 KB) stay in L1


@numba.njit(cache=True, nogil=True, error_model="numpy", fastmath=VECTOR)
def _leading(users, items_t, u0, f1, j0, t, acc) -> None:
    """acc[a, :t] = users[u0 + a, :f1] . items_t[:f1, j0:j0 + t] for a < GROUP, a
    factor at a time (zeros when f1 is 0): the d % 8 factors before the eights."""
    for a in range(GROUP):
        row = acc[a]
        for j in range(t):
            row[j] = 0.0
        for f in range(f1):
            uf = users[u0 + a, f]
            column = items_t[f, j0 : j0 + t]
            for j in range(t):
                row[j] += uf * column[j]


@numba.njit(cache=True, nogil=True, error_model="numpy", fastmath=VECTOR)
def _add_eight(users, items_t, u0, f0, j0, t, acc) -> None:
    """acc[a, :t] += users[u0 + a, f0:f0 + 8] . items_t[f0:f0 + 8, j0:j0 + t] for the
    GROUP = 4 users: p, q, r, s are their eight values, held in registers."""
    p0, p1, p2, p3, p4, p5, p6, p7 = users[u0, f0 : f0 + 8]
    q0, q1, q2, q3, q4, q5, q6, q7 = users[u0 + 1, f0 : f0 + 8]
    r0, r1, r2, r3, r4, r5, r6, r7 = users[u0 + 2, f0 : f0 + 8]
    s0, s1, s2, s3, s4, s5, s6, s7 = users[u0 + 3, f0 : f0 + 8]
    x0 = items_t[f0, j0 : j0 + t]
    x1 = items_t[f0 + 1, j0 : j0 + t]
    x2 = items_t[f0 + 2, j0 : j0 + t]
    x3 = items_t[f0 + 3, j0 : j0 + t]
    x4 = items_t[f0 + 4, j0 : j0 + t]
    x5 = items_t[f0 + 5, j0 : j0 + t]
    x6 = items_t[f0 + 6, j0 : j0 + t]
    x7 = items_t[f0 + 7, j0 : j0 + t]
    # rows of their own: a 2-D slice's inner stride is unknown to LLVM and does not vectorise
    for j in range(t):
        i0, i1, i2, i3, i4, i5, i6, i7 = x0[j], x1[j], x2[j], x3[j], x4[j], x5[j], x6[j], x7[j]
        acc[0, j] += p0 * i0 + p1 * i1 + p2 * i2 + p3 * i3 + p4 * i4 + p5 * i5 + p6 * i6 + p7 * i7
        acc[1, j] += q0 * i0 + q1 * i1 + q2 * i2 + q3 * i3 + q4 * i4 + q5 * i5 + q6 * i6 + q7 * i7
        acc[2, j] += r0 * i0 + r1 * i1 + r2 * i2 + r3 * i3 + r4 * i4 + r5 * i5 + r6 * i6 + r7 * i7
        acc[3, j] += s0 * i0 + s1 * i1 + s2 * i2 + s3 * i3 + s4 * i4 + s5 * i5 + s6 * i6 + s7 * i7


@numba.njit(cache=True, nogil=True, error_model="numpy", fastmath=VECTOR)
def _tile_scores(users, items_t, u0, j0, t, acc) -> None:
    """acc[:GROUP, :t] = users[u0:u0 + GROUP] . items_t[:, j0:j0 + t] (float32)."""
    d = users.shape[1]
    f1 = d % 8
    _leading(users, items_t, u0, f1, j0, t, acc)
    for f0 in range(f1, d, 8):
        _add_eight(users, items_t, u0, f0, j0, t, acc)


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
    if _above(acc[a], t, least) == 0:
        return
    for j in range(t):
        if acc[a, j] > least and not _excluded(ex_items, ex_lo, ex_hi, j0 + j):
            _replace_root(heap_s, heap_i, acc[a, j], j0 + j)
            least = heap_s[0]


@numba.njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def fused_top_k(users, items_t, item_block, best_s, best_i, ex_offsets, ex_items, chunks) -> None:
    """Every user's top K (heaps in best_s/best_i) over items_t (dim, m), computing
    each score in registers and never storing a block: users (a multiple of GROUP
    rows) are split into `chunks` (several per thread) of whole groups; each streams
    the items block by block (item_block items, kept in cache) and scores its users
    GROUP at a time, TILE items at a time. Exclusions:
    ex_items[ex_offsets[u]:ex_offsets[u+1]] sorted."""
    groups = users.shape[0] // GROUP
    m = items_t.shape[1]
    per = (groups + chunks - 1) // chunks
    for c in numba.prange(chunks):
        acc = np.empty((GROUP, TILE), np.float32)
        lo, hi = c * per * GROUP, min(groups, (c + 1) * per) * GROUP
        for b0 in range(0, m, item_block):
            b1 = min(b0 + item_block, m)
            for u0 in range(lo, hi, GROUP):
                for j0 in range(b0, b1, TILE):
                    t = min(TILE, b1 - j0)
                    _tile_scores(users, items_t, u0, j0, t, acc)
                    for a in range(GROUP):
                        u = u0 + a
                        _fold_tile(acc, a, t, j0, best_s[u], best_i[u], ex_items, ex_offsets[u], ex_offsets[u + 1])
