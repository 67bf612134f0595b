"""The one-pass path for unquoted delimited text (TSV, the Criteo format): numba
kernels split the raw bytes into fields and hash each field where it lies, without
building string columns first. It computes exactly what fmctr.hashing.tokens computes (the
tests compare the two on the same data); a chunk it cannot take whole (a number that
is not a plain integer, text that is not UTF-8, ...) goes the columnar way instead,
which also words the error for bad input.
"""

from __future__ import annotations

from collections.abc import Sequence

import numba
import numpy as np
import polars as pl
import pyarrow as pa
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

from fmctr.hashing.tokens import BUCKET_TABLE, SMALL_SHIFT, HashSpec, Rows, _bucket_table, bucket_values, field_seed, ones, token_index
from fmctr.reading.schema import BUCKETED, Schema

P1 = np.uint64(0x9E3779B185EBCA87)
P2 = np.uint64(0xC2B2AE3D27D4EB4F)
P3 = np.uint64(0x165667B19E3779F9)
P4 = np.uint64(0x85EBCA77C2B2AE63)
P5 = np.uint64(0x27D4EB2F165667C5)

IGNORE, CATEGORICAL, BUCKET, LABEL = 0, 1, 2, 3
OK, FALLBACK, RARE_BUCKET = 0, 1, 2  # RARE_BUCKET: a bucket outside the table, hashed from its text afterwards
NEWLINE, CR = 10, 13


# One unaligned 8-byte load, and the lowest set bit: what lets the kernels look at 8
# bytes at a time (LLVM does not merge _read_le's 8 byte loads into one by itself).
@intrinsic
def _load8(typingctx, array, at):
    """The 8 bytes of a uint8 array from `at` as a little-endian uint64 (the caller
    keeps at + 8 <= len(array))."""
    if not isinstance(array, types.Array) or array.dtype != types.uint8:
        return None

    def codegen(context, builder, signature, args):
        view = context.make_array(signature.args[0])(context, builder, args[0])
        where = context.cast(builder, args[1], signature.args[1], types.intp)
        pointer = cgutils.get_item_pointer(context, builder, signature.args[0], view, [where], wraparound=False)
        return builder.load(builder.bitcast(pointer, ir.IntType(64).as_pointer()), align=1)

    return types.uint64(array, at), codegen


@intrinsic
def _ctz(typingctx, x):
    """The number of trailing zero bits of a nonzero uint64."""
    def codegen(context, builder, signature, args):
        return builder.cttz(args[0], ir.IntType(1)(1))

    return types.uint64(types.uint64), codegen


ONES = np.uint64(0x0101010101010101)
HIGHS = np.uint64(0x8080808080808080)


@numba.njit(cache=True, inline="always")
def _find(buf, q, end, sep):
    """The first position from q of byte `sep`, or `end` if none comes before it; 8
    bytes at a time (a zero byte of x = word ^ sep's pattern sets the high bit of
    (x - 0x01..01) & ~x; the lowest such bit is the first match)."""
    pattern = np.uint64(sep) * ONES
    last = len(buf) - 8
    while q < end:
        if q > last:  # the buffer's last bytes, one at a time
            while q < end and buf[q] != sep:
                q += 1
            return q
        x = _load8(buf, q) ^ pattern
        found = (x - ONES) & ~x & HIGHS
        if found != 0:
            return min(q + np.int64(_ctz(found) >> np.uint64(3)), end)
        q += 8
    return end


@numba.njit(cache=True, inline="always")
def _rotl(x, r):
    return (x << np.uint64(r)) | (x >> np.uint64(64 - r))


@numba.njit(cache=True, inline="always")
def _read_le(buf, p, n):
    """n bytes at p as a little-endian unsigned integer."""
    if n == 8:
        return _load8(buf, p)
    v = np.uint64(0)
    for b in range(n):
        v |= np.uint64(buf[p + b]) << np.uint64(8 * b)
    return v


@numba.njit(cache=True, inline="always")
def _round(acc, lane):
    return _rotl(acc + lane * P2, 31) * P1


@numba.njit(cache=True, inline="always")
def xxh64(buf, start, end, seed):
    """XXH64 of buf[start:end] (the published algorithm; the tests check it against
    the xxhash package)."""
    n = end - start
    p = start
    if n >= 32:
        v1 = seed + P1 + P2
        v2 = seed + P2
        v3 = seed
        v4 = seed - P1
        limit = end - 32
        while p <= limit:
            v1 = _round(v1, _read_le(buf, p, 8))
            v2 = _round(v2, _read_le(buf, p + 8, 8))
            v3 = _round(v3, _read_le(buf, p + 16, 8))
            v4 = _round(v4, _read_le(buf, p + 24, 8))
            p += 32
        h = _rotl(v1, 1) + _rotl(v2, 7) + _rotl(v3, 12) + _rotl(v4, 18)
        for v in (v1, v2, v3, v4):
            h = (h ^ _round(np.uint64(0), v)) * P1 + P4
    else:
        h = seed + P5
    h += np.uint64(n)
    while p + 8 <= end:
        h ^= _round(np.uint64(0), _read_le(buf, p, 8))
        h = _rotl(h, 27) * P1 + P4
        p += 8
    if p + 4 <= end:
        h ^= _read_le(buf, p, 4) * P1
        h = _rotl(h, 23) * P2 + P3
        p += 4
    while p < end:
        h ^= np.uint64(buf[p]) * P5
        h = _rotl(h, 11) * P1
        p += 1
    h ^= h >> np.uint64(33)
    h *= P2
    h ^= h >> np.uint64(29)
    h *= P3
    h ^= h >> np.uint64(32)
    return h


@numba.njit(cache=True, nogil=True)
def line_starts(buf):
    """Start offset of every line, plus the end (a last line without newline counts).
    (Serial: a parallel version in pieces measured slower, 114 ms against 72 ms for
    256 MB; finding each newline 8 bytes at a time, 0.15 -> 0.09 s.)"""
    lines = 0
    for b in buf:
        if b == NEWLINE:
            lines += 1
    n = lines + (1 if len(buf) and buf[-1] != NEWLINE else 0)
    starts = np.empty(n + 1, np.int64)
    starts[0] = 0
    p = 0
    for row in range(1, lines + 1):
        p = _find(buf, p, len(buf), NEWLINE) + 1
        starts[row] = p
    starts[n] = len(buf) + (0 if len(buf) and buf[-1] == NEWLINE else 1)
    return starts


@numba.njit(cache=True, nogil=True)
def lone_cr(buf, starts):
    """Whether a CR stands anywhere but just before a line's newline."""
    crs = 0
    for b in buf:
        crs += b == CR
    for r in range(1, len(starts)):
        end = starts[r] - 2  # the byte before line r - 1's newline
        if end >= starts[r - 1] and end < len(buf) and buf[end] == CR:
            crs -= 1
    return crs > 0


@numba.njit(cache=True)
def _parse_int(buf, start, end):
    """(ok, value) for [+-]?[0-9]{1,18}; not ok for anything else."""
    p = start
    negative = False
    if p < end and (buf[p] == 45 or buf[p] == 43):
        negative = buf[p] == 45
        p += 1
    if p == end or end - p > 18:
        return False, 0
    value = 0
    while p < end:
        d = buf[p] - 48
        if d < 0 or d > 9:
            return False, 0
        value = value * 10 + d
        p += 1
    return True, -value if negative else value


@numba.njit(cache=True)
def _label(buf, start, end):
    """1.0 / 0.0 for 1, +1, 1.0 / 0, -1, 0.0, -1.0; -1.0 for anything else."""
    n = end - start
    text = 0
    for p in range(start, min(end, start + 4)):
        text = text * 256 + buf[p]
    if n == 1 and text == 49 or n == 2 and text == 0x2B31 or n == 3 and text == 0x312E30:
        return 1.0
    if n == 1 and text == 48 or n == 2 and text == 0x2D31 or n == 3 and text == 0x302E30 or n == 4 and text == 0x2D312E30:
        return 0.0
    return -1.0


@numba.njit(cache=True, parallel=True, nogil=True)
def hash_lines(buf, starts, sep, kinds, seeds, tables, table_lo, bucket_lo, bucket_hi, mask, n_features, need_label,
               small_buckets, small_shift, indices, labels, status):
    """Parse and hash every line. Per row a status: OK, or FALLBACK for anything the
    columnar path must look at (wrong column count, a label or number it may read
    or reject). Buckets of 0 <= x < len(small_buckets) are looked up (numpy computed
    them, so they match the columnar path bit for bit); a bucket outside the index
    table is marked -1 for the caller to hash from its text."""
    n_rows = len(starts) - 1
    n_columns = len(kinds)
    for r in numba.prange(n_rows):
        p = starts[r]
        end = starts[r + 1] - 1  # the newline
        if end > p and end <= len(buf) and buf[end - 1] == CR:
            end -= 1
        if end > len(buf):
            end = len(buf)
        column = 0
        feature = 0
        status[r] = OK
        while True:
            q = _find(buf, p, end, sep)
            if column >= n_columns:
                status[r] = FALLBACK  # too many columns
                break
            kind = kinds[column]
            if kind == CATEGORICAL:
                indices[r, feature] = np.int32(xxh64(buf, p, q, seeds[column]) & mask)
                feature += 1
            elif kind == BUCKET:
                if q == p:
                    indices[r, feature] = tables[column, len(tables[column]) - 1]
                else:
                    ok, x = _parse_int(buf, p, q)
                    if not ok:
                        status[r] = FALLBACK
                        break
                    if x >= 0 and x < len(small_buckets):
                        b = np.int64(small_buckets[x])
                    else:
                        b = np.int64(np.floor(np.log(np.float64(x)) ** 2)) if x > 2 else x - small_shift
                    if b >= bucket_lo and b < bucket_hi:
                        indices[r, feature] = tables[column, b - table_lo]
                    else:
                        indices[r, feature] = -1  # a rare bucket: the caller hashes its text
                        status[r] = RARE_BUCKET
                feature += 1
            elif kind == LABEL and need_label:
                y = _label(buf, p, q)
                if y < 0:
                    status[r] = FALLBACK
                    break
                labels[r] = y
            column += 1
            if q >= end:
                break
            p = q + 1
        if status[r] != FALLBACK and column < n_columns:
            status[r] = FALLBACK  # too few columns


# Buckets of the integers 0 .. 65535, computed once by the columnar path's own rule.
SMALL_BUCKETS = bucket_values(np.arange(1 << 16, dtype=np.float64)).astype(np.int32)


class Plan:
    """What the kernels need to know about a schema, computed once per input."""

    def __init__(self, schema: Schema, spec: HashSpec, columns: list[str], need_label: bool):
        kinds = np.zeros(len(columns), np.int64)
        seeds = np.zeros(len(columns), np.uint64)
        tables = np.zeros((len(columns), len(BUCKET_TABLE) + 1), np.int32)
        fields = {f.name: f for f in schema.fields}
        self.feature_columns = []
        for c, name in enumerate(columns):
            if name == schema.label:
                kinds[c] = LABEL
            elif name in fields:
                f = fields[name]
                kinds[c] = CATEGORICAL if f.kind == "categorical" else BUCKET
                seeds[c] = field_seed(name, spec.seed)
                if f.kind == "numeric":
                    tables[c] = _bucket_table(name, spec)
                self.feature_columns.append(name)
        # Features come out in column order; the schema's order must match.
        self.ok = self.feature_columns == schema.feature_names
        self.kinds, self.seeds, self.tables = kinds, seeds, tables
        self.spec = spec
        self.need_label = need_label and schema.label in columns
        self.columns = columns

    @staticmethod
    def applies(schema: Schema) -> bool:
        # (`fine` differs from `bucket` only for fractional values, which this parser
        # leaves to the columnar way: they are not whole numbers)
        # (nor a standardised value: fmctr.hashing.standard; nor `exact`'s value token)
        return all(f.kind == "categorical" or (f.kind == "numeric" and f.numeric in BUCKETED and f.standard is None
                                               and f.numeric != "exact")
                   for f in schema.fields)


def hash_bytes(buf: bytes, plan: Plan, sep: str, keep: Sequence[str] = ()) -> tuple[Rows, pl.DataFrame | None] | None:
    """Hash the complete lines in `buf`, and pass the `keep` columns' text through (as
    the columnar path's string columns); None when the chunk must go the columnar way."""
    if not buf.isascii():  # (fast; ASCII is UTF-8)
        try:
            buf.decode("utf-8")
        except UnicodeDecodeError:
            return None
    if b"\x00" in buf:
        return None
    data = np.frombuffer(buf, np.uint8)
    starts = line_starts(data)
    if b"\r" in buf and lone_cr(data, starts):
        return None  # a CR not ending a line, which pyarrow reads as a line break: the columnar way words it
    n = len(starts) - 1
    n_features = len(plan.feature_columns)
    indices = np.empty((n, n_features), np.int32)
    labels = np.zeros(n, np.float32)
    status = np.empty(n, np.int8)
    hash_lines(data, starts, ord(sep), plan.kinds, plan.seeds, plan.tables, BUCKET_TABLE.start, BUCKET_TABLE.start,
               BUCKET_TABLE.stop, np.uint64(plan.spec.size - 1), n_features, plan.need_label,
               SMALL_BUCKETS, SMALL_SHIFT, indices, labels, status)
    if (status == FALLBACK).any():
        return None  # the columnar path reads it, or words the error
    for r, j in ((r, j) for r in np.flatnonzero(status == RARE_BUCKET) for j in np.flatnonzero(indices[r] < 0)):
        fields = buf[starts[r] : starts[r + 1]].rstrip(b"\r\n").split(sep.encode())
        text = fields[plan.columns.index(plan.feature_columns[j])].decode()
        bucket = int(bucket_values(np.array([float(int(text))]))[0])
        indices[r, j] = token_index(plan.feature_columns[j], str(bucket), plan.spec)
    offsets = np.arange(n + 1, dtype=np.int64) * n_features
    rows = Rows(indices.ravel(), ones(n * n_features), offsets, labels if plan.need_label else None)
    return rows, (_kept(data, starts, ord(sep), plan.columns, keep) if keep else None)


def _kept(data: np.ndarray, starts: np.ndarray, sep: int, columns: list[str], keep: Sequence[str]) -> pl.DataFrame:
    """The `keep` columns of every line, as string columns built straight from the bytes
    (Arrow's layout: the fields' text end to end, and where each starts)."""
    spans = np.empty((len(starts) - 1, 2), np.int64)
    series = []
    for name in keep:
        field_spans(data, starts, sep, columns.index(name), spans)
        offsets = np.zeros(len(spans) + 1, np.int64)
        np.cumsum(spans[:, 1] - spans[:, 0], out=offsets[1:])
        text = np.empty(offsets[-1], np.uint8)
        gather_spans(data, spans, offsets, text)
        array = pa.LargeStringArray.from_buffers(len(spans), pa.py_buffer(offsets), pa.py_buffer(text))
        series.append(pl.Series(name, array, dtype=pl.String))
    return pl.DataFrame(series)


@numba.njit(cache=True, nogil=True)
def field_spans(buf, starts, sep, column, spans):
    """spans[r] = where column `column` of line r starts and ends (a CR before the
    newline is not part of it, as in hash_lines). Every line has the column: hash_lines
    has counted them."""
    for r in range(len(starts) - 1):
        p = starts[r]
        end = min(starts[r + 1] - 1, len(buf))
        if end > p and buf[end - 1] == CR:
            end -= 1
        for _ in range(column):
            p = _find(buf, p, end, sep) + 1
        spans[r, 0] = p
        spans[r, 1] = max(p, _find(buf, p, end, sep))


@numba.njit(cache=True, nogil=True)
def gather_spans(buf, spans, offsets, out):
    for r in range(len(spans)):
        out[offsets[r] : offsets[r + 1]] = buf[spans[r, 0] : spans[r, 1]]
