"""Fused CPU kernels (numba): FM logits and mini-batch training steps over CSR rows.

This is the CPU engine. It computes exactly what the torch engine (fmctr.model) does
- the same logits, the same mean-loss gradient per mini-batch, the same lazy L2 on
the rows a batch touches, the same Adagrad/Adam updates - but in one pass per row
with no autograd graph, which is where CPU speed comes from. tests/test_engines.py
holds the two engines to the same weights.
"""

from __future__ import annotations

import math

import numba
import numpy as np

ADAGRAD = 0
ADAM = 1


@numba.njit(cache=True, nogil=True)
def _splitmix64(x):
    z = x + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@numba.njit(cache=True, nogil=True)
def _init_row(factors, i, seed, std):
    """fmctr.weights.initial_factors for one row, in place."""
    base = _splitmix64(_splitmix64(np.uint64(seed)) + np.uint64(i))
    for f in range(factors.shape[1]):
        h1 = _splitmix64(base + np.uint64(f))
        h2 = _splitmix64(h1)
        u1 = (np.float64(h1 >> np.uint64(11)) + 1.0) * 2.0**-53
        u2 = np.float64(h2 >> np.uint64(11)) * 2.0**-53
        factors[i, f] = math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2) * std


@numba.njit(cache=True, nogil=True)
def _row_logit(indices, values, lo, hi, bias, linear, factors, s):
    """Logit of one row; leaves sum_i v_if x_i in s for the gradient."""
    k = factors.shape[1]
    for f in range(k):
        s[f] = 0.0
    lin = np.float64(bias)
    square_then_sum = 0.0
    for p in range(lo, hi):
        i = indices[p]
        x = values[p]
        lin += linear[i] * x
        for f in range(k):
            vx = factors[i, f] * x
            s[f] += vx
            square_then_sum += vx * vx
    sum_then_square = 0.0
    for f in range(k):
        sum_then_square += s[f] * s[f]
    return lin + 0.5 * (sum_then_square - square_then_sum)


@numba.njit(cache=True, parallel=True, nogil=True)
def fm_logits(indices, values, offsets, bias, linear, factors, out):
    """(nnz,), (nnz,), (n+1,) CSR rows -> out (n,) logits."""
    n = len(offsets) - 1
    k = factors.shape[1]
    for r in numba.prange(n):
        s = np.empty(k, np.float64)
        out[r] = _row_logit(indices, values, offsets[r], offsets[r + 1], bias[0], linear, factors, s)


@numba.njit(cache=True, nogil=True)
def _step(theta, g, acc1, acc2, optimizer, lr, eps, beta1, beta2, correction1, correction2):
    """One optimizer update of one scalar: (new value, new state1, new state2).
    Adagrad has one accumulator and returns it twice, so its two state arrays may be
    the same array."""
    if optimizer == ADAGRAD:
        a = acc1 + g * g
        return theta - lr * g / (math.sqrt(a) + eps), a, a
    m = beta1 * acc1 + (1.0 - beta1) * g
    v = beta2 * acc2 + (1.0 - beta2) * g * g
    return theta - lr * (m / correction1) / (math.sqrt(v / correction2) + eps), m, v


@numba.njit(cache=True, nogil=True)
def train_rows(
    indices, values, offsets, labels, order, batch_size,
    bias, linear, factors,
    bias_state, linear_state1, linear_state2, factor_state1, factor_state2,
    grad_linear, grad_factors, mark, touched, seen,
    optimizer, lr, l2_linear, l2_factors, eps, beta1, beta2, counters, init_seed, init_std,
):
    """Train on the rows `order` (indices into the CSR arrays), batch by batch.
    Each batch: gradient of the mean logloss over its rows at the current weights,
    plus L2 on the rows it touches; then one optimizer step on those rows only.
    A row met for the first time (seen[i] false) gets its initial factors first.
    counters[0] is the optimizer step count, counters[1] the batch id used to mark
    rows. Returns the summed logloss of the rows (before their batch's update)."""
    k = factors.shape[1]
    s = np.empty(k, np.float64)
    total_loss = 0.0
    n = len(order)
    for b0 in range(0, n, batch_size):
        b1 = min(b0 + batch_size, n)
        inv_batch = 1.0 / (b1 - b0)
        counters[1] += 1
        batch_id = counters[1]
        n_touched = 0
        grad_bias = 0.0
        for j in range(b0, b1):
            r = order[j]
            lo = offsets[r]
            hi = offsets[r + 1]
            for p in range(lo, hi):
                i = indices[p]
                if not seen[i]:
                    seen[i] = True
                    _init_row(factors, i, init_seed, init_std)
            z = _row_logit(indices, values, lo, hi, bias[0], linear, factors, s)
            y = labels[r]
            total_loss += max(z, 0.0) - z * y + math.log1p(math.exp(-abs(z)))
            g = (1.0 / (1.0 + math.exp(-z)) - y) * inv_batch
            grad_bias += g
            for p in range(lo, hi):
                i = indices[p]
                x = values[p]
                if mark[i] != batch_id:
                    mark[i] = batch_id
                    touched[n_touched] = i
                    n_touched += 1
                    grad_linear[i] = 0.0
                    for f in range(k):
                        grad_factors[i, f] = 0.0
                gx = g * x
                grad_linear[i] += gx
                for f in range(k):
                    grad_factors[i, f] += gx * (s[f] - factors[i, f] * x)
        counters[0] += 1
        c1 = 1.0 - beta1 ** counters[0]
        c2 = 1.0 - beta2 ** counters[0]
        bias[0], bias_state[0], bias_state[1] = _step(
            bias[0], grad_bias, bias_state[0], bias_state[1], optimizer, lr, eps, beta1, beta2, c1, c2
        )
        for t in range(n_touched):
            i = touched[t]
            g = grad_linear[i] + l2_linear * linear[i]
            linear[i], linear_state1[i], linear_state2[i] = _step(
                linear[i], g, linear_state1[i], linear_state2[i], optimizer, lr, eps, beta1, beta2, c1, c2
            )
            for f in range(k):
                g = grad_factors[i, f] + l2_factors * factors[i, f]
                factors[i, f], factor_state1[i, f], factor_state2[i, f] = _step(
                    factors[i, f], g, factor_state1[i, f], factor_state2[i, f],
                    optimizer, lr, eps, beta1, beta2, c1, c2,
                )
    return total_loss
