"""The FM's logit taken apart into its terms, for looking inside a model:

    logit = bias + sum_p w_i(p) x_p + sum_{p<q} <v_i(p), v_i(q)> x_p x_q

over the positions p, q of a row (i(p) the index at position p). Each kernel here
computes some of these terms explicitly, in float64, from the same weights the
scoring kernel (fmctr.models.kernel.fm_logits) uses in its O(kn) form.
"""

from __future__ import annotations

import numba
import numpy as np

BIAS, LINEAR, PAIR = 0, 1, 2  # kinds of term


@numba.njit(cache=True, nogil=True)
def contributions(indices, values, offsets, linear, factors, slots, abs_total, total, x2):
    """Per position p, its contribution: its linear term w x_p plus half of every pair
    term it takes part in (a row's bias plus its positions' contributions is its
    logit). Summed by slot (slots[p], e.g. the index itself): |contribution| into
    abs_total, the contribution into total, x_p^2 into x2."""
    k = factors.shape[1]
    s = np.zeros(k, np.float64)
    for r in range(len(offsets) - 1):
        s[:] = 0.0
        for p in range(offsets[r], offsets[r + 1]):
            for f in range(k):
                s[f] += factors[indices[p], f] * values[p]
        for p in range(offsets[r], offsets[r + 1]):
            i, x = indices[p], np.float64(values[p])
            half = 0.0
            for f in range(k):
                vx = factors[i, f] * x
                half += vx * (s[f] - vx)
            c = linear[i] * x + 0.5 * half
            abs_total[slots[p]] += abs(c)
            total[slots[p]] += c
            x2[slots[p]] += x * x


@numba.njit(cache=True, nogil=True)
def field_pairs(indices, values, offsets, field, n_fields, factors):
    """(n_fields, n_fields): the sum over rows of |the row's pair terms between field
    f and field g| (f <= g; within a field, its positions' pairs with each other)."""
    k = factors.shape[1]
    out = np.zeros((n_fields, n_fields), np.float64)
    s = np.zeros((n_fields, k), np.float64)
    own = np.zeros(n_fields, np.float64)  # sum of |v x|^2 per field
    for r in range(len(offsets) - 1):
        s[:, :] = 0.0
        own[:] = 0.0
        for p in range(offsets[r], offsets[r + 1]):
            g = field[p]
            for f in range(k):
                vx = factors[indices[p], f] * values[p]
                s[g, f] += vx
                own[g] += vx * vx
        for a in range(n_fields):
            for b in range(a, n_fields):
                dot = 0.0
                for f in range(k):
                    dot += s[a, f] * s[b, f]
                out[a, b] += abs(0.5 * (dot - own[a]) if a == b else dot)
    return out


@numba.njit(cache=True, nogil=True)
def pair_sums(slots, values, offsets, m):
    """Over every row's pairs of positions p < q whose indices both have a slot
    (slots[p] >= 0, < m): the sum of |x_p x_q| and the count, by (slot, slot), the
    smaller slot first."""
    sums = np.zeros((m, m), np.float64)
    counts = np.zeros((m, m), np.int64)
    for r in range(len(offsets) - 1):
        for p in range(offsets[r], offsets[r + 1]):
            a = slots[p]
            if a < 0:
                continue
            for q in range(p + 1, offsets[r + 1]):
                b = slots[q]
                if b < 0:
                    continue
                lo, hi = min(a, b), max(a, b)
                sums[lo, hi] += abs(values[p] * values[q])
                counts[lo, hi] += 1
    return sums, counts


@numba.njit(cache=True, nogil=True)
def _keep_top(n_top, shown, t_kind, t_a, t_b, t_val, kinds, first, second, value, r):
    """Insert one term into row r's top list (sorted by |value|, largest first)."""
    j = shown
    while j > 0 and abs(value[r, j - 1]) < abs(t_val):
        if j < n_top:
            kinds[r, j], first[r, j], second[r, j], value[r, j] = \
                kinds[r, j - 1], first[r, j - 1], second[r, j - 1], value[r, j - 1]
        j -= 1
    if j < n_top:
        kinds[r, j], first[r, j], second[r, j], value[r, j] = t_kind, t_a, t_b, t_val
    return min(shown + 1, n_top)


@numba.njit(cache=True, nogil=True, parallel=True)
def top_terms(indices, values, offsets, bias, linear, factors, n_top, kinds, first, second, value, rest):
    """Per row r: every term of its logit; the n_top largest by |value| into
    kinds/first/second/value[r, :] (positions within the row; kind -1 where the row
    has fewer terms), and the sum of the others into rest[r]."""
    k = factors.shape[1]
    for r in numba.prange(len(offsets) - 1):
        lo, m = offsets[r], offsets[r + 1] - offsets[r]
        kinds[r, :] = -1
        total = np.float64(bias[0])
        shown = _keep_top(n_top, 0, BIAS, 0, 0, total, kinds, first, second, value, r)
        for p in range(m):
            t = np.float64(linear[indices[lo + p]]) * np.float64(values[lo + p])
            total += t
            shown = _keep_top(n_top, shown, LINEAR, p, 0, t, kinds, first, second, value, r)
        for p in range(m if k > 0 else 0):  # (no factors: no pair terms)
            for q in range(p + 1, m):
                dot = 0.0
                for f in range(k):
                    dot += np.float64(factors[indices[lo + p], f]) * np.float64(factors[indices[lo + q], f])
                t = dot * np.float64(values[lo + p]) * np.float64(values[lo + q])
                total += t
                if shown < n_top or abs(t) > abs(value[r, n_top - 1]):  # (most terms are not among the largest)
                    shown = _keep_top(n_top, shown, PAIR, p, q, t, kinds, first, second, value, r)
        kept = 0.0
        for j in range(shown):
            kept += value[r, j]
        rest[r] = total - kept
