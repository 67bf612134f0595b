"""Implicit alternating least squares for the FM's towers (`--loss als`).

From positives alone, every (user, catalogue item) pair that is not a positive is an
implicit 0. The loss weighs the whole catalogue, as implicit ALS does (Hu, Koren and
Volinsky 2008; Rendle et al. 2021, "Revisiting the performance of iALS"):

    L = sum over positives (1 - s(u, i))^2  +  a0 sum over users u, every item j  s(u, j)^2
        + the L2 of each feature's weights, scaled by how much data it meets

with s the FM's logit split into towers (fmctr.models.towers): s(u, j) = c_u + b_j +
<U_u, S_j>. The logit is linear in each feature's own weights (its factors and its
linear weight, the pairs with the features beside it included), so with every other
weight fixed the best weights of one feature are a ridge regression in dim + 1
unknowns - and the sum over the whole catalogue needs only the other side's Gram
matrix, never a users x items matrix (Bayer et al. 2017, "A generic coordinate
descent framework for learning from implicit feedback"). A sweep solves each feature
of the user side in turn against the items, then each feature of the item side
against the users. With one id column per side and no other feature this is implicit
ALS with a bias per item (and per user). Exact where no row holds a feature twice: a
bag with a token twice (`a|a|b`) makes a pair of the feature with itself, quadratic in
its factors, and its step is then a Newton step from where it stands, not the minimum.

Vectors kept per entity during a half sweep (float64), in the layout that makes every
score one dot product:

    own   = (vector, constant, 1)      other = (vector, 1, constant)
    s(u, j) = own_u . other_j
"""

from __future__ import annotations

import numba
import numpy as np

from fmctr.datasets.pattern import Problem, Side
from fmctr.models.towers import side_terms


def _vectors(w, side: Side, own: bool, bias: float = 0.0) -> np.ndarray:
    """(n, dim + 2): `own` layout (vector, constant, 1) or `other` (vector, 1, constant)."""
    sums, terms = side_terms(w, side.rows)
    k = sums.shape[1]
    out = np.empty((len(sums), k + 2), np.float64)
    out[:, :k] = sums
    out[:, k] = bias + terms if own else 1.0
    out[:, k + 1] = 1.0 if own else bias + terms
    return out


def sweep(w, problem: Problem, *, l2: float) -> float:
    """One sweep: every user-side feature's weights solved in turn, then every item
    side feature's, then the bias. Returns the loss's data part after it (the sum
    over positives of (1 - s)^2, plus the problem's `unobserved` weight times the sum
    over every pair of s^2)."""
    bias, unobserved = float(w.bias[0]), problem.unobserved
    items = _vectors(w, problem.items, own=False)
    users = _vectors(w, problem.users, own=True, bias=bias)
    _half(*_side_arrays(problem.users), w.factors, w.linear, users, items, *problem.by_user, unobserved, l2)
    # (from the weights again, not the vectors the half moved: a row of the table that
    # both sides hash to - a collision - moves the other side's vectors too)
    users = _vectors(w, problem.users, own=False, bias=bias)
    items = _vectors(w, problem.items, own=True)
    _half(*_side_arrays(problem.items), w.factors, w.linear, items, users, *problem.by_item, unobserved, l2)
    items = _vectors(w, problem.items, own=False)
    users = _vectors(w, problem.users, own=True, bias=bias)
    w.bias[0] += _bias_step(users, items, *problem.by_user, unobserved)
    users[:, -2] += float(w.bias[0]) - bias
    return _loss(users, items, *problem.by_user, unobserved)


def _side_arrays(side: Side) -> tuple:
    return side.groups, side.independent, side.features, side.ptr, side.entities, side.values


@numba.njit(cache=True, nogil=True, error_model="numpy", parallel=True)
def _half(groups, independent, features, ptr, entities, values, factors, linear, own, other, obs_ptr, obs,
          unobserved, l2):
    """Each feature of one side in turn, by groups (fmctr.datasets.pattern.Side): the
    features of an independent group share no entity, so they are solved on every
    thread at once, with the result of solving them one after another."""
    gram, mean = _gram(other)
    for g in range(len(groups) - 1):
        if independent[g]:
            for j in numba.prange(groups[g], groups[g + 1]):
                _feature(j, features, ptr, entities, values, factors, linear, own, other, obs_ptr, obs, unobserved,
                         l2, gram, mean)
        else:
            for j in range(groups[g], groups[g + 1]):
                _feature(j, features, ptr, entities, values, factors, linear, own, other, obs_ptr, obs, unobserved,
                         l2, gram, mean)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _feature(j, features, ptr, entities, values, factors, linear, own, other, obs_ptr, obs, unobserved, l2, gram,
             mean):
    """Feature j's (factors, linear weight) by one Newton step of the quadratic loss -
    exact, the loss being quadratic in them - then the own vectors of its entities
    moved to match. Only the lower triangle of the Hessian is filled (_solve reads no
    more)."""
    k = factors.shape[1]
    k1, n_other, f = k + 1, other.shape[0], features[j]
    theta, step, grad, d = np.empty(k1), np.empty(k1), np.zeros(k1), np.zeros(k1)
    hessian = np.zeros((k1, k1))
    for c in range(k):
        theta[c] = factors[f, c]
    theta[k] = linear[f]
    mass = 0.0
    for p in range(ptr[j], ptr[j + 1]):
        e, x = entities[p], values[p]
        for c in range(k):
            d[c] = own[e, c] - x * theta[c]
        _everything(hessian, grad, own[e], d, x * unobserved, x, gram, mean, n_other)
        _observed(hessian, grad, own[e], d, x, other, obs[obs_ptr[e]:obs_ptr[e + 1]])
        mass += x * x * (obs_ptr[e + 1] - obs_ptr[e] + unobserved * n_other)
    for r in range(k1):
        hessian[r, r] += l2 * mass
        grad[r] -= l2 * mass * theta[r]
    _solve(hessian, grad, step)
    for c in range(k):
        factors[f, c] = theta[c] + step[c]
    linear[f] = theta[k] + step[k]
    _move(own, entities[ptr[j]:ptr[j + 1]], values[ptr[j]:ptr[j + 1]], theta, step)


@numba.njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _everything(hessian, grad, s_own, d, weight, x, gram, mean, n_other):
    """The whole catalogue's part for one entity (weight = unobserved x): with z_j =
    other_j[:k+1] + d (d the rest of the entity's vector: the pairs with the feature's
    neighbours), sum_j z z^T = G' + d m'^T + m' d^T + n d d^T and sum_j s_j z_j =
    G[:k+1] own + d (m . own), from G = sum_j other_j other_j^T and m = sum_j other_j."""
    k1, k2 = len(grad), len(s_own)
    mo = 0.0
    for c in range(k2):
        mo += mean[c] * s_own[c]
    for r in range(k1):
        go = 0.0
        for c in range(k2):
            go += gram[r, c] * s_own[c]
        grad[r] -= weight * (go + d[r] * mo)
        for c in range(r + 1):
            hessian[r, c] += weight * x * (gram[r, c] + d[r] * mean[c] + mean[r] * d[c] + n_other * d[r] * d[c])


@numba.njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _observed(hessian, grad, s_own, d, x, other, items):
    """The positives' part for one entity: (1 - s) against 1 where the whole
    catalogue's part took s against 0."""
    k1, k2 = len(grad), len(s_own)
    for i in items:
        o = other[i]
        s = 0.0
        for c in range(k2):
            s += s_own[c] * o[c]
        for r in range(k1):
            zr = o[r] + d[r]
            grad[r] += x * (1.0 - s) * zr
            for c in range(r + 1):
                hessian[r, c] += x * x * zr * (o[c] + d[c])


@numba.njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _move(own, entities, values, theta, step):
    """The feature's entities' own vectors after its step: the vector by x step, the
    constant by x step's linear part and the pairs with the entity's other features."""
    k = len(theta) - 1
    for p in range(len(entities)):
        e, x = entities[p], values[p]
        pairs = 0.0
        for c in range(k):
            pairs += step[c] * (own[e, c] - x * theta[c])
        for c in range(k):
            own[e, c] += x * step[c]
        own[e, k] += x * step[k] + x * pairs


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _gram(other):
    """(sum_j other_j other_j^T, sum_j other_j), in loops: numba's matrix products and
    solvers need SciPy, which fmctr does not."""
    n, width = other.shape
    gram, mean = np.zeros((width, width)), np.zeros(width)
    for j in range(n):
        o = other[j]
        for r in range(width):
            mean[r] += o[r]
            for c in range(width):
                gram[r, c] += o[r] * o[c]
    return gram, mean


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _solve(a, b, out):
    """out = a^-1 b for a symmetric positive definite `a` (Cholesky; `a` is overwritten
    by its factor)."""
    n = len(b)
    for j in range(n):
        total = a[j, j]
        for c in range(j):
            total -= a[j, c] * a[j, c]
        a[j, j] = np.sqrt(max(total, 1e-300))
        for r in range(j + 1, n):
            total = a[r, j]
            for c in range(j):
                total -= a[r, c] * a[j, c]
            a[r, j] = total / a[j, j]
    for r in range(n):
        total = b[r]
        for c in range(r):
            total -= a[r, c] * out[c]
        out[r] = total / a[r, r]
    for r in range(n - 1, -1, -1):
        total = out[r]
        for c in range(r + 1, n):
            total -= a[c, r] * out[c]
        out[r] = total / a[r, r]


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _residuals(own, other, obs_ptr, obs):
    """The sum over positives of (1 - s) and of (1 - s)^2."""
    first, second = 0.0, 0.0
    for e in range(own.shape[0]):
        for q in range(obs_ptr[e], obs_ptr[e + 1]):
            s = 0.0
            for c in range(own.shape[1]):
                s += own[e, c] * other[obs[q], c]
            r = 1.0 - s
            first += r
            second += r * r
    return first, second


def _bias_step(users: np.ndarray, items: np.ndarray, obs_ptr, obs, unobserved: float) -> float:
    """The bias's exact step: every score moves with it one for one (not regularised)."""
    residual, _ = _residuals(users, items, obs_ptr, obs)
    everything = float((users @ items.sum(axis=0)).sum())
    return (residual - unobserved * everything) / (len(obs) + unobserved * len(users) * len(items))


def _loss(users: np.ndarray, items: np.ndarray, obs_ptr, obs, unobserved: float) -> float:
    _, squares = _residuals(users, items, obs_ptr, obs)
    gram = items.T @ items
    return float(squares + unobserved * np.einsum("ua,ab,ub->", users, gram, users))
