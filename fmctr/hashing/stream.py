"""Chunks of raw rows in, hashed rows out: the one way every command hashes raw data.

A chunk of unquoted delimited text goes through the one-pass kernels
(fmctr.hashing.onepass) when the schema allows; anything else, or a chunk the
kernels give up on, goes the columnar way (fmctr.hashing.tokens), which also words
the errors. Rare values (--min-count) are mapped here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import polars as pl

from fmctr.errors import BadInput
from fmctr.hashing import onepass
from fmctr.hashing.rare import RareMap
from fmctr.hashing.tokens import HashSpec, Rows, hash_chunk
from fmctr.reading.read import Chunk, RawChunk, Source, prefetch
from fmctr.reading.schema import SPARSE_FORMATS, Schema


class Hasher:
    """Hashes one chunk at a time into (rows, the --keep columns or None)."""

    def __init__(self, source: Source, schema: Schema, hashing: HashSpec, *, name: str, require_label: bool,
                 keep: Sequence[str] = (), missing: Sequence[str] = (), rare: RareMap | None = None):
        self.source, self.schema, self.hashing, self.name = source, schema, hashing, name
        self.require_label, self.keep, self.missing, self.rare = require_label, list(keep), list(missing), rare
        self.plan = None
        if source.format in ("tsv", "criteo") and onepass.Plan.applies(schema) and not keep and not missing:
            plan = onepass.Plan(schema, hashing, source.columns, require_label)
            self.plan = plan if plan.ok else None

    def __call__(self, chunk: Chunk | RawChunk) -> tuple[Rows, pl.DataFrame | None]:
        rows, kept = self._hash(chunk)
        return (rows if self.rare is None else self.rare.apply(rows)), kept

    def _hash(self, chunk: Chunk | RawChunk) -> tuple[Rows, pl.DataFrame | None]:
        if isinstance(chunk, Chunk):
            return self._columnar(chunk)
        rows = onepass.hash_bytes(chunk.data, self.plan, self.source.separator) if self.plan is not None else None
        if rows is not None:
            return rows, None
        pieces = [self._columnar(c) for c in chunk.parse(self.name, self.source.columns, self.source.separator,
                                                          self.source.quoted)]
        kept = [k for _, k in pieces if k is not None]
        return Rows.concat([r for r, _ in pieces]), (pl.concat(kept) if kept else None)

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
