"""Opening an input, raw or hashed, as one stream of hashed rows: the path every
command (train, eval, predict, preprocess, tune) takes from a file to rows.

    raw file:      reading.read.open_source -> schema -> hashing.stream.Hasher -> rows
    hashed data:   datasets.hashed parts (rare values mapped by the same RareMap) -> rows
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import polars as pl

from fmctr.datasets import hashed as dataset
from fmctr.errors import BadInput, BadOptions, BadSchema
from fmctr.hashing.rare import RareMap
from fmctr.hashing.stream import Hasher
from fmctr.hashing.tokens import HashSpec, Rows
from fmctr.reading.read import display_name, open_source, prefetch
from fmctr.reading.schema import SPARSE_FORMATS, Schema, SchemaSpec

Log = Callable[[str], None]
DEFAULT_BITS = 22


def silent(message: str) -> None:
    pass


@dataclass
class Input:
    """An opened input, raw or hashed: its schema, hashing spec, and a stream of
    (hashed rows, passed-through columns) parts."""

    name: str
    schema: Schema
    hashing: HashSpec
    parts: Iterator[tuple[Rows, pl.DataFrame | None]]
    shards: list[dataset.HashedDataset] | None = None  # when the input is hashed already

    def all_rows(self) -> Rows:
        return Rows.concat([rows for rows, _ in self.parts])


def open_input(path: str, *, spec: SchemaSpec | None = None, schema: Schema | None = None,
               hashing: HashSpec | None = None, require_label: bool, keep: Sequence[str] = (), log: Log = silent,
               rare: RareMap | None = None) -> Input:
    """Open raw data (hashed on the fly) or a hashed dataset. Give `spec` to resolve
    a schema against the data's columns, or `schema` (from a model) to apply it;
    `rare` (a model's --min-count map) maps rare values to their field's rare token."""
    if dataset.is_hashed(path):
        return _open_hashed(path, schema=schema, hashing=hashing, keep=keep, rare=rare)
    name = display_name(path)
    hashing = hashing or HashSpec(bits=DEFAULT_BITS)
    fmt_source = schema if schema is not None else spec
    source = open_source(path, format=fmt_source.format, column_names=fmt_source.column_names)
    if schema is None:
        if source.format in SPARSE_FORMATS and spec.format is None:
            spec = replace(spec, format=source.format)  # sniffed: libsvm/libffm have no columns
        schema = spec.resolve(source.columns)
    missing = _check_columns(name, source.format, source.columns, schema, require_label, keep)
    if missing:
        log(f"warning: {name}: column(s) {', '.join(missing)} missing; treated as missing values")
    hasher = Hasher(source, schema, hashing, name=name, require_label=require_label, keep=keep, missing=missing,
                    rare=rare)
    return Input(name, schema, hashing, prefetch(hasher.parts()))


def _check_columns(name: str, fmt: str, columns: list[str], schema: Schema, require_label: bool,
                   keep: Sequence[str]) -> list[str]:
    """Refuse data that does not fit the schema; return the feature columns it lacks."""
    sparse = fmt in SPARSE_FORMATS
    if sparse != (schema.format in SPARSE_FORMATS):
        raise BadSchema(f"{name}: {fmt} data does not fit a schema for {schema.format or 'columnar'} data")
    if require_label and not sparse and schema.label not in columns:
        raise BadInput(f"{name}: label column {schema.label!r} not found (columns: {', '.join(columns[:10])}{', ...' if len(columns) > 10 else ''})")
    absent_keep = [k for k in keep if k not in columns]
    if absent_keep:
        raise BadInput(f"{name}: --keep column(s) {', '.join(absent_keep)} not found")
    return [] if sparse else [f for f in schema.feature_names if f not in columns]


def _open_hashed(path: str, *, schema: Schema | None, hashing: HashSpec | None, keep: Sequence[str],
                 rare: RareMap | None) -> Input:
    name = display_name(path)
    shards = dataset.open_many(path)
    ds = shards[0]
    if keep:
        raise BadOptions(f"{name}: a hashed dataset has no columns to --keep; predict from the raw data")
    if hashing is not None and hashing != ds.hashing:
        raise BadOptions(
            f"{name}: hashed with bits={ds.hashing.bits} seed={ds.hashing.seed}, "
            f"but bits={hashing.bits} seed={hashing.seed} were asked for"
        )
    if schema is not None and schema.fields != ds.schema.fields:
        raise BadSchema(f"{name}: the hashed dataset's schema differs from the model's")
    parts = ((rows if rare is None else rare.apply(rows), None) for shard in shards for rows in shard.iter_parts())
    return Input(name, ds.schema, ds.hashing, parts, shards)


FINGERPRINT_BYTES = 1 << 16


def fingerprint(path: str) -> str | None:
    """A cheap identity of an input, to tell whether a resumed run reads the data it
    started on: the size and a hash of the first and last 64 KiB of a raw file, or a
    hash of the manifests of hashed data (they count each part's rows, indices and
    positives). None for stdin or what cannot be read (opening it will say why)."""
    if path == "-":
        return None
    h = hashlib.sha256()
    try:
        shards = dataset.hashed_paths(path)
        if shards is not None:
            for shard in shards:
                h.update((shard / dataset.MANIFEST).read_bytes())
            return f"manifests:{h.hexdigest()}"
        with open(path, "rb") as f:
            size = Path(path).stat().st_size
            h.update(f.read(FINGERPRINT_BYTES))
            f.seek(max(0, size - FINGERPRINT_BYTES))
            h.update(f.read(FINGERPRINT_BYTES))
        return f"{size}:{h.hexdigest()}"
    except OSError:
        return None
