"""Chunks of raw rows in, hashed rows out: the one way every command hashes raw data.

A chunk of unquoted delimited text (TSV, Criteo, and CSV when the chunk holds no quote)
goes through the one-pass kernels (fmctr.hashing.onepass) when the schema allows and the
chunk is big enough to pay for loading them (numba's start-up is most of the time of a
command on a few rows); anything else, or a chunk the kernels give up on, goes the
columnar way (fmctr.hashing.tokens), which computes the same indices and also words the
errors. Rare values (--min-count) are mapped here and nowhere else, and rows are
scaled to the schema's norm (fmctr.hashing.rownorm) here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import polars as pl

from fmctr.errors import BadInput
from fmctr.hashing import rownorm
from fmctr.hashing.rare import RareMap
from fmctr.hashing.tokens import HashSpec, Rows, hash_chunk
from fmctr.reading.read import Chunk, RawChunk, Source, prefetch
from fmctr.reading.schema import SPARSE_FORMATS, Schema

ONE_PASS_MIN_BYTES = 1 << 20  # smaller chunks go the columnar way


class Hasher:
    """Hashes one chunk at a time into (rows, the --keep columns or None)."""

    def __init__(self, source: Source, schema: Schema, hashing: HashSpec, *, name: str, require_label: bool,
                 keep: Sequence[str] = (), missing: Sequence[str] = (), rare: RareMap | None = None):
        self.source, self.schema, self.hashing, self.name = source, schema, hashing, name
        self.require_label, self.keep, self.missing, self.rare = require_label, list(keep), list(missing), rare
        self.plan = None  # the one-pass kernels' plan, made at the first chunk that may use it
        self.one_pass = source.format in ("tsv", "csv", "criteo") and not missing

    def __call__(self, chunk: Chunk | RawChunk) -> tuple[Rows, pl.DataFrame | None]:
        rows, kept = self._hash(chunk)
        if self.schema.row_norm is not None:
            rows = rownorm.scaled(rows, self.schema.row_norm)
        return (rows if self.rare is None else self.rare.apply(rows)), kept

    def _hash(self, chunk: Chunk | RawChunk) -> tuple[Rows, pl.DataFrame | None]:
        if isinstance(chunk, Chunk):
            return self._columnar(chunk)
        # (CSV: a chunk without a quote splits as TSV does, on its own separator)
        if self.one_pass and len(chunk.data) >= ONE_PASS_MIN_BYTES and not (self.source.quoted and b'"' in chunk.data):
            hashed = self._one_pass(chunk.data)
            if hashed is not None:
                return hashed
        pieces = [self._columnar(c) for c in chunk.parse(self.name, self.source.columns, self.source.separator,
                                                          self.source.quoted)]
        kept = [k for _, k in pieces if k is not None]
        return Rows.concat([r for r, _ in pieces]), (pl.concat(kept) if kept else None)

    def _one_pass(self, data: bytes) -> tuple[Rows, pl.DataFrame | None] | None:
        from fmctr.hashing import onepass

        if self.plan is None:
            applies = onepass.Plan.applies(self.schema)
            self.plan = onepass.Plan(self.schema, self.hashing, self.source.columns, self.require_label) if applies else None
            self.one_pass = applies and self.plan.ok
        return onepass.hash_bytes(data, self.plan, self.source.separator, self.keep) if self.one_pass else None

    def _columnar(self, chunk: Chunk) -> tuple[Rows, pl.DataFrame | None]:
        if self.missing:
            chunk.frame = chunk.frame.with_columns(pl.lit("").alias(m) for m in self.missing)
        rows = hash_chunk(chunk, self.schema, self.hashing, name=self.name, columns=self.source.columns,
                          require_label=self.require_label)
        return rows, (chunk.frame.select(self.keep) if self.keep else None)

    def parts(self) -> Iterator[tuple[Rows, pl.DataFrame | None]]:
        """Every chunk of the source, hashed, in order (read one chunk ahead)."""
        total = 0
        for chunk in prefetch(self.source.chunks):
            rows, kept = self(chunk)
            total += len(rows)
            yield rows, kept
        if total == 0:
            sparse = self.source.format in SPARSE_FORMATS
            raise BadInput(f"{self.name}: no data rows" + ("" if sparse or self.source.format == "criteo" else " (only a header)"))
