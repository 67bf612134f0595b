"""The FM split into a user tower and an item tower, for recall.

With the item fields I (the schema's `item`) and every other field U (user and
context), the FM's logit of a user row u joined with an item row i is

    logit(u, i) = [bias + sum_U w x + pairs within U]  +  [sum_I w x + pairs within I]
                  + < sum_U v x , sum_I v x >

because the pairs across the two sides sum to the inner product of the sides' factor
sums. So with

    user vector  (sum_U v x, 1)                       user constant  c_u = the first bracket
    item vector  (sum_I v x, sum_I w x + pairs in I)

logit(u, i) = c_u + <user vector, item vector> exactly, and ranking items for a user
is a maximum inner product search (fmctr.models.retrieval). Each bracket is the FM of
that side's features alone: `side_terms` computes it as the FM's logit without bias.

Everything here is numpy (no numba kernel): recall of a small catalogue is over before
a kernel would have loaded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fmctr.hashing.tokens import Rows
from fmctr.models.weights import FMWeights


def factor_sums(w: FMWeights, rows: Rows) -> tuple[np.ndarray, np.ndarray]:
    """Per row: (sum_i v_i x_i as (n, dim) float64, sum_i |v_i x_i|^2 as (n,) float64)."""
    n = len(rows)
    scaled = w.factors[rows.indices].astype(np.float64) * rows.values[:, None]
    sums = np.zeros((n, w.dim), np.float64)
    squares = np.zeros(n, np.float64)
    filled = np.flatnonzero(np.diff(rows.offsets) > 0)  # reduceat would give an empty row its next row's value
    if len(filled) and w.dim:
        starts = rows.offsets[filled]
        sums[filled] = np.add.reduceat(scaled, starts, axis=0)
        squares[filled] = np.add.reduceat((scaled * scaled).sum(axis=1), starts)
    return sums, squares


def linear_sums(w: FMWeights, rows: Rows) -> np.ndarray:
    """Per row: sum_i w_i x_i (float64)."""
    terms = w.linear[rows.indices].astype(np.float64) * rows.values
    out = np.zeros(len(rows), np.float64)
    filled = np.flatnonzero(np.diff(rows.offsets) > 0)
    if len(filled):
        out[filled] = np.add.reduceat(terms, rows.offsets[filled])
    return out


def side_terms(w: FMWeights, rows: Rows) -> tuple[np.ndarray, np.ndarray]:
    """(factor sums (n, dim), the FM of the rows' features alone without the bias (n,))."""
    sums, squares = factor_sums(w, rows)
    pairs = 0.5 * ((sums * sums).sum(axis=1) - squares)
    return sums, linear_sums(w, rows) + pairs


@dataclass
class UserSide:
    """Users' vectors (n, dim+1) float32 and constants c_u (n,) float64."""

    vectors: np.ndarray
    constants: np.ndarray


def user_side(w: FMWeights, rows: Rows) -> UserSide:
    """Rows hashed with the schema's user side (Schema.side(item=False))."""
    sums, terms = side_terms(w, rows)
    vectors = np.empty((len(rows), w.dim + 1), np.float32)
    vectors[:, :-1] = sums
    vectors[:, -1] = 1.0
    return UserSide(vectors, float(w.bias[0]) + terms)


def item_vectors(w: FMWeights, rows: Rows) -> np.ndarray:
    """(m, dim+1) float32 item vectors of rows hashed with the item side (Schema.side(item=True))."""
    sums, terms = side_terms(w, rows)
    vectors = np.empty((len(rows), w.dim + 1), np.float32)
    vectors[:, :-1] = sums
    vectors[:, -1] = terms
    return vectors
