"""Hashing: golden vectors pin the exact indices; columnar path == reference."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import xxhash

from fmctr.hashing.tokens import HashSpec, field_seed, hash_chunk, token_index
from fmctr.reading.read import Chunk
from fmctr.reading.schema import Field, Schema

# (field, token, seed, bits) -> index. These numbers are the hashing spec: if one
# changes, every model ever trained scores data differently.
GOLDEN = [
    ("C1", "68fd1e64", 0, 22, 2078679),
    ("C2", "68fd1e64", 0, 22, 1799395),
    ("C1", "", 0, 22, 3951150),
    ("user", "u42", 0, 20, 324584),
    ("user", "u42", 7, 20, 822291),
    ("C1", "68fd1e64", 0, 31, 425703383),
    ("genres", "Drama", 0, 22, 3618725),
    ("I1", "5", 0, 22, 3237370),
]


@pytest.mark.parametrize("field,token,seed,bits,expected", GOLDEN)
def test_golden_vectors(field, token, seed, bits, expected):
    spec = HashSpec(bits=bits, seed=seed)
    assert token_index(field, token, spec) == expected
    # The definition, spelled out with the xxhash package:
    fseed = xxhash.xxh64_intdigest(field.encode(), seed=seed) & (2**63 - 1)
    assert xxhash.xxh64_intdigest(token.encode(), seed=fseed) % 2**bits == expected


def test_field_seed_is_xxh64_of_the_field_name():
    assert field_seed("C1", 0) == 1953052475120754509


def chunk(**columns) -> Chunk:
    return Chunk(pl.DataFrame(columns), first_line=2)


def test_columnar_hashing_matches_the_reference():
    spec = HashSpec(bits=22)
    schema = Schema("label", (Field("C1"), Field("C2")))
    c = chunk(label=["1", "0", "-1"], C1=["68fd1e64", "", "x"], C2=["68fd1e64", "y", ""])
    rows = hash_chunk(c, schema, spec, name="t", columns=["label", "C1", "C2"], require_label=True)
    expected = [token_index(f, v, spec) for r in range(3) for f, v in (("C1", c.frame["C1"][r]), ("C2", c.frame["C2"][r]))]
    assert rows.indices.tolist() == expected
    assert rows.offsets.tolist() == [0, 2, 4, 6]
    assert rows.labels.tolist() == [1.0, 0.0, 0.0]
    assert rows.indices[0] != rows.indices[1]  # same value, two fields, two indices
    assert rows.indices[2] == token_index("C1", "", spec)  # missing is its field's "" token


def test_numeric_bucket_rule():
    spec = HashSpec(bits=22)
    schema = Schema("label", (Field("I1", "numeric", numeric="bucket"),))
    values = ["0", "1", "2", "3", "10", "100", "-1", "", "2.5", " 7 ", "-5000", "1e300", "8e13", "1.5"]
    c = chunk(label=["1"] * len(values), I1=values)
    rows = hash_chunk(c, schema, spec, name="t", columns=["label", "I1"], require_label=True)
    # floor(ln(x)^2) for x > 2; else floor(x) - 3, so that 1 and 3 do not share a
    # token; empty is missing. Buckets beyond the lookup table (-5003 for -5000, 477170
    # for 1e300, 1024 for 8e13) hash the same way.
    tokens = ["-3", "-2", "-1", "1", "5", "21", "-4", "", "0", "3", "-5003", "477170", "1024", "-2"]
    assert rows.indices.tolist() == [token_index("I1", t, spec) for t in tokens]
    assert np.all(rows.values == 1)


@pytest.mark.parametrize("mode", ["log1p", "raw"])
def test_numeric_value_modes(mode):
    spec = HashSpec(bits=22)
    schema = Schema("label", (Field("price", "numeric", numeric=mode),))
    c = chunk(label=["1", "0", "1"], price=["3.5", "", "-2"])
    rows = hash_chunk(c, schema, spec, name="t", columns=["label", "price"], require_label=True)
    value_index = token_index("price", "__value__", spec)
    assert rows.indices.tolist() == [value_index, token_index("price", "", spec), value_index]
    expected = [np.log1p(3.5), 1.0, -np.log1p(2.0)] if mode == "log1p" else [3.5, 1.0, -2.0]
    np.testing.assert_allclose(rows.values, expected, rtol=1e-6)


def test_multi_valued_fields_are_bags():
    spec = HashSpec(bits=22)
    schema = Schema("label", (Field("user"), Field("genres", "multi", sep="|")))
    c = chunk(label=["1", "0", "1"], user=["a", "b", "c"], genres=["Action|Comedy", "", "Drama"])
    rows = hash_chunk(c, schema, spec, name="t", columns=["label", "user", "genres"], require_label=True)
    g = lambda t: token_index("genres", t, spec)  # noqa: E731
    u = lambda t: token_index("user", t, spec)  # noqa: E731
    assert rows.offsets.tolist() == [0, 3, 5, 7]
    assert rows.indices.tolist() == [u("a"), g("Action"), g("Comedy"), u("b"), g(""), u("c"), g("Drama")]


def test_bits_bound_the_indices():
    spec = HashSpec(bits=3)
    schema = Schema("label", (Field("C1"),))
    c = chunk(label=["1"] * 100, C1=[str(i) for i in range(100)])
    rows = hash_chunk(c, schema, spec, name="t", columns=["label", "C1"], require_label=True)
    assert rows.indices.min() >= 0 and rows.indices.max() < 8
    assert len(set(rows.indices.tolist())) == 8


def test_fine_buckets_tell_small_fractions_apart_where_bucket_merges_them():
    from fmctr.hashing.tokens import FINE_BUCKETS, bucket_values

    x = np.array([0.05, 0.1, 0.16, 0.5, 1.5, 7.5, -0.3, -0.05])
    coarse, fine = bucket_values(x), bucket_values(x, fine=True)
    assert len(set(coarse[:4])) == 1  # every value in [0, 1) on one token
    assert len(set(fine)) == len(x)  # a quarter octave apart or more: each its own
    assert all(b in FINE_BUCKETS for b in fine)
    whole = np.array([0.0, 1.0, 2.0, 3.0, 40.0, -7.0, np.nan])
    np.testing.assert_array_equal(bucket_values(whole, fine=True), bucket_values(whole))
    # the same bucket for values within a quarter octave, on either side of 0 apart
    assert bucket_values(np.array([0.101]), True)[0] == bucket_values(np.array([0.102]), True)[0]
    assert bucket_values(np.array([0.1]), True)[0] != bucket_values(np.array([-0.1]), True)[0]


def test_a_null_hashes_as_the_empty_string():
    """Readers give "" for a missing value; a null handed to hash_chunk directly (a
    library caller's frame) must hash the same, not to an index outside the space."""
    schema = Schema("label", (Field("a"), Field("n", "numeric", numeric="fine"), Field("m", "multi")))
    spec = HashSpec(bits=12)
    with_null = pl.DataFrame({"label": ["1", "0"], "a": ["x", None], "n": ["1.5", None], "m": ["p|q", None]})
    empty = with_null.fill_null("")
    got, want = (hash_chunk(Chunk(f, None), schema, spec, name="t", columns=f.columns, require_label=True)
                 for f in (with_null, empty))
    np.testing.assert_array_equal(got.indices, want.indices)
    assert got.indices.min() >= 0 and got.indices.max() < spec.size


@pytest.mark.parametrize("fine", [False, True])
def test_a_few_numbers_hash_as_the_bucket_tables_give(fine):
    """Up to DIRECT_BUCKETS values are hashed as their buckets' text, more are looked up
    in the field's tables: the same indices either way."""
    from fmctr.hashing.tokens import DIRECT_BUCKETS, HashSpec, _bucket_indices

    rng = np.random.default_rng(0)
    x = np.concatenate([[np.nan, 0, 1, 2, 2.5, 3, -1, -7.25, 1e-9, 1e9, -1e12, 1e300, 0.05, 0.16],
                        rng.lognormal(0, 3, 2 * DIRECT_BUCKETS) * rng.choice([-1, 1], 2 * DIRECT_BUCKETS)])
    spec = HashSpec(bits=22, seed=3)
    looked_up = _bucket_indices(x, "I1", spec, fine=fine)
    hashed = np.concatenate([_bucket_indices(x[i:i + DIRECT_BUCKETS], "I1", spec, fine=fine)
                             for i in range(0, len(x), DIRECT_BUCKETS)])
    assert len(x) > DIRECT_BUCKETS and looked_up.dtype == hashed.dtype == np.int32
    assert np.array_equal(looked_up, hashed)
