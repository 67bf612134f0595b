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
def contributions(indices, values, offsets, linear, factors, out_linear, out_total):
    """Per position p: its linear term w x_p (out_linear) and that plus half of every
    pair term it takes part in (out_total): a row's bias plus its positions' totals is
    its logit."""
    k = factors.shape[1]
    s = np.zeros(k, np.float64)
    for r in range(len(offsets) - 1):
        s[:] = 0.0
        for p in range(offsets[r], offsets[r + 1]):
            for f in range(k):
                s[f] += factors[indices[p], f] * values[p]
        for p in range(offsets[r], offsets[r + 1]):
            i, x = indices[p], values[p]
            half = 0.0
            for f in range(k):
                vx = factors[i, f] * x
                half += vx * (s[f] - vx)
            out_linear[p] = linear[i] * x
            out_total[p] = out_linear[p] + 0.5 * half


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
def top_terms(indices, values, offsets, bias, linear, factors, n_top, kinds, first, second, value, rest):
    """Per row r: every term of its logit; the n_top largest by |value| into
    kinds/first/second/value[r, :] (positions within the row; kind -1 where the row
    has fewer terms), and the sum of the others into rest[r]."""
    k = factors.shape[1]
    for r in range(len(offsets) - 1):
        lo, m = offsets[r], offsets[r + 1] - offsets[r]
        total = 1 + m + (m * (m - 1) // 2 if k > 0 else 0)  # (no factors: no pair terms)
        t_val = np.empty(total, np.float64)
        t_kind = np.empty(total, np.int8)
        t_a = np.zeros(total, np.int32)
        t_b = np.zeros(total, np.int32)
        t_val[0], t_kind[0] = bias[0], BIAS
        n = 1
        for p in range(m):
            t_val[n], t_kind[n], t_a[n] = linear[indices[lo + p]] * values[lo + p], LINEAR, p
            n += 1
        for p in range(m if k > 0 else 0):
            for q in range(p + 1, m):
                dot = 0.0
                for f in range(k):
                    dot += factors[indices[lo + p], f] * factors[indices[lo + q], f]
                t_val[n], t_kind[n], t_a[n], t_b[n] = dot * values[lo + p] * values[lo + q], PAIR, p, q
                n += 1
        order = np.argsort(-np.abs(t_val))
        shown = min(n_top, total)
        kinds[r, :] = -1
        for j in range(shown):
            t = order[j]
            kinds[r, j], first[r, j], second[r, j], value[r, j] = t_kind[t], t_a[t], t_b[t], t_val[t]
        other = 0.0
        for j in range(shown, total):
            other += t_val[order[j]]
        rest[r] = other
