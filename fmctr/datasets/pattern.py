"""Positives as a pattern: the users x items matrix of who has what, kept sparse, with
each side's entities (distinct users; the catalogue's items) and their features by
feature, as implicit ALS (fmctr.models.ials) solves one feature at a time."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fmctr.hashing.tokens import Rows


@dataclass
class Side:
    """One side's entities (distinct users, or the catalogue's items), their rows, and
    their features by feature: `features` the distinct indices, and for feature j its
    entities `entities[ptr[j]:ptr[j+1]]` with their values. The features come in
    groups, features[groups[g]:groups[g+1]]: in a group whose `independent[g]` is
    set, no entity has two of its features (a categorical field's values: each row
    holds one, at the same place), so they can be solved at once with the result of
    solving them in turn; the last group holds the rest (bags' tokens, a feature met at
    several places)."""

    rows: Rows
    features: np.ndarray  # int64
    ptr: np.ndarray
    entities: np.ndarray
    values: np.ndarray  # float64
    groups: np.ndarray  # int64, group boundaries in features
    independent: np.ndarray  # bool, per group

    @classmethod
    def of(cls, rows: Rows) -> Side:
        entity = np.repeat(np.arange(len(rows)), np.diff(rows.offsets))
        slot = np.arange(len(rows.indices)) - rows.offsets[entity]
        order = np.argsort(rows.indices, kind="stable")
        ordered = rows.indices[order].astype(np.int64)
        features, starts = np.unique(ordered, return_index=True)
        ptr = np.append(starts, len(ordered)).astype(np.int64)
        entities, values, slots = entity[order].astype(np.int64), rows.values[order].astype(np.float64), slot[order]
        group = _slot_of_each(ptr, slots)
        by_group = np.r_[np.flatnonzero(group >= 0)[np.argsort(group[group >= 0], kind="stable")],
                         np.flatnonzero(group < 0)]  # (the rest last)
        rank = np.empty(len(features), np.int64)
        rank[by_group] = np.arange(len(features))
        take = np.argsort(rank[np.repeat(np.arange(len(features)), np.diff(ptr))], kind="stable")
        new_ptr = np.zeros(len(features) + 1, np.int64)
        np.cumsum(np.diff(ptr)[by_group], out=new_ptr[1:])
        keys = group[by_group]
        bounds = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1], True]) if len(keys) else np.zeros(1, np.int64)
        independent = keys[bounds[:-1]] >= 0
        return cls(rows, features[by_group], new_ptr, entities[take], values[take], bounds.astype(np.int64),
                   independent)


def _slot_of_each(ptr: np.ndarray, slots: np.ndarray) -> np.ndarray:
    """Per feature, the one place in a row where it is always met, or -1. (Met always
    at one place, a feature is met once per entity: a row holds one value a place.)"""
    out = np.full(len(ptr) - 1, -1, np.int64)
    if len(out):
        same = np.minimum.reduceat(slots, ptr[:-1]) == np.maximum.reduceat(slots, ptr[:-1])
        out[same] = slots[ptr[:-1]][same]
    return out


@dataclass
class Problem:
    """The positives as a users x items pattern, and both sides."""

    users: Side
    items: Side
    by_user: tuple[np.ndarray, np.ndarray]  # (ptr, item) of each user's positives
    by_item: tuple[np.ndarray, np.ndarray]  # (ptr, user) of each item's positives
    unobserved: float  # the weight of every pair that is not a positive (fmctr.models.ials)

    @classmethod
    def of(cls, context: Rows, keys: np.ndarray, items: np.ndarray, catalogue: Rows, *,
           unobserved: float) -> Problem:
        """`context[p]` is positive p's user row, `keys[p]` a small integer per
        distinct user (the row of the user's first positive stands for the user),
        `items[p]` its catalogue row. A pair met twice counts once."""
        users, first = np.unique(keys, return_index=True)
        at = np.searchsorted(users, keys)
        pairs = np.unique(at.astype(np.int64) * len(catalogue) + items)
        u, i = pairs // len(catalogue), pairs % len(catalogue)
        return cls(Side.of(context.take(first)), Side.of(catalogue), _csr(u, i, len(users)),
                   _csr(i, u, len(catalogue)), unobserved)


def _csr(rows: np.ndarray, cols: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(rows, kind="stable")
    ptr = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(rows, minlength=n), out=ptr[1:])
    return ptr, cols[order].astype(np.int64)
