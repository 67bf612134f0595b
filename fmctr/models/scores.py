"""FM logits for predict and eval: float64, and the same bits for a row however many
rows come with it. A few thousand rows are scored with numpy, which spares a short
command numba's start-up (most of its time); more go to the compiled kernel
(fmctr.models.kernel.fm_scores), which does the same operations in the same order.
(Training's validation scores with the training kernel's float32 arithmetic instead.)
"""

from __future__ import annotations

import numpy as np

from fmctr.tables import read_only

SMALL_ROWS = 4096


def logits(bias, linear, factors, indices, values, offsets) -> np.ndarray:
    """(n,) logits of CSR rows."""
    if len(offsets) - 1 <= SMALL_ROWS:
        return small_logits(bias, linear, factors, indices, values, offsets)
    from fmctr.models import kernel

    out = np.empty(len(offsets) - 1, np.float64)
    kernel.fm_scores(*map(read_only, (indices, values, offsets)), bias, linear, factors, out)
    return out


def small_logits(bias, linear, factors, indices, values, offsets) -> np.ndarray:
    """numpy, one feature position at a time across all rows: per row, the kernel's sums
    in the kernel's order."""
    offsets = offsets.astype(np.int64)
    lengths = np.diff(offsets)
    n, k = len(lengths), factors.shape[1]
    lin = np.full(n, np.float64(bias[0]))
    s, q = np.zeros((n, k)), np.zeros((n, k))
    for p in range(int(lengths.max(initial=0))):
        m = np.flatnonzero(lengths > p)
        at = offsets[m] + p
        i, x = indices[at], values[at].astype(np.float64)
        lin[m] += linear[i].astype(np.float64) * x
        vx = factors[i].astype(np.float64) * x[:, None]
        s[m] += vx
        q[m] += vx * vx
    d = np.zeros(n)
    for f in range(k):
        d += s[:, f] * s[:, f] - q[:, f]
    return lin + 0.5 * d
