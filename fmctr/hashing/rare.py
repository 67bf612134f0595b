"""Rare values (`--min-count N`): a value seen fewer than N times in the training rows
becomes its field's one rare token, `__rare__`, as the Criteo winners did.

Counting happens on hashed rows (one pass over the training data, in index space);
the frequent set is a bit per index and travels in the model file, so predict and
eval map new data the same way. A value never seen in training is rare too: it gets
the learned weight of its field's rare values instead of nothing.

Mapping needs each feature's field. Rows hashed from columnar data hold one index per
single-valued field, in schema order, so a feature's position in its row names its
field; libsvm/libffm rows have one field. Multi-valued fields (bags of any length)
break that, so they are not supported here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from fmctr.errors import BadInput, BadOptions
from fmctr.hashing.tokens import HashSpec, Rows, token_index
from fmctr.reading.schema import SPARSE_FIELD, SPARSE_FORMATS, Schema

if TYPE_CHECKING:  # only a type: rows to count come from any row source
    from fmctr.datasets.batches import RowSource

RARE_TOKEN = "__rare__"


def check_schema(schema: Schema) -> None:
    multi = [f.name for f in schema.fields if f.kind == "multi"]
    if multi and schema.format not in SPARSE_FORMATS:
        raise BadOptions(f"--min-count does not support multi-valued fields yet (field {multi[0]!r})")


def field_names(schema: Schema) -> list[str]:
    """The field of each position in a row (Schema.segments: no bags here)."""
    if schema.format in SPARSE_FORMATS:
        return [SPARSE_FIELD]
    return [schema.fields[j].name for j, _ in schema.segments()]


@dataclass
class RareMap:
    min_count: int
    frequent: np.ndarray  # bool per index: seen at least min_count times in training
    rare_index: np.ndarray  # int32 per position in a row: that field's __rare__ index
    positional: bool  # False for libsvm/libffm: every position is the one field

    @classmethod
    def build(cls, counts: np.ndarray, min_count: int, schema: Schema, hashing: HashSpec) -> RareMap:
        check_schema(schema)
        frequent = counts >= min_count
        rare_index = np.array([token_index(f, RARE_TOKEN, hashing) for f in field_names(schema)], np.int32)
        return cls(min_count, frequent, rare_index, schema.format not in SPARSE_FORMATS)

    @classmethod
    def count(cls, rows: RowSource, min_count: int, schema: Schema, hashing: HashSpec) -> RareMap:
        """The map for these (training) rows: one counting pass."""
        check_schema(schema)
        return cls.build(rows.feature_counts(hashing.size), min_count, schema, hashing)

    @classmethod
    def from_packed(cls, min_count: int, packed: np.ndarray, size: int, schema: Schema, hashing: HashSpec) -> RareMap:
        frequent = np.unpackbits(packed, count=size).astype(np.bool_)
        rare_index = np.array([token_index(f, RARE_TOKEN, hashing) for f in field_names(schema)], np.int32)
        return cls(min_count, frequent, rare_index, schema.format not in SPARSE_FORMATS)

    def packed(self) -> np.ndarray:
        return np.packbits(self.frequent)

    def apply(self, rows: Rows) -> Rows:
        """The rows with every rare index replaced by its field's rare index. Applying
        it twice changes nothing more (a rare index maps to itself)."""
        if self.positional and len(rows) and int(np.diff(rows.offsets).max()) > len(self.rare_index):
            raise BadInput(f"a row has more features than the schema's {len(self.rare_index)} fields")
        rare = self.rare_index[0] if not self.positional else self.rare_index[_positions(rows.offsets)]
        indices = np.where(self.frequent[rows.indices], rows.indices, rare).astype(np.int32, copy=False)
        return Rows(indices, rows.values, rows.offsets, rows.labels)


def _positions(offsets: np.ndarray) -> np.ndarray:
    """Each feature's position within its row."""
    nnz = int(offsets[-1])
    return np.arange(nnz, dtype=np.int64) - np.repeat(offsets[:-1].astype(np.int64), np.diff(offsets))
