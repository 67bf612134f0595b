"""Opening an input, raw or hashed, as one stream of hashed rows: the path every
command (train, eval, predict, preprocess, tune) takes from a file to rows.

    raw file:      reading.read.open_source -> schema -> hashing.stream.Hasher -> rows
    hashed data:   datasets.hashed parts (rare values mapped by the same RareMap) -> rows
"""

from __future__ import annotations

import difflib
import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import polars as pl

from fmctr.datasets import hashed as dataset
from fmctr.errors import BadInput, BadOptions, BadSchema
from fmctr.hashing import rownorm, standard
from fmctr.hashing.rare import RareMap
from fmctr.hashing.stream import Hasher
from fmctr.hashing.tokens import HashSpec, Rows
from fmctr.reading.read import LINE_COLUMN, display_name, open_source, prefetch
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
               rare: RareMap | None = None, allow_missing: bool = False, format: str | None = None,
               tokens: bool = False, refit: bool = False) -> Input:
    """Open raw data (hashed on the fly) or a hashed dataset. Give `spec` to resolve
    a schema against the data's columns (and fit its standardised values on the
    first 65,536 rows: fmctr.hashing.standard), or `schema` (from a model) to apply it;
    `rare` (a model's --min-count map) maps rare values to their field's rare token.
    Data lacking more than half of the schema's feature columns is refused unless
    `allow_missing` (those columns then count as missing in every row). `format`
    overrides the schema's format. `tokens` also passes through, after the `keep`
    columns, the text every feature is hashed from (the feature columns, or the line
    of libsvm/libffm data), so that indices can be named (raw data only). `refit`
    fits a given schema's standardised values and row_norm again (its fields hash
    otherwise than those it was fitted for)."""
    if dataset.is_hashed(path):
        if tokens:
            raise BadOptions(f"{display_name(path)}: a hashed dataset keeps no tokens, only indices; give the raw data")
        return _open_hashed(path, schema=schema, hashing=hashing, keep=keep, rare=rare)
    name = display_name(path)
    hashing = hashing or HashSpec(bits=DEFAULT_BITS)
    fmt_source = schema if schema is not None else spec
    source = open_source(path, format=format or fmt_source.format, column_names=fmt_source.column_names)
    if schema is None:
        if source.format in SPARSE_FORMATS and spec.format is None:
            spec = replace(spec, format=source.format)  # sniffed: libsvm/libffm have no columns
        try:
            schema = spec.resolve(source.columns)
        except BadSchema as e:
            raise BadSchema(f"{name}: {e}") from None
        schema, source = standard.fit(schema, source)
        if spec.row_norm:
            schema, source = rownorm.fit(schema, source, hashing, name)
    elif refit:
        schema, source = standard.fit(schema, source)
        if schema.row_norm is not None:
            schema, source = rownorm.fit(replace(schema, row_norm=None), source, hashing, name)
    missing = _check_columns(name, source.format, source.columns, schema, require_label, keep)
    if missing:
        _missing_features(name, missing, schema, source.columns, allow_missing, log)
    if tokens:
        keep = [*keep, *[c for c in token_columns(schema) if c not in keep]]
    hasher = Hasher(source, schema, hashing, name=name, require_label=require_label, keep=keep, missing=missing,
                    rare=rare)
    return Input(name, schema, hashing, prefetch(hasher.parts()))


def token_columns(schema: Schema) -> list[str]:
    """The columns whose text a row's features are hashed from."""
    return [LINE_COLUMN] if schema.format in SPARSE_FORMATS else schema.feature_names


def _check_columns(name: str, fmt: str, columns: list[str], schema: Schema, require_label: bool,
                   keep: Sequence[str]) -> list[str]:
    """Refuse data that does not fit the schema; return the feature columns it lacks."""
    sparse = fmt in SPARSE_FORMATS
    if sparse != (schema.format in SPARSE_FORMATS):
        raise BadSchema(f"{name}: {fmt} data does not fit a schema for {schema.format or 'columnar'} data")
    if require_label and not sparse and schema.label not in columns:
        raise BadInput(f"{name}: label column {schema.label!r} not found (columns: {_short(columns)})"
                       + _label_hint(schema.label, columns))
    absent_keep = [k for k in keep if k not in columns]
    if absent_keep:
        raise BadInput(f"{name}: --keep column(s) {', '.join(absent_keep)} not found (columns: {_short(columns)})")
    return [] if sparse else [f for f in schema.feature_names if f not in columns]


def _short(names: list[str], most: int = 10) -> str:
    return ", ".join(names[:most]) + (", ..." if len(names) > most else "")


LABEL_NAMES = ("label", "click", "clicked", "target", "y", "is_click", "income", "rating")


def _label_hint(label: str, columns: list[str]) -> str:
    """'; did you mean --label X' for a near miss or a usual label name; Avazu's
    columns suggest its preset."""
    close = difflib.get_close_matches(label, columns, n=1, cutoff=0.75)
    if close:
        return f"; did you mean --label {close[0]}?"
    if {"id", "click", "hour"} <= set(columns):
        return "; Avazu data: try --preset avazu (or --label click)"
    usual = [c for c in columns if c.lower() in LABEL_NAMES]
    return f"; give it with --label, e.g. --label {usual[0]}" if usual else "; name it with --label"


def _missing_features(name: str, missing: list[str], schema: Schema, columns: list[str], allow: bool,
                      log: Log) -> None:
    """Warn about a few missing feature columns; refuse data lacking most of them,
    which would score every row alike."""
    features = schema.feature_names
    if allow or 2 * len(missing) <= len(features):
        log(f"warning: {name}: column(s) {', '.join(missing)} missing; treated as missing values")
        return
    what = "none" if len(missing) == len(features) else f"only {len(features) - len(missing)} of {len(features)}"
    raise BadInput(f"{name}: has {what} of the model's feature columns (missing: {_short(missing, 8)}; the data has "
                   f"{_short(columns, 8)}); wrong model or file? --allow-missing-columns scores it anyway")


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
