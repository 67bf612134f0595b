"""Stateless, field-aware feature hashing: string columns in, sparse rows (CSR) out.

The index of a token is

    index(field, token) = xxh64(utf8(token), seed=field_seed(field)) mod 2^bits
    field_seed(field)   = xxh64(utf8(field), seed=hash_seed) & (2^63 - 1)

xxHash64 is a published, versioned algorithm (computed here by polars-hash, checked
against the `xxhash` package in the golden-vector tests), so an index depends only on
(field, token, seed, bits): any shard can be hashed anywhere, in any order, and a model
scores data it has never seen without a vocabulary. The same token in two fields gets
two indices because the fields' seeds differ. A missing value (empty or null) is the
empty token "" of its field.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import polars as pl
import polars_hash  # noqa: F401  (registers the .nchash expression namespace)
import xxhash

from fmctr.errors import BadInput, BadSchema
from fmctr.reading.read import LINE_COLUMN, Chunk
from fmctr.hashing.standard import z_values
from fmctr.reading.schema import BUCKETED, FINE, SPARSE_FORMATS, Field, Schema

HASH_FUNCTION = "xxhash64"
MISSING = ""
VALUE_TOKEN = "__value__"  # the one index a value-weighted numeric field puts its value on
MAX_BITS = 31
TRUE_LABELS = ("1", "+1", "1.0")
FALSE_LABELS = ("0", "-1", "0.0", "-1.0")


@dataclass(frozen=True)
class HashSpec:
    bits: int = 22
    seed: int = 0
    function: str = HASH_FUNCTION

    def check(self) -> HashSpec:
        if not 1 <= self.bits <= MAX_BITS:
            raise BadSchema(f"--bits must be between 1 and {MAX_BITS}, got {self.bits}")
        if self.function != HASH_FUNCTION:
            raise BadSchema(f"unknown hash function {self.function!r} (this fmctr knows {HASH_FUNCTION})")
        if not 0 <= self.seed < 2**63:
            raise BadSchema(f"--hash-seed must be between 0 and 2^63-1, got {self.seed}")
        return self

    @property
    def size(self) -> int:
        return 1 << self.bits

    def to_dict(self) -> dict:
        return {"bits": self.bits, "seed": self.seed, "function": self.function}


def field_seed(field: str, seed: int) -> int:
    return xxhash.xxh64_intdigest(field.encode("utf-8"), seed=seed) & (2**63 - 1)


def token_index(field: str, token: str, spec: HashSpec) -> int:
    """The reference definition, one token at a time (the columnar path must agree)."""
    return xxhash.xxh64_intdigest(token.encode("utf-8"), seed=field_seed(field, spec.seed)) & (spec.size - 1)


_ONES: list[np.ndarray] = []  # float32 buffers of ones, largest last


def ones(n: int) -> np.ndarray:
    """n float32 ones: a view of a shared buffer, so one-hot rows cost no allocation,
    no fill and no check (see is_ones). Never write into Rows.values. (The buffer is
    not flagged read-only: numba would compile every kernel again for that type.)"""
    if not _ONES or len(_ONES[-1]) < n:
        buffer = np.ones(max(n, 2 * len(_ONES[-1]) if _ONES else 1 << 20), np.float32)
        _ONES.append(buffer)
    return _ONES[-1][:n]


def is_ones(values: np.ndarray) -> bool:
    """Whether `values` came from ones() (cheap; False says nothing)."""
    return values.base is not None and any(values.base is b for b in _ONES)


@dataclass
class Rows:
    """Hashed rows in CSR form: row r's features are indices[offsets[r]:offsets[r+1]]
    with values values[...]; labels are 0/1 (None where the input had none)."""

    indices: np.ndarray  # int32
    values: np.ndarray  # float32
    offsets: np.ndarray  # int64, length n + 1
    labels: np.ndarray | None  # float32

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def slice(self, start: int, stop: int) -> Rows:
        lo, hi = self.offsets[start], self.offsets[stop]
        return Rows(
            self.indices[lo:hi],
            self.values[lo:hi],
            self.offsets[start : stop + 1] - lo,
            None if self.labels is None else self.labels[start:stop],
        )

    def take(self, rows: np.ndarray) -> Rows:
        """The given rows, in the given order."""
        lengths = np.diff(self.offsets)[rows]
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        gather = np.repeat(self.offsets[:-1][rows] - offsets[:-1], lengths) + np.arange(offsets[-1])
        return Rows(
            self.indices[gather],
            ones(len(gather)) if is_ones(self.values) else self.values[gather],
            offsets,
            None if self.labels is None else self.labels[rows],
        )

    @staticmethod
    def concat(parts: list[Rows]) -> Rows:
        if len(parts) == 1:
            return parts[0]
        if not parts:
            return Rows(np.zeros(0, np.int32), np.zeros(0, np.float32), np.zeros(1, np.int64), None)
        starts = np.cumsum([0] + [p.offsets[-1] for p in parts[:-1]])
        offsets = np.concatenate([parts[0].offsets[:1]] + [p.offsets[1:] + s for p, s in zip(parts, starts)])
        labels = None if any(p.labels is None for p in parts) else np.concatenate([p.labels for p in parts])
        every_one = all(is_ones(p.values) for p in parts)
        return Rows(
            np.concatenate([p.indices for p in parts]),
            ones(int(offsets[-1])) if every_one else np.concatenate([p.values for p in parts]),
            offsets,
            labels,
        )


def _where(name: str, chunk: Chunk, row: int, column: int | None = None) -> str:
    """file:line[:column] of a row in a chunk (Parquet has row numbers, not lines)."""
    if chunk.first_line is None:
        return f"{name}: row {row + 1}"
    where = f"{name}:{chunk.first_line + row}"
    return where if column is None else f"{where}:{column}"


def parse_labels(values: pl.Series, name: str, chunk: Chunk, column: int | None) -> np.ndarray:
    """0/1 or -1/1 text to float 0/1; anything else names its line."""
    text = values.str.strip_chars()
    positive = text.is_in(TRUE_LABELS)
    valid = positive | text.is_in(FALSE_LABELS)
    if not valid.all():
        row = int(valid.arg_min())
        shown = text[row]
        what = "an empty label" if shown == "" else f"label {shown!r}"
        raise BadInput(f"{_where(name, chunk, row, column)}: {what} in column {values.name!r}; labels must be 0/1 or -1/1")
    return positive.to_numpy().astype(np.float32)


MAX_VALUE = 1e18  # a value the FM multiplies (raw numeric, libsvm): x*x must stay finite in float32 (3.4e38)


def _number(text: pl.Expr) -> pl.Expr:
    """Numeric text as float64; NaN where the text is empty (missing) or not a number."""
    return text.cast(pl.Float64, strict=False).fill_null(float("nan"))


def _bad_number(text: pl.Expr, limit: float | None = None) -> pl.Expr:
    """Non-empty text that is not a finite number (junk, NaN, inf, 1e400), or above
    `limit` in magnitude."""
    value = text.cast(pl.Float64, strict=False)
    bad = value.is_finite().not_()
    if limit is not None:
        bad = bad | (value.abs() > limit)
    return (text != MISSING) & bad.fill_null(True)


def _limit(f: Field) -> float | None:
    return MAX_VALUE if f.numeric == "raw" else None


def _raise_bad_numeric(frame: pl.DataFrame, fields: list[Field], row: int, name: str, chunk: Chunk, position: dict) -> None:
    """The error for the first field of `row` that _bad_number flags. It reads the text
    as polars does (Python's float() would take '1_000' and other digits polars does not)."""
    for f in fields:
        text = frame.get_column(f.name).str.strip_chars()[row]
        if text == MISSING:
            continue
        where = _where(name, chunk, row, position.get(f.name))
        value = pl.Series([text]).cast(pl.Float64, strict=False)[0]
        if value is None:
            raise BadInput(f"{where}: {text!r} in numeric column {f.name!r} is not a number")
        if not math.isfinite(value):
            raise BadInput(f"{where}: {text!r} in numeric column {f.name!r} is not finite; leave the field empty for a missing value")
        if f.numeric == "raw" and abs(value) > MAX_VALUE:
            raise BadInput(f"{where}: {text!r} in numeric column {f.name!r} is too large for --numeric-mode raw "
                           f"(at most 1e18, so that the FM's x*x fits in float32); scale the column or use --numeric-mode log1p")
    raise AssertionError(f"row {row} was flagged as a bad number, but no field of it is")


SMALL_SHIFT = 3  # small values' buckets are floor(x) - 3 <= -1; the log^2 buckets of x > 2 are >= 0


def bucket_values(x: np.ndarray, fine: bool = False) -> np.ndarray:
    """The Criteo winners' rule: floor(ln(x)^2) for x > 2; a value x <= 2 keeps a
    token of its own (floor(x) - 3, which no log^2 bucket reaches: the winners wrote
    "SP1", "SP2"), since 1 and 3 (ln(3)^2 = 1.2) would otherwise share one; NaN if
    missing. The token hashed is the bucket's decimal text ("" when missing).

    `fine` (the `fine` numeric mode): whole numbers as above, and a fractional value a
    bucket of its own scale, floor(4 log2 |x|) with its sign, in a range of its own
    (FINE_BUCKETS) - where the rule above puts every value in [0, 1) on one token,
    which leaves a column of measurements such as 0.05-0.16 with nothing to learn."""
    with np.errstate(invalid="ignore", divide="ignore"):
        b = np.where(x > 2, np.floor(np.log(x) ** 2), np.floor(x) - SMALL_SHIFT)
        if not fine:
            return b
        octave = np.clip(np.floor(4 * np.log2(np.abs(x))), -FINE_SPAN, FINE_SPAN)
        scaled = FINE_BUCKETS.start + FINE_SPAN + np.where(x < 0, 2 * FINE_SPAN + 1, 0) + octave
        return np.where(np.isfinite(x) & (x != np.floor(x)), scaled, b)


BUCKET_TABLE = range(-1024, 1024)  # buckets whose index is looked up, not hashed per row
FINE_SPAN = 400  # quarter octaves each side of 1 (2^-100 .. 2^100)
FINE_BUCKETS = range(100_000, 100_000 + 2 * (2 * FINE_SPAN + 1))  # fractional values' buckets: positive, then negative


@functools.lru_cache(maxsize=4096)
def _bucket_table(field: str, spec: HashSpec) -> np.ndarray:
    """Indices of the tokens "-1024" .. "1023", then "" (missing), for one field."""
    tokens = [str(b) for b in BUCKET_TABLE] + [MISSING]
    frame = pl.DataFrame({"t": tokens})
    return frame.select(_index_expr(spec)(pl.col("t"), field)).to_series().to_numpy()


@functools.lru_cache(maxsize=4096)
def _fine_table(field: str, spec: HashSpec) -> np.ndarray:
    """Indices of the fractional values' bucket tokens (FINE_BUCKETS), for one field."""
    frame = pl.DataFrame({"t": [str(b) for b in FINE_BUCKETS]})
    return frame.select(_index_expr(spec)(pl.col("t"), field)).to_series().to_numpy()


DIRECT_BUCKETS = 256  # up to this many values, hashing their buckets' text beats building the field's table


def _bucket_indices(x: np.ndarray, field: str, spec: HashSpec, fine: bool = False) -> np.ndarray:
    """Numbers -> indices of their buckets' tokens: the same as hashing the text, by
    table lookup for the usual buckets (a few values are hashed: the tables cost a
    short predict about 10 ms)."""
    b = bucket_values(x, fine)
    missing = np.isnan(b)
    if len(b) <= DIRECT_BUCKETS:
        return _hash_tokens([MISSING if m else str(int(v)) for v, m in zip(b, missing)], field, spec)
    table = _bucket_table(field, spec)
    lo, hi = BUCKET_TABLE.start, BUCKET_TABLE.stop
    in_fine = ~missing & (b >= FINE_BUCKETS.start) & (b < FINE_BUCKETS.stop)
    outside = ~missing & ~in_fine & ((b < lo) | (b >= hi))
    slot = np.where(missing | outside | in_fine, len(table) - 1, b - lo).astype(np.int64)
    out = table[slot]
    if in_fine.any():
        out[in_fine] = _fine_table(field, spec)[(b[in_fine] - FINE_BUCKETS.start).astype(np.int64)]
    if outside.any():
        out[outside] = _hash_tokens([str(int(v)) for v in b[outside]], field, spec)
    return out


def _hash_tokens(tokens: list[str], field: str, spec: HashSpec) -> np.ndarray:
    """The indices of one field's tokens."""
    frame = pl.DataFrame({"t": pl.Series("t", tokens, dtype=pl.String)})
    return frame.select(_index_expr(spec)(pl.col("t"), field)).to_series().to_numpy()


def _index_expr(spec: HashSpec):
    """token expression, field name -> int32 index expression (hash, then keep `bits`)."""
    mask = spec.size - 1

    def index_of(tokens: pl.Expr, field: str) -> pl.Expr:
        return (tokens.nchash.xxhash64(seed=field_seed(field, spec.seed)) & mask).cast(pl.Int32)

    return index_of


def hash_chunk(
    chunk: Chunk,
    schema: Schema,
    spec: HashSpec,
    *,
    name: str,
    columns: list[str],
    require_label: bool,
) -> Rows:
    """Hash one chunk of string columns into CSR rows (a null counts as "", as the
    readers give a missing value)."""
    frame = chunk.frame
    if frame.height and any(frame.null_count().row(0)):
        frame = frame.fill_null("")
    if schema.format in SPARSE_FORMATS:
        return _hash_sparse_lines(chunk, spec, name=name, require_label=require_label)
    position = {c: i + 1 for i, c in enumerate(columns)} if chunk.first_line is not None else {}
    labels = None
    if schema.label in frame.columns and require_label:
        labels = parse_labels(frame.get_column(schema.label), name, chunk, position.get(schema.label))
    singles = [f for f in schema.fields if f.kind != "multi"]
    multi = [f for f in schema.fields if f.kind == "multi"]
    single_idx, single_val = _single_fields(frame, singles, spec, name, chunk, position)
    if not multi:
        offsets = np.arange(frame.height + 1, dtype=np.int64) * single_idx.shape[1]
        return Rows(single_idx.ravel(), single_val.ravel(), offsets, labels)
    return _with_bags(frame, multi, spec, single_idx, single_val, labels)


def _single_fields(frame: pl.DataFrame, singles: list[Field], spec: HashSpec, name: str, chunk: Chunk,
                   position: dict) -> tuple[np.ndarray, np.ndarray]:
    """(rows, fields) indices and values of the single-valued fields."""
    index_of = _index_expr(spec)
    numeric = [f for f in singles if f.kind == "numeric"]
    # One select: the index of every categorical field, the parsed value of every
    # numeric one, and a flag for rows with numeric text that is not a finite number.
    outputs = [
        (index_of(pl.col(f.name), f.name) if f.kind == "categorical" else _number(pl.col(f.name))).alias(f.name)
        for f in singles
    ]
    bad_flag = "_" * (max(map(len, frame.columns), default=0) + 1)  # a name no column has
    if numeric:
        outputs.append(pl.any_horizontal(_bad_number(pl.col(f.name), _limit(f)) for f in numeric).alias(bad_flag))
    computed = frame.select(outputs)
    if numeric and computed.get_column(bad_flag).any():
        # Padded numbers (" 7") are fine; anything else names its row and column.
        stripped = [_number(pl.col(f.name).str.strip_chars()).alias(f.name) for f in numeric]
        bad = pl.any_horizontal(_bad_number(pl.col(f.name).str.strip_chars(), _limit(f)) for f in numeric)
        computed = computed.with_columns(frame.select(*stripped, bad.alias(bad_flag)))
        if computed.get_column(bad_flag).any():
            _raise_bad_numeric(frame, numeric, int(computed.get_column(bad_flag).arg_max()), name, chunk, position)
    n = frame.height
    single_idx = np.empty((n, len(singles)), np.int32)
    single_val = np.ones((n, len(singles)), dtype=np.float32)
    for j, f in enumerate(singles):
        column = computed.get_column(f.name)
        if f.kind == "categorical":
            single_idx[:, j] = column.to_numpy()
        elif f.numeric in BUCKETED:
            single_idx[:, j] = _bucket_indices(column.to_numpy(), f.name, spec, fine=f.numeric in FINE)
        else:
            x = column.to_numpy()
            missing = np.isnan(x)
            single_idx[:, j] = np.where(missing, token_index(f.name, MISSING, spec), token_index(f.name, VALUE_TOKEN, spec))
            if f.numeric == "standard":
                value = z_values(x, f.standard)
            else:
                value = x if f.numeric == "raw" else np.sign(x) * np.log1p(np.abs(x))
            single_val[:, j] = np.where(missing, 1.0, value)
    standardised = [f for f in numeric if f.standard is not None and f.numeric != "standard"]
    if standardised:  # (fmctr.hashing.standard) after every single-valued field's own position
        z_idx = np.array([token_index(f.name, VALUE_TOKEN, spec) for f in standardised], np.int32)
        z_val = np.column_stack([z_values(computed.get_column(f.name).to_numpy(), f.standard) for f in standardised])
        single_idx = np.hstack([single_idx, np.broadcast_to(z_idx, (n, len(z_idx)))])
        single_val = np.hstack([single_val, z_val])
    exact = [f for f in numeric if f.numeric == "exact"]
    if exact:  # (Schema.segments) after the standardised values
        e_idx = np.column_stack([exact_tokens(computed.get_column(f.name), f.name, spec) for f in exact])
        single_idx = np.hstack([single_idx, e_idx.astype(np.int32)])
        single_val = np.hstack([single_val, np.ones(e_idx.shape, np.float32)])
    return single_idx, single_val


def exact_tokens(x: pl.Series, field: str, spec: HashSpec) -> np.ndarray:
    """The indices of the `exact` mode's value token: "=" and the value - a whole
    number's digits ("=7688"), else the float's text - and "=" alone when missing. A
    bucket of Criteo's rule holds every value within about 6% of 5,000 (adult's
    capital gains of 4,650 and 4,787 share one: none of 41 rows ">50K", all 23), where
    one value may act unlike its neighbours (fmctr.training.selection: a rival the
    held-out rows choose)."""
    frame = pl.DataFrame({"x": x.cast(pl.Float64)})
    c = pl.col("x")
    whole = c.is_not_nan() & (c == c.floor()) & (c.abs() < 2.0 ** 53)
    text = (pl.when(c.is_null() | c.is_nan()).then(pl.lit(""))
            .when(whole).then(c.cast(pl.Int64, strict=False).cast(pl.String))
            .otherwise(c.cast(pl.String)))
    return frame.select(_index_expr(spec)(pl.lit("=") + text, field)).to_series().to_numpy()


def _with_bags(frame: pl.DataFrame, multi: list[Field], spec: HashSpec, single_idx: np.ndarray,
               single_val: np.ndarray, labels: np.ndarray | None) -> Rows:
    """CSR rows of the single-valued fields followed by each multi-valued field's bag."""
    index_of = _index_expr(spec)
    n, n_single = single_idx.shape
    bags = []
    for f in multi:
        tokens = pl.col(f.name).str.split(f.sep)
        series = frame.select(tokens.list.eval(index_of(pl.element(), f.name)).alias("h")).to_series()
        lengths = series.list.len().to_numpy().astype(np.int64)
        flat = series.explode().to_numpy()
        bags.append((lengths, flat))
    counts = n_single + sum(lengths for lengths, _ in bags)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    indices = np.empty(offsets[-1], dtype=np.int32)
    values = np.ones(offsets[-1], dtype=np.float32)
    starts = offsets[:-1]
    for j in range(n_single):
        indices[starts + j] = single_idx[:, j]
        values[starts + j] = single_val[:, j]
    base = starts + n_single
    for lengths, flat in bags:
        bag_starts = np.zeros(n, dtype=np.int64)
        np.cumsum(lengths[:-1], out=bag_starts[1:])
        indices[np.repeat(base - bag_starts, lengths) + np.arange(len(flat))] = flat
        base = base + lengths
    return Rows(indices, values, offsets, labels)


def _hash_sparse_lines(chunk: Chunk, spec: HashSpec, *, name: str, require_label: bool) -> Rows:
    """libsvm (`label idx:val ...`) and libffm (`label field:idx:val ...`) lines. The token
    hashed is everything before the last colon, so libffm's field stays part of it."""
    from fmctr.reading.schema import SPARSE_FIELD

    frame = chunk.frame.select(pl.col(LINE_COLUMN).str.strip_chars().str.split(" ").list.eval(
        pl.element().filter(pl.element() != "")
    ).alias("parts"))
    parts = frame.get_column("parts")
    lengths = parts.list.len()
    if (lengths == 0).any():
        row = int((lengths == 0).arg_max())
        raise BadInput(f"{_where(name, chunk, row)}: empty line (expected a label and features)")
    labels = None
    if require_label:
        labels = parse_labels(parts.list.first().alias("label"), name, chunk, 1)
    feats = frame.select(
        pl.int_range(pl.len()).alias("row"), pl.col("parts").list.slice(1).alias("feat")
    ).explode("feat").drop_nulls("feat")
    pieces = feats.select(
        "row",
        pl.col("feat").str.extract(r"^(.*):([^:]*)$", 1).fill_null(pl.col("feat")).alias("token"),
        pl.col("feat").str.extract(r"^(.*):([^:]*)$", 2).alias("value"),
        "feat",
    )
    value = pieces.get_column("value").cast(pl.Float64, strict=False)
    bad = (pieces.get_column("value").is_not_null() & (value.is_null() | ~value.is_finite() | (value.abs() > MAX_VALUE)))
    if bad.any():
        at = int(bad.arg_max())
        where, feature = _where(name, chunk, int(pieces.get_column("row")[at])), pieces.get_column('feat')[at]
        if value[at] is not None and math.isfinite(value[at]):
            raise BadInput(f"{where}: feature {feature!r} has a value above 1e18 (at most 1e18, so that the FM's x*x fits in float32); scale the values")
        raise BadInput(f"{where}: feature {feature!r} has no finite numeric value")
    indices = pieces.select(_index_expr(spec)(pl.col("token"), SPARSE_FIELD)).to_series().to_numpy()
    values = value.fill_null(1.0).to_numpy().astype(np.float32)
    counts = np.bincount(pieces.get_column("row").to_numpy(), minlength=chunk.frame.height)
    offsets = np.zeros(chunk.frame.height + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return Rows(indices, values, offsets, labels)
