"""Property-based tests: arbitrary values never crash the readers or the hasher,
hashing is deterministic and in range, and a hashed dataset reads back as written."""

from __future__ import annotations

import numpy as np
import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fmctr.datasets import hashed as dataset

from fmctr.hashing import onepass
from fmctr.errors import FmctrError
from fmctr.hashing.tokens import HashSpec, Rows, hash_chunk, token_index
from fmctr.datasets.inputs import open_input
from fmctr.reading.read import Chunk
from fmctr.reading.schema import Field, Schema, build_spec

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)


@SETTINGS
@given(st.lists(text, min_size=1, max_size=20), st.integers(1, 31), st.integers(0, 2**63 - 1))
def test_hashing_is_deterministic_and_in_range(values, bits, seed):
    spec = HashSpec(bits=bits, seed=seed)
    schema = Schema("label", (Field("f"),))
    chunk = Chunk(pl.DataFrame({"label": ["1"] * len(values), "f": values}), 2)
    a = hash_chunk(chunk, schema, spec, name="t", columns=["label", "f"], require_label=True)
    b = hash_chunk(chunk, schema, spec, name="t", columns=["label", "f"], require_label=True)
    assert a.indices.tolist() == b.indices.tolist() == [token_index("f", v, spec) for v in values]
    assert all(0 <= i < 2**bits for i in a.indices.tolist())


@SETTINGS
@given(st.lists(st.one_of(text, st.floats(allow_nan=True, allow_infinity=True).map(repr), st.integers().map(str)), min_size=1, max_size=20))
def test_numeric_columns_never_crash(values):
    """Any text in a numeric column is either read or a BadInput, never a crash."""
    schema = Schema("label", (Field("x", "numeric"),))
    chunk = Chunk(pl.DataFrame({"label": ["0"] * len(values), "x": values}), 2)
    try:
        rows = hash_chunk(chunk, schema, HashSpec(bits=20), name="t", columns=["label", "x"], require_label=True)
    except FmctrError as e:
        assert str(e).startswith("t:")
    else:
        assert len(rows) == len(values)


@SETTINGS
@given(st.binary(max_size=300))
def test_arbitrary_bytes_as_a_file_never_crash(tmp_path, data):
    path = tmp_path / "data.bin"
    path.write_bytes(data)
    for spec in (build_spec(), build_spec(preset="criteo")):
        try:
            open_input(str(path), spec=spec, hashing=HashSpec(bits=16), require_label=True).all_rows()
        except FmctrError:
            pass


@SETTINGS
@given(st.lists(st.lists(st.text("abc\t", max_size=4), min_size=40, max_size=40), min_size=1, max_size=30))
def test_one_pass_agrees_with_columnar_on_random_criteo_text(rows):
    spec = build_spec(preset="criteo")
    columns = list(spec.column_names)
    lines = ["\t".join(["1"] + [str(len(c)) if j < 13 else c for j, c in enumerate(r[1:])]) for r in rows]
    body = ("\n".join(lines) + "\n").encode()
    plan = onepass.Plan(spec.resolve(columns), HashSpec(bits=18), columns, True)
    keep = [columns[1], columns[20], columns[-1]]
    fast = onepass.hash_bytes(body, plan, "\t", keep)
    try:
        from fmctr.reading.read import RawChunk

        parsed = list(RawChunk(body, 1).parse("t", columns, "\t"))
        slow = Rows.concat([hash_chunk(c, spec.resolve(columns), HashSpec(bits=18), name="t", columns=columns, require_label=True) for c in parsed])
    except FmctrError:
        assert fast is None  # what the columnar path rejects, the one-pass path declines
        return
    if fast is not None:
        assert fast[0].indices.tolist() == slow.indices.tolist()
        assert fast[1].equals(pl.concat([c.frame.select(keep) for c in parsed]))  # the kept text too


@SETTINGS
@given(st.integers(1, 50), st.integers(0, 6), st.integers(0, 2**32 - 1))
def test_dataset_round_trip(tmp_path, n_rows, max_len, seed):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, max_len + 1, n_rows)
    offsets = np.r_[0, np.cumsum(lengths)].astype(np.int64)
    rows = Rows(rng.integers(0, 1 << 20, offsets[-1]).astype(np.int32),
                rng.choice([1.0, 0.5, 2.0], offsets[-1]).astype(np.float32), offsets,
                rng.integers(0, 2, n_rows).astype(np.float32))
    path = tmp_path / f"d{seed}.hashed"
    schema = Schema("label", (Field("f"),))
    dataset.write([rows.slice(0, n_rows // 2), rows.slice(n_rows // 2, n_rows)], path, schema, HashSpec(bits=20))
    back = Rows.concat(list(dataset.open_hashed(path).iter_parts()))
    for name in ("indices", "values", "offsets", "labels"):
        assert np.array_equal(getattr(back, name), getattr(rows, name)), name


@SETTINGS
@given(st.integers(1, 50), st.integers(0, 6), st.integers(0, 2**32 - 1))
def test_feature_counts_count_every_occurrence(tmp_path, n_rows, max_len, seed):
    """What --l2-all and --min-count read: per index, its occurrences in the rows, in
    memory or streamed from a hashed dataset alike, with a count table per thread or
    one."""
    from fmctr.datasets.batches import DatasetRows, MemoryRows

    rng = np.random.default_rng(seed)
    offsets = np.r_[0, np.cumsum(rng.integers(0, max_len + 1, n_rows))].astype(np.int64)
    rows = Rows(rng.integers(0, 64, offsets[-1]).astype(np.int32), np.ones(offsets[-1], np.float32), offsets,
                rng.integers(0, 2, n_rows).astype(np.float32))
    path = tmp_path / f"c{seed}.hashed"
    dataset.write([rows.slice(0, n_rows // 2), rows.slice(n_rows // 2, n_rows)], path, Schema("label", (Field("f"),)),
                  HashSpec(bits=20))
    expected = np.bincount(rows.indices, minlength=1 << 20)
    assert np.array_equal(MemoryRows(rows).feature_counts(1 << 20), expected)
    assert np.array_equal(DatasetRows(dataset.open_hashed(path)).feature_counts(1 << 20), expected)
    # a hash space the rows fill (not "few features"): the count tables, int32 here
    for source in (MemoryRows(rows), DatasetRows(dataset.open_hashed(path))):
        counts = source.feature_counts(64)
        assert counts.dtype == np.int64 and np.array_equal(counts, np.bincount(rows.indices, minlength=64))
    # the number of indices: from the manifest for whole parts, from the offsets for parts of parts
    source = DatasetRows(dataset.open_hashed(path))
    head, tail = source.split_tail(0.3)
    assert source.nonzeros() == head.nonzeros() + tail.nonzeros() == offsets[-1]
    assert tail.nonzeros() == offsets[-1] - offsets[n_rows - int(round(n_rows * 0.3))]
    from fmctr.datasets import batches

    saved = batches.COUNT_TABLES_BYTES
    try:  # one table, counted by one thread (a hash space too big for a table per thread)
        batches.COUNT_TABLES_BYTES = 1
        assert np.array_equal(MemoryRows(rows).feature_counts(1 << 20), expected)
    finally:
        batches.COUNT_TABLES_BYTES = saved
