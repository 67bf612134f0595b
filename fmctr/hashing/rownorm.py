"""Rows of different lengths brought to one norm (instance normalisation), for data
with a multi-valued field.

A bag of words or tags makes rows of very different lengths: a review of 100 words
holds 100 features where a short one holds 10, so its linear sum is ten times larger and
its pair sum (about n^2 / 2 pairs) a hundred times. libffm and xLearn scale every row to
unit length for that reason. fmctr scales a row's values so that its squared norm is

    row_norm = the mean squared norm of the training rows (the first FIT_ROWS rows),

stored in the schema, so eval and predict scale as training did. A row of average length
keeps its values; so would every row of fixed-width data, which is why only a schema
with a multi-valued field gets a row_norm (and never a recall model: a row scaled as a
whole would no longer split into a user vector and an item vector).
"""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np

from fmctr.hashing.standard import FIT_ROWS, parsed
from fmctr.hashing.tokens import HashSpec, Rows, hash_chunk
from fmctr.reading.read import Source
from fmctr.reading.schema import Schema


def squared_norms(rows: Rows) -> np.ndarray:
    """Each row's sum of squared values (float64)."""
    sums = np.zeros(len(rows.values) + 1)
    np.cumsum(np.square(rows.values, dtype=np.float64), out=sums[1:])
    at = rows.offsets - rows.offsets[0]
    return sums[at[1:]] - sums[at[:-1]]


def scaled(rows: Rows, row_norm: float) -> Rows:
    """The rows with each one's values scaled to the squared norm row_norm (a row
    without a nonzero value is left as it is)."""
    norms = squared_norms(rows)
    scale = np.sqrt(row_norm / np.where(norms > 0, norms, row_norm))
    values = (rows.values * np.repeat(scale, np.diff(rows.offsets))).astype(np.float32)
    return replace(rows, values=values)


def fit(schema: Schema, source: Source, spec: HashSpec, name: str) -> tuple[Schema, Source]:
    """The schema with row_norm set when it has a multi-valued field and no recall
    towers; and the source with the rows read to fit on still to come."""
    if schema.has_towers or not any(f.kind == "multi" for f in schema.fields):
        return schema, source
    ahead, norms, rows = [], [], 0
    for chunk in source.chunks:
        ahead.append(chunk)
        for piece in parsed(chunk, source):
            hashed = hash_chunk(piece, schema, spec, name=name, columns=source.columns, require_label=False)
            norms.append(squared_norms(hashed))
            rows += len(hashed)
        if rows >= FIT_ROWS:
            break
    source = replace(source, chunks=itertools.chain(ahead, source.chunks))
    norms = np.concatenate(norms) if norms else np.zeros(0)
    norms = norms[norms > 0]
    return (replace(schema, row_norm=float(norms.mean())) if len(norms) else schema), source
