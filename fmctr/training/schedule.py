"""The epoch's schedule: the shuffled blocks of a row source, cut into pieces (for
validation every so many rows, or replica syncs), numbered so that a resumed run
skips the pieces it trained before with the same RNG draws."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np


def pieces(blocks, rows: int | None):
    """The shuffled (rows, order) blocks, cut into pieces of at most `rows` rows."""
    for block, order in blocks:
        step = rows or len(order)
        for lo in range(0, len(order), step):
            yield block, order[lo : lo + step]


def epoch_pieces(source, rng: np.random.Generator, *, piece_rows: int | None, skip: int,
                 sync=None) -> Iterator[tuple[int, tuple | None]]:
    """(number, piece) for the epoch's pieces after the first `skip`. Under `sync`, a
    rank whose rows are done gets (number, None) until every rank is done."""
    shuffled = pieces(source.shuffled(rng), piece_rows)
    for number in itertools.count():
        piece = next(shuffled, None)
        if sync is not None:
            if not sync.any(piece is not None):
                return  # every rank is done with this epoch
        elif piece is None:
            return
        if number >= skip:  # the pieces before were trained before an interruption
            yield number, piece
