"""Nothing wrong goes unsaid (issue 16): text that does not read as written, numbers
that do not fit, lines and files too large to hold, and training that diverges are
each one `error:` line and exit 1 - or read exactly as the file says."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import MOVIES_FLAGS, MOVIES_TEST, MOVIES_TRAIN, invoke
from fmctr.errors import BadInput
from fmctr.reading import read
from fmctr.reading.read import open_source


def write(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def fails(result, message):
    assert (result.exit_code, result.stdout, result.stderr) == (1, "", message + "\n"), result.stderr


# Reading: the header, lines, quotes and column names


def test_a_header_longer_than_the_peek_is_read_whole(tmp_path):
    names = [f"a_long_column_name_{i:05d}" for i in range(3000)]  # ~80 KB of header
    path = write(tmp_path, "wide.csv", "label," + ",".join(names) + "\n" + ("1," + ",".join("x" * len(names)) + "\n") * 2)
    assert open_source(str(path)).columns == ["label", *names]
    assert invoke("train", path, "-o", tmp_path / "m.fm", "-q", "--epochs", "1", "--bits", "10").exit_code == 0


def test_100k_columns_are_not_a_false_duplicate(tmp_path):
    names = [f"c{i}" for i in range(100_000)]
    path = write(tmp_path, "wide.csv", "label," + ",".join(names) + "\n1," + ",".join("x" * len(names)) + "\n")
    assert open_source(str(path)).columns[-1] == "c99999"


@pytest.mark.parametrize("block", [64, read.RAW_BLOCK_BYTES])  # a line carried across reads; one within a read
def test_a_line_longer_than_the_bound_names_its_line(tmp_path, monkeypatch, block):
    monkeypatch.setattr(read, "RAW_BLOCK_BYTES", block)
    monkeypatch.setenv("FMCTR_MAX_LINE_BYTES", "1000")
    path = write(tmp_path, "long.csv", "label,user\n" + "1,u\n" * 50 + "0," + "x" * 2000 + "\n1,u\n")
    fails(invoke("train", path, "-o", tmp_path / "m.fm", "-q"),
          f"error: {path}:52: line longer than 1,000 bytes; set FMCTR_MAX_LINE_BYTES to read longer lines")
    monkeypatch.setenv("FMCTR_MAX_LINE_BYTES", "3000")
    assert invoke("train", path, "-o", tmp_path / "m.fm", "-q", "--epochs", "1", "--bits", "10").exit_code == 0


def test_one_gzipped_line_of_100_mb_stops_at_the_default_bound(tmp_path):
    import gzip

    path = write(tmp_path, "one.gz", gzip.compress(b"label,u\n1," + b"x" * (100 << 20) + b"\n", 1))
    with pytest.raises(BadInput, match=r":2: line longer than 67,108,864 bytes"):
        for _ in open_source(str(path)).chunks:
            pass


def test_a_header_longer_than_the_bound(tmp_path, monkeypatch):
    monkeypatch.setenv("FMCTR_MAX_LINE_BYTES", "70000")
    path = write(tmp_path, "wide.csv", "label," + "x" * 100_000 + "\n1,2\n")
    with pytest.raises(BadInput, match=r"wide.csv:1: line longer than 70,000 bytes"):
        open_source(str(path))


def test_parquet_column_names_must_be_unique_and_utf8(tmp_path):
    dup = tmp_path / "dup.parquet"
    pq.write_table(pa.table([pa.array(["1", "0"]), pa.array(["a", "b"]), pa.array(["c", "d"])], names=["label", "u", "u"]), dup)
    fails(invoke("train", dup, "-o", tmp_path / "m.fm", "-q"), f"error: {dup}: duplicate column name(s): u")
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table([pa.array(["1", "0"]), pa.array(["a", "b"])], names=["label", "uZZQ"]), bad, store_schema=False)
    bad.write_bytes(bad.read_bytes().replace(b"uZZQ", b"u\xff\xfeQ"))
    fails(invoke("train", bad, "-o", tmp_path / "m.fm", "-q"), f"error: {bad}: a column name in the Parquet schema is not valid UTF-8")


@pytest.mark.parametrize("content,flags", [
    ("label,user,price\n1,u1,3\n0,u2,4\n1,u3,5", []),
    ("label\tuser\tprice\n1\tu1\t3\n0\tu2\t4\n1\tu3\t5", []),
    ('label,user,price\n1,u1,3\n0,u2,4\n1,"u3",5', ["--numeric", "price", "--numeric-mode", "raw"]),
    ("label,user,price\r\n1,u1,3\r\n0,u2,4\r\n1,u3,5", []),
    ("1 3:1\n0 4:2\n1 5:1", []),
])
def test_a_last_line_without_its_newline_is_a_row(tmp_path, content, flags):
    path = write(tmp_path, "data.txt", content)
    model = tmp_path / "m.fm"
    assert invoke("train", path, "-o", model, "-q", "--epochs", "1", "--bits", "10", *flags).exit_code == 0
    for source, stdin in ((path, None), ("-", content)):
        predicted = invoke("predict", source, "-m", model, input=stdin)
        assert (predicted.exit_code, predicted.stdout.count("\n")) == (0, 4), predicted.stderr
    assert invoke("eval", path, "-m", model, "--json").exit_code == 0
    assert invoke("preprocess", path, "-o", tmp_path / "d.hashed", *flags).exit_code == 0


# Numbers


def test_numbers_at_the_limits_are_read(tmp_path):
    """1e18 is the largest raw value; bucket and log1p modes take any finite float64;
    a column named like an internal flag is an ordinary column."""
    path = write(tmp_path, "n.csv", "label,user,__bad__\n1,u1,1e18\n0,u2,-1e18\n1,u3,1e300\n")
    for mode in ("bucket", "log1p"):
        assert invoke("train", path, "--numeric", "__bad__", "--numeric-mode", mode, "-o", tmp_path / "m.fm", "-q",
                      "--epochs", "1", "--bits", "10").exit_code == 0
    raw = write(tmp_path, "raw.csv", "label,user,x\n1,u1,1e18\n0,u2,-1e18\n1,u3, 7 \n")
    assert invoke("train", raw, "--numeric", "x", "--numeric-mode", "raw", "-o", tmp_path / "m.fm", "-q",
                  "--epochs", "1", "--bits", "10").exit_code in (0, 1)  # read; training may diverge (see below)


# Model files


@pytest.mark.parametrize("special", ["/dev/zero", "fifo"])
def test_a_model_path_that_is_not_a_regular_file_is_not_read(tmp_path, special):
    import os

    if special == "fifo":
        special = tmp_path / "fifo"
        os.mkfifo(special)  # opening it would wait for a writer
    fails(invoke("predict", MOVIES_TEST, "-m", special), f"error: {special}: not a regular file; a model is a file written by `fmctr train`")


def test_a_model_with_non_finite_weights_is_refused(tmp_path, movies_model):
    import numpy as np

    from fmctr.models import modelfile

    model = modelfile.load(movies_model)
    model.weights.factors[np.flatnonzero(model.optimizer["seen"])[0], 0] = np.nan
    broken = tmp_path / "nan.fm"
    modelfile.save(model, broken)
    message = f"error: {broken}: the model's weights are not finite (NaN or infinity: its training diverged); train it again"
    fails(invoke("predict", MOVIES_TEST, "-m", broken), message)
    fails(invoke("eval", MOVIES_TEST, "-m", broken), message)
