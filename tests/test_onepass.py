"""The one-pass TSV path computes exactly what the columnar path computes."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import xxhash

from fmctr.hashing import onepass
from fmctr.hashing.tokens import HashSpec, Rows, hash_chunk
from fmctr.reading.read import RawChunk
from fmctr.reading.schema import build_spec


@pytest.mark.parametrize("seed", [0, 1, 2**63 - 1, 1953052475120754509])
def test_xxh64_matches_the_xxhash_package(seed):
    rng = np.random.default_rng(seed % 1000)
    for n in list(range(0, 70)) + [100, 1000, 1 << 20]:
        data = rng.integers(0, 256, n, dtype=np.uint8)
        assert onepass.xxh64(data, 0, n, np.uint64(seed)) == xxhash.xxh64_intdigest(data.tobytes(), seed=seed), n
    # a slice in the middle of a buffer
    data = np.frombuffer(b"xxhello worldyy", np.uint8)
    assert onepass.xxh64(data, 2, 13, np.uint64(7)) == xxhash.xxh64_intdigest(b"hello world", seed=7)


def both_paths(text: str, spec_args: dict, require_label: bool = True) -> tuple[Rows, Rows | None]:
    spec = build_spec(**spec_args)
    lines = text.encode()
    header = spec.format != "criteo"
    columns = list(spec.column_names) if not header else text.split("\n", 1)[0].rstrip("\r").split("\t")
    body = lines.split(b"\n", 1)[1] if header else lines
    schema = spec.resolve(columns)
    hs = HashSpec(bits=20)
    chunk = RawChunk(body, 2 if header else 1)
    parsed = list(chunk.parse("t", columns, "\t"))
    columnar = Rows.concat([hash_chunk(c, schema, hs, name="t", columns=columns, require_label=require_label) for c in parsed])
    plan = onepass.Plan(schema, hs, columns, require_label)
    assert plan.ok
    fast = onepass.hash_bytes(body, plan, "\t")
    return columnar, (None if fast is None else fast[0])


def criteo_line(label: str, ints: list[str], cats: list[str]) -> str:
    return "\t".join([label, *ints, *cats])


def test_agrees_on_criteo_rows_with_every_kind_of_value():
    rng = np.random.default_rng(0)
    special = ["", "0", "1", "2", "3", "-1", "-7", "1000", "99999999", "123456789012345", "-123456789012", "+5"]
    lines = []
    for r in range(300):
        ints = [special[rng.integers(len(special))] if rng.random() < 0.5 else str(rng.integers(0, 10**rng.integers(1, 9))) for _ in range(13)]
        cats = ["" if rng.random() < 0.1 else "x" * int(rng.integers(0, 40)) + f"{rng.integers(0, 1 << 32):08x}" for _ in range(26)]
        label = ["0", "1", "-1", "+1", "1.0", "0.0", "-1.0"][r % 7]
        lines.append(criteo_line(label, ints, cats))
    text = "\n".join(lines)  # no newline after the last line
    columnar, fast = both_paths(text, {"preset": "criteo"})
    assert fast is not None
    np.testing.assert_array_equal(fast.indices, columnar.indices)
    np.testing.assert_array_equal(fast.labels, columnar.labels)
    np.testing.assert_array_equal(fast.offsets, columnar.offsets)


@pytest.mark.parametrize("end", ["", "\n", "\r\n"])
def test_fields_of_every_length_at_every_offset_of_a_word(end):
    """The field search reads 8 bytes at a time: separators at each of a word's 8
    places, fields of 0 to 19 bytes, short lines, and the buffer's last bytes (read
    one at a time) all split as the columnar path splits them."""
    rng = np.random.default_rng(1)
    lines = []
    for r in range(400):
        widths = rng.integers(0, 20, 3) if r % 4 else rng.integers(0, 3, 3)
        fields = ["".join(chr(97 + int(c)) for c in rng.integers(0, 26, w)) for w in widths]
        lines.append("\t".join([str(r % 2), *fields]))
    text = "label\ta\tb\tc\n" + "\n".join(lines) + end
    for cut in range(len(lines) - 12, len(lines) + 1):  # shorter buffers end at other offsets
        body = text if cut == len(lines) else "\n".join(text.split("\n")[: cut + 1]) + end
        columnar, fast = both_paths(body, {"format": "tsv"})
        assert fast is not None
        np.testing.assert_array_equal(fast.indices, columnar.indices)
        np.testing.assert_array_equal(fast.labels, columnar.labels)


def test_buckets_agree_with_numpy_for_many_integers():
    values = np.r_[np.arange(-50, 200_000), np.geomspace(2e5, 1e17, 2000).astype(np.int64)]
    lines = [criteo_line("1", [str(v)] + [""] * 12, ["a"] * 26) for v in values]
    columnar, fast = both_paths("\n".join(lines) + "\n", {"preset": "criteo"})
    np.testing.assert_array_equal(fast.indices, columnar.indices)


def test_crlf_and_header_tsv():
    text = "label\tuser\tage\r\n1\tu1\t35\r\n0\t\t\r\n-1\tu3\t7\r\n"
    columnar, fast = both_paths(text, {"numeric": ["age"]})
    np.testing.assert_array_equal(fast.indices, columnar.indices)
    assert fast.labels.tolist() == [1.0, 0.0, 0.0]


@pytest.mark.parametrize("line", [
    criteo_line("1", ["2.5"] + [""] * 12, ["a"] * 26),   # not a plain integer
    criteo_line("1", [" 7"] + [""] * 12, ["a"] * 26),    # padded
    criteo_line("2", [""] * 13, ["a"] * 26),             # a label to reject
    criteo_line("1", [""] * 13, ["a"] * 25),             # too few columns
    criteo_line("1", [""] * 13, ["a"] * 27),             # too many
    criteo_line("1", [""] * 13, ["a\rb"] + ["a"] * 25),  # a lone CR: a line break to the columnar path
])
def test_anything_unusual_goes_the_columnar_way(line):
    spec = build_spec(preset="criteo")
    schema = spec.resolve(list(spec.column_names))
    plan = onepass.Plan(schema, HashSpec(bits=20), list(spec.column_names), need_label=True)
    text = criteo_line("0", [""] * 13, ["b"] * 26) + "\n" + line + "\n"
    assert onepass.hash_bytes(text.encode(), plan, "\t") is None


def test_fallback_chunks_keep_file_line_numbers(tmp_path):
    """A bad line far into a file, found by the columnar path after the one-pass
    path declined its chunk, is reported with its line in the whole file."""
    from conftest import invoke

    good = criteo_line("1", ["1"] * 13, ["a"] * 26) + "\n"
    bad = criteo_line("1", ["1"] * 13, ["a"] * 25) + "\n"
    path = tmp_path / "big.tsv"
    path.write_text(good * 150_000 + bad + good)
    result = invoke("preprocess", path, "--preset", "criteo", "-o", tmp_path / "out")
    assert (result.exit_code, result.stderr) == (1, f"error: {path}:150001: expected 40 columns, found 39\n")


@pytest.mark.parametrize("text", [b"a", b"a\n", b"\n\n", b"ab\ncd", b"x\n" * 5, b"long line\n" * 1000 + b"tail",
                                  b"0123456\n" * 9, b"\n" * 17 + b"abcdefgh"])
def test_line_starts_in_parallel_pieces_match_a_plain_scan(text):
    expected = [0] + [i + 1 for i, b in enumerate(text) if b == 10]
    if not text.endswith(b"\n"):
        expected.append(len(text) + 1)
    assert onepass.line_starts(np.frombuffer(text, np.uint8)).tolist() == expected


def test_fine_buckets_agree_on_whole_numbers_and_leave_fractions_to_the_columnar_way():
    header = "label\tx\tc"
    whole = [f"1\t{v}\ta" for v in (0, 1, 2, 3, 17, 1000, -5, "")]
    spec = {"numeric": ("x",), "numeric_mode": "fine", "format": "tsv"}
    columnar, fast = both_paths("\n".join([header, *whole]) + "\n", spec)
    np.testing.assert_array_equal(fast.indices, columnar.indices)
    bucket_columnar, _ = both_paths("\n".join([header, *whole]) + "\n", {**spec, "numeric_mode": "bucket"})
    np.testing.assert_array_equal(columnar.indices, bucket_columnar.indices)  # whole numbers: the same tokens
    _, fast = both_paths("\n".join([header, "1\t0.25\ta"]) + "\n", spec)
    assert fast is None  # a fraction: the columnar way


def _csv_rows(path, *, one_pass: bool, spec_args: dict, keep=()):
    from fmctr.hashing.stream import Hasher
    from fmctr.reading.read import open_source

    source = open_source(str(path))
    schema = build_spec(**spec_args).resolve(source.columns)
    hasher = Hasher(source, schema, HashSpec(bits=20), name="t", require_label=True, keep=keep)
    hasher.one_pass = one_pass
    parts = list(hasher.parts())
    return Rows.concat([rows for rows, _ in parts]), (pl.concat([k for _, k in parts]) if keep else None)


@pytest.mark.parametrize("quote", [False, True])
def test_csv_chunks_without_quotes_take_the_one_pass_way(tmp_path, monkeypatch, quote):
    """A CSV chunk holding no quote is split on its separator as TSV is (one pass); a
    chunk with one goes the columnar way. Both give the columnar path's rows, and the
    --keep columns' text (the last column of CRLF lines included)."""
    rng = np.random.default_rng(3)
    lines = ["click,user,ad,n"] + [f"{r % 2},u{rng.integers(0, 5000)},{rng.integers(0, 1 << 32):08x},{rng.integers(-3, 999)}"
                                   for r in range(80_000)]
    if quote:
        lines[40_000] = '1,"u,1",ad,7'
    path = tmp_path / "clicks.csv"
    path.write_text("\r\n".join(lines) + "\r\n")
    calls = []
    real = onepass.hash_bytes
    monkeypatch.setattr(onepass, "hash_bytes", lambda *a: calls.append(1) or real(*a))
    spec = {"label": "click", "numeric": ("n",)}
    keep = ["n", "click", "user"]
    fast, fast_kept = _csv_rows(path, one_pass=True, spec_args=spec, keep=keep)
    assert (len(calls) > 0) != quote  # the whole file is one chunk: one-pass only without the quote
    columnar, columnar_kept = _csv_rows(path, one_pass=False, spec_args=spec, keep=keep)
    np.testing.assert_array_equal(fast.indices, columnar.indices)
    np.testing.assert_array_equal(fast.labels, columnar.labels)
    assert fast_kept.equals(columnar_kept) and fast_kept.columns == keep
