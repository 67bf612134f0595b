"""The full-catalogue softmax loss for training from positives (`--loss softmax`).

For a positive (user row u, catalogue item i) the loss is

    -s(u, i) + log sum_j exp(s(u, j))        over every catalogue item j,

with s the FM's logit split into towers (fmctr.models.towers): s(u, j) = c_u +
<U_u, S_j> + t_j, U_u the user's factor sum, S_j the item's, t_j the item's own FM
(its linear weights and the pairs within its fields). The user constant c_u is the
same for every j and cancels, so the bias, the user features' linear weights and the
pairs within the user's fields get no gradient. With G = softmax(s) - onehot(i)
(batch x catalogue, over the batch size for the mean):

    dL/dU = G S     dL/dS = G^T U     dL/dt = the column sums of G

and each item feature f with value x in item j gets x dL/dt_j on its linear weight
and x (dL/dS_j + dL/dt_j (S_j - v_f x)) on its factors (the second part from the
pairs within the item); each user feature x dL/dU_u on its factors.

The dense part (scores, softmax, the two products back) is two numba kernels over
the batch's users and then the catalogue's items, on the engine's threads: numpy's
BLAS for products this thin (dim 32) took 5-15 ms a product with its own threads
on two busy cores, against 0.5 ms on one. The catalogue's towers and the scatter of
the items' gradients back into their features are kernels too (_side_sums,
_item_features): in numpy, with a float64 copy of every catalogue value's factors per
batch, they took about half of a softmax fit (MovieLens-100k, dim 64).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numba
import numpy as np

from fmctr.hashing.tokens import Rows
from fmctr.models.kernel import FAST

# The whole catalogue is scored for every batch: (batch x items) float32 scores.
MAX_ITEMS = 200_000


@dataclass
class Gradients:
    """One batch's softmax loss (summed) and the gradient of its mean, by feature:
    `features` the distinct feature indices the batch touches (its users' and every
    catalogue item's), `linear` and `factors` their gradients."""

    loss: float
    features: np.ndarray  # int64, sorted
    linear: np.ndarray  # (n,) float64
    factors: np.ndarray  # (n, dim) float64


def _row_of_each_value(rows: Rows) -> np.ndarray:
    return np.repeat(np.arange(len(rows)), np.diff(rows.offsets))


LOG2E, LN2_HI, LN2_LO = np.float32(1.4426950408889634), np.float32(0.693359375), np.float32(-2.12194440e-4)
# 2^-k for k = 0..127 (_exp_shifted's scale; float32)
_POW2 = np.ldexp(np.float32(1), -np.arange(128)).astype(np.float32)


@numba.njit(cache=True, nogil=True, error_model="numpy", fastmath=FAST, inline="always")
def _exp_shifted(row, best, pow2):
    """row[j] = exp(row[j] - best) in place (row[j] <= best), and their sum (float64):
    exp(x) = 2^-k e^r with k = round(-x / ln 2), |r| <= ln2 / 2, e^r by its Taylor
    series to r^7 (relative error under 2e-8, below float32's), 2^-k from a table;
    an argument under -87 counts as -87 (1.6e-38, nothing beside the largest's 1).
    Written so that the loop runs in SIMD lanes: math.exp is a scalar call without
    Intel's SVML, which numba uses where installed."""
    total = 0.0
    for j in range(len(row)):
        x = max(row[j] - best, np.float32(-87.0))
        k = np.floor(np.float32(0.5) - x * LOG2E)
        r = (x + k * LN2_HI) + k * LN2_LO
        e = np.float32(1) + r * (np.float32(1) + r * (np.float32(0.5) + r * (np.float32(1 / 6) + r * (
            np.float32(1 / 24) + r * (np.float32(1 / 120) + r * (np.float32(1 / 720) + r * np.float32(1 / 5040)))))))
        value = e * pow2[np.int32(k) & 127]  # (the mask: a NaN score reads no memory out of the table)
        row[j] = value
        total += value
    return total


@numba.njit(cache=True, nogil=True, error_model="numpy", fastmath=FAST, inline="always")
def _scores(row, terms, user, sums_t):
    """row = terms + sums_t^T user: eight factors a pass (each score loaded and stored
    once per eight), the rest one at a time."""
    dim, size = len(user), len(row)
    row[:] = terms
    eights = dim - dim % 8
    for f0 in range(0, eights, 8):
        u0, u1, u2, u3, u4, u5, u6, u7 = user[f0 : f0 + 8]
        s0, s1, s2, s3 = sums_t[f0], sums_t[f0 + 1], sums_t[f0 + 2], sums_t[f0 + 3]
        s4, s5, s6, s7 = sums_t[f0 + 4], sums_t[f0 + 5], sums_t[f0 + 6], sums_t[f0 + 7]
        for j in range(size):
            row[j] += (u0 * s0[j] + u1 * s1[j] + u2 * s2[j] + u3 * s3[j]) + (
                u4 * s4[j] + u5 * s5[j] + u6 * s6[j] + u7 * s7[j])
    for f in range(eights, dim):
        u, s = user[f], sums_t[f]
        for j in range(size):
            row[j] += u * s[j]


@numba.njit(cache=True, nogil=True, error_model="numpy", fastmath=FAST, parallel=True)
def _by_user(users, sums_t, terms, items, grad, grad_users, losses):
    """For each user b (a row of the batch): the scores of every item, the loss, the
    row of (softmax - onehot(items[b])) / batch into grad[b], and grad[b] @ sums.
    `sums_t` is (dim, items): the loops over items, innermost, run in SIMD lanes
    (_scores, _exp_shifted: 1.5x the kernel with a factor a pass and math.exp)."""
    batch, size, dim = grad.shape[0], grad.shape[1], users.shape[1]
    for b in numba.prange(batch):
        row = grad[b]
        _scores(row, terms, users[b], sums_t)
        best = row.max()
        own = row[items[b]]
        total = _exp_shifted(row, best, _POW2)
        losses[b] = math.log(total) + best - own
        scale = np.float32(1.0 / (total * batch))
        for j in range(size):
            row[j] *= scale
        row[items[b]] -= np.float32(1.0 / batch)
        for f in range(dim):
            acc = np.float32(0)
            s = sums_t[f]
            for j in range(size):
                acc += row[j] * s[j]
            grad_users[b, f] = acc


@numba.njit(cache=True, nogil=True, error_model="numpy", fastmath=FAST, parallel=True)
def _by_item(users, grad, grad_sums_t, grad_terms):
    """grad_sums_t = (grad.T @ users).T, grad_terms = grad's column sums: blocks of
    items in parallel, summed in a local block (no aliasing: the loop vectorizes).
    Eight factors at a time over four users of the batch at a time (_add_four_users),
    the rest one at a time."""
    batch, size, dim = grad.shape[0], grad.shape[1], users.shape[1]
    block = 512
    for lo in numba.prange((size + block - 1) // block):
        a = lo * block
        n = min(block, size - a)
        acc = np.zeros((8, block), np.float32)
        for b in range(batch):
            for j in range(n):
                acc[0, j] += grad[b, a + j]
        grad_terms[a : a + n] = acc[0, :n]
        eights, fours = dim - dim % 8, batch - batch % 4
        for f0 in range(0, eights, 8):
            acc[:] = 0
            for b0 in range(0, fours, 4):
                _add_four_users(users, grad, b0, f0, a, n, acc)
            for b in range(fours, batch):
                for c in range(8):
                    u = users[b, f0 + c]
                    for j in range(n):
                        acc[c, j] += u * grad[b, a + j]
            grad_sums_t[f0 : f0 + 8, a : a + n] = acc[:, :n]
        for f in range(eights, dim):
            row = acc[0]
            row[:] = 0
            for b in range(batch):
                u = users[b, f]
                for j in range(n):
                    row[j] += u * grad[b, a + j]
            grad_sums_t[f, a : a + n] = row[:n]


@numba.njit(cache=True, nogil=True, error_model="numpy", fastmath=FAST)
def _add_four_users(users, grad, b0, f0, a, n, acc):
    """acc[c, :n] += sum over b in b0..b0+3 of users[b, f0 + c] x grad[b, a:a+n], c < 8:
    each gradient value loaded once for eight factors, each sum stored once per four
    users (where one factor and one user at a time loaded and stored a sum per
    product: the top-K kernel's register pass, fmctr.models.topk_kernel)."""
    p0, p1, p2, p3, p4, p5, p6, p7 = users[b0, f0 : f0 + 8]
    q0, q1, q2, q3, q4, q5, q6, q7 = users[b0 + 1, f0 : f0 + 8]
    r0, r1, r2, r3, r4, r5, r6, r7 = users[b0 + 2, f0 : f0 + 8]
    s0, s1, s2, s3, s4, s5, s6, s7 = users[b0 + 3, f0 : f0 + 8]
    g0, g1, g2, g3 = grad[b0, a : a + n], grad[b0 + 1, a : a + n], grad[b0 + 2, a : a + n], grad[b0 + 3, a : a + n]
    a0, a1, a2, a3, a4, a5, a6, a7 = acc[0], acc[1], acc[2], acc[3], acc[4], acc[5], acc[6], acc[7]
    for j in range(n):
        x0, x1, x2, x3 = g0[j], g1[j], g2[j], g3[j]
        a0[j] += p0 * x0 + q0 * x1 + r0 * x2 + s0 * x3
        a1[j] += p1 * x0 + q1 * x1 + r1 * x2 + s1 * x3
        a2[j] += p2 * x0 + q2 * x1 + r2 * x2 + s2 * x3
        a3[j] += p3 * x0 + q3 * x1 + r3 * x2 + s3 * x3
        a4[j] += p4 * x0 + q4 * x1 + r4 * x2 + s4 * x3
        a5[j] += p5 * x0 + q5 * x1 + r5 * x2 + s5 * x3
        a6[j] += p6 * x0 + q6 * x1 + r6 * x2 + s6 * x3
        a7[j] += p7 * x0 + q7 * x1 + r7 * x2 + s7 * x3


def softmax_gradients(w, context: Rows, items: np.ndarray, catalogue: Rows,
                      index: CatalogueIndex | None = None) -> Gradients:
    """The loss and gradients of a batch of positives: users `context`, each one's
    catalogue row in `items` (`index`: CatalogueIndex.of(catalogue), kept between batches)."""
    batch, dim = len(items), w.factors.shape[1]
    users = _towers(w, context)[0].astype(np.float32)
    sums64, terms, sums_t = _towers(w, catalogue, transposed=True)
    grad = np.empty((batch, len(catalogue)), np.float32)
    grad_users, losses = np.empty((batch, dim), np.float32), np.empty(batch, np.float64)
    _by_user(users, sums_t, terms.astype(np.float32), items, grad, grad_users, losses)
    grad_sums_t, grad_terms = np.empty((dim, len(catalogue)), np.float32), np.empty(len(catalogue), np.float32)
    _by_item(users, grad, grad_sums_t, grad_terms)
    index = index if index is not None else CatalogueIndex.of(catalogue)
    return _by_feature(w, context, index, float(losses.sum()), grad_users, grad_sums_t,
                       grad_terms.astype(np.float64), sums64)


def _towers(w, rows: Rows, transposed: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """fmctr.models.towers.side_terms of the rows, in a kernel: (factor sums (n, dim),
    the FM of each row's features alone without the bias (n,)), float64; with
    `transposed` the sums again as (dim, n) float32 (else an empty array)."""
    n, dim = len(rows), w.factors.shape[1]
    sums, terms = np.empty((n, dim), np.float64), np.empty(n, np.float64)
    sums_t = np.empty((dim, n) if transposed else (0, 0), np.float32)
    _side_sums(w.factors, w.linear, rows.indices, rows.values, rows.offsets, sums, terms, sums_t)
    return sums, terms, sums_t


@numba.njit(cache=True, nogil=True, error_model="numpy", parallel=True)
def _side_sums(factors, linear, indices, values, offsets, sums, terms, sums_t):
    """Per row j: sums[j] = sum_i v_i x_i and terms[j] = sum_i w_i x_i + the pairs
    within the row, 0.5 (|sums[j]|^2 - sum_i |v_i x_i|^2); float64. And sums_t[:, j]
    = sums[j] in float32 where sums_t is not empty."""
    dim = factors.shape[1]
    for j in numba.prange(len(offsets) - 1):
        linear_sum, squares = 0.0, 0.0
        for c in range(dim):
            sums[j, c] = 0.0
        for p in range(offsets[j], offsets[j + 1]):
            f, x = indices[p], np.float64(values[p])
            linear_sum += np.float64(linear[f]) * x
            for c in range(dim):
                v = np.float64(factors[f, c]) * x
                sums[j, c] += v
                squares += v * v
        total = 0.0
        for c in range(dim):
            total += sums[j, c] * sums[j, c]
        terms[j] = linear_sum + 0.5 * (total - squares)
        if sums_t.shape[1]:
            for c in range(dim):
                sums_t[c, j] = np.float32(sums[j, c])


def _by_feature(w, context: Rows, catalogue: CatalogueIndex, loss: float, grad_users, grad_sums_t, grad_terms,
                sums) -> Gradients:
    """The gradients by user and by item, back into the features they sum."""
    user_factors = grad_users[_row_of_each_value(context)] * context.values[:, None]
    users, items = Grouping.of(context.indices), catalogue.grouping
    features = np.union1d(users.features, items.features)
    at_users, at_items = np.searchsorted(features, users.features), np.searchsorted(features, items.features)
    factors = np.zeros((len(features), w.factors.shape[1]), np.float64)
    linear = np.zeros(len(features), np.float64)
    _item_features(w.factors, catalogue.rows.indices, catalogue.values, catalogue.at_item, items.order, items.starts,
                   grad_sums_t, grad_terms, sums, at_items, factors, linear)
    factors[at_users] += users.sum(user_factors)
    return Gradients(loss, features, linear, factors)


@numba.njit(cache=True, nogil=True, error_model="numpy", parallel=True)
def _item_features(factors, indices, values, at_item, order, starts, grad_sums_t, grad_terms, sums, at, out_factors,
                   out_linear):
    """Each catalogue feature's gradient, summed over the catalogue values that hold it
    (group g: values order[starts[g]:starts[g + 1]], the last to the end): for value p
    (feature f, value x, item j) x dL/dt_j on the linear weight and x (dL/dS_j +
    dL/dt_j (S_j - v_f x)) on the factors; float64 (dL/dS as _by_item leaves it, (dim,
    items)), into rows at[g] of the outputs."""
    groups, dim = len(starts), factors.shape[1]
    for g in numba.prange(groups):
        end = starts[g + 1] if g + 1 < groups else len(order)
        row = at[g]
        for c in range(dim):
            out_factors[row, c] = 0.0
        linear_sum = 0.0
        for q in range(starts[g], end):
            p = order[q]
            f, j, x = indices[p], at_item[p], values[p]
            t = grad_terms[j]
            linear_sum += x * t
            for c in range(dim):
                own = np.float64(factors[f, c]) * x
                out_factors[row, c] += x * (np.float64(grad_sums_t[c, j]) + t * (sums[j, c] - own))
        out_linear[row] = linear_sum


@dataclass
class Grouping:
    """Values summed by the feature each belongs to: the distinct features (sorted), the
    order that puts each feature's values together and where each group starts."""

    features: np.ndarray  # int64
    order: np.ndarray
    starts: np.ndarray

    @classmethod
    def of(cls, indices: np.ndarray) -> Grouping:
        order = np.argsort(indices, kind="stable")
        ordered = indices[order]
        starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]]) if len(ordered) else np.zeros(0, np.int64)
        return cls(ordered[starts].astype(np.int64), order, starts)

    def sum(self, values: np.ndarray) -> np.ndarray:
        if len(self.starts) == len(self.order):  # no feature twice (a catalogue of ids alone)
            return values[self.order]
        return np.add.reduceat(values[self.order], self.starts, axis=0)


@dataclass
class CatalogueIndex:
    """What each batch needs of the catalogue's layout, worked out once."""

    rows: Rows
    at_item: np.ndarray  # each value's catalogue row
    values: np.ndarray  # float64
    grouping: Grouping

    @classmethod
    def of(cls, catalogue: Rows) -> CatalogueIndex:
        return cls(catalogue, _row_of_each_value(catalogue), catalogue.values.astype(np.float64),
                   Grouping.of(catalogue.indices))
