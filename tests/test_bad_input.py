"""Bad input: one `error:` line on stderr naming the file (and line, column where it
can), exit code 1, no traceback, and no output file left behind."""

from __future__ import annotations

import gzip
import json

import pytest

from conftest import MOVIES_FLAGS, MOVIES_TRAIN, invoke
from damage import with_format_version

GOOD = "label,user,price\n1,u1,3\n0,u2,4\n"


def write(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


# (name, file content, extra train flags, expected message with {path} for the file)
TRAIN_CASES = [
    ("empty file", "", [], "error: {path}: empty file"),
    ("header only", "label,user,price\n", [], "error: {path}: no data rows (only a header)"),
    ("label column missing", "click,user,price\n1,u1,3\n", [], "error: {path}: label column 'label' not found (columns: click, user, price)"),
    ("label of 2", "label,user,price\n1,u1,3\n2,u2,4\n", [], "error: {path}:3:1: label '2' in column 'label'; labels must be 0/1 or -1/1"),
    ("empty label", "label,user,price\n1,u1,3\n,u2,4\n", [], "error: {path}:3:1: an empty label in column 'label'; labels must be 0/1 or -1/1"),
    ("carriage return inside the header", "label,us\rer,price\n1,u1,3\n", [], "error: {path}:1: unreadable header line (a carriage return inside it)"),
    ("--lr-decay above 1", GOOD, ["--lr-decay", "1.5"], "error: --lr-decay must be in (0, 1], got 1.5"),
    ("--valid-every of 0", GOOD, ["--valid-every", "0"], "error: --valid-every must be at least 1 row, got 0"),
    ("negative --l2-all", GOOD, ["--l2-all-factors", "-1"], "error: --l2-all and --l2-all-factors must be 0 or more"),
    ("too few columns", "label,user,price\n1,u1,3\n0,u2\n", [], "error: {path}:3: expected 3 columns, found 2"),
    ("too many columns", "label,user,price\n1,u1,3\n0,u2,4,5\n1,u3,1\n", [], "error: {path}:3: expected 3 columns, found 4"),
    ("text in a numeric column", "label,user,price\n1,u1,3\n0,u2,abc\n", ["--numeric", "price"], "error: {path}:3:3: 'abc' in numeric column 'price' is not a number"),
    ("NaN in a numeric column", "label,user,price\n1,u1,nan\n", ["--numeric", "price"], "error: {path}:2:3: 'nan' in numeric column 'price' is not finite; leave the field empty for a missing value"),
    ("inf in a numeric column", "label,user,price\n1,u1,3\n0,u2,-inf\n", ["--numeric", "price"], "error: {path}:3:3: '-inf' in numeric column 'price' is not finite; leave the field empty for a missing value"),
    ("1e400 in a numeric column", "label,user,price\n1,u1,1e400\n", ["--numeric", "price"], "error: {path}:2:3: '1e400' in numeric column 'price' is not finite; leave the field empty for a missing value"),
    ("digits with an underscore", "label,user,price\n1,u1,3\n0,u2,1_000\n", ["--numeric", "price"], "error: {path}:3:3: '1_000' in numeric column 'price' is not a number"),
    ("Arabic-Indic digits (TSV)", "label\tuser\tprice\n1\tu1\t3\n0\tu2\t\u0663\n", ["--numeric", "price"], "error: {path}:3:3: '\u0663' in numeric column 'price' is not a number"),
    ("fullwidth digits", "label,user,price\n1,u1,3\n0,u2,\uff15\n", ["--numeric", "price", "--numeric-mode", "log1p"], "error: {path}:3:3: '\uff15' in numeric column 'price' is not a number"),
    ("1e39 in a raw numeric column", "label,user,price\n1,u1,3\n0,u2,1e39\n", ["--numeric", "price", "--numeric-mode", "raw"], "error: {path}:3:3: '1e39' in numeric column 'price' is too large for --numeric-mode raw (at most 1e18, so that the FM's x*x fits in float32); scale the column or use --numeric-mode log1p"),
    ("1e30 in a raw numeric column", "label,user,price\n1,u1,-1e30\n", ["--numeric", "price", "--numeric-mode", "raw"], "error: {path}:2:3: '-1e30' in numeric column 'price' is too large"),
    ("libsvm value of 1e39", "1 3:1\n0 4:1e39\n", [], "error: {path}:2: feature '4:1e39' has a value above 1e18 (at most 1e18, so that the FM's x*x fits in float32); scale the values"),
    ("a numeric column named like fmctr's old internal flag", "label,user,__bad__\n1,u1,3\n0,u2,x\n", ["--numeric", "__bad__"], "error: {path}:3:3: 'x' in numeric column '__bad__' is not a number"),
    ("unknown preset", GOOD, ["--preset", "kaggle"], "error: unknown preset 'kaggle' (choose from criteo, avazu)"),
    ("preset and schema file", GOOD, ["--preset", "criteo", "--schema", "s.toml"], "error: --preset and --schema both describe the columns: give one of them"),
    ("column of two kinds", GOOD, ["--numeric", "price", "--multi", "price"], "error: column 'price' is both numeric and multi"),
    ("valid and valid-fraction", GOOD, ["--valid", "x.csv", "--valid-fraction", "0.1"], "error: --valid and --valid-fraction both choose validation data: give one of them"),
    ("named column absent", GOOD, ["--numeric", "cost"], "error: {path}: numeric column 'cost' is not in the data (columns: label, user, price)"),
    ("negative dim", GOOD, ["--dim", "-1"], "error: --dim must be 0 or more, got -1"),
    ("bits out of range", GOOD, ["--bits", "40"], "error: --bits must be between 1 and 31, got 40"),
    ("unknown optimizer", GOOD, ["--optimizer", "sgd"], "error: unknown optimizer 'sgd' (choose from adagrad, adam, ftrl)"),
    ("truncated gzip", gzip.compress(GOOD.encode() * 200)[:-30], [], "error: {path}: corrupt or truncated gzip data"),
    ("criteo row with 39 fields in a 40-field file", "1" + "\t1" * 13 + "\tc" * 26 + "\n" + "0" + "\t1" * 13 + "\tc" * 25 + "\n", ["--preset", "criteo"], "error: {path}:2: expected 40 columns, found 39"),
    ("libsvm feature without a number", "1 3:1\n0 4:x\n", [], "error: {path}:2: feature '4:x' has no finite numeric value"),
    ("binary garbage", bytes(range(256)) * 4, [], "error: {path}:1: binary data (a NUL byte), not text"),
    ("invalid UTF-8", b"label,user\n1,u1\n0,\xff\xfe\n", [], "error: {path}:3: not valid UTF-8 text"),
    ("a pandas index column (no name in the header)", ",label,user\n0,1,u1\n1,0,u2\n", [], "error: {path}:1: column 1 has no name in the header (pandas writes its index so: save with index=False, or name the column)"),
    ("an unterminated quote", 'label,user,price\n1,u1,3\n0,u2,"4\n1,u3,5\n0,u4,6\n', [], "error: {path}:3: a quoted field is not closed on its line (an unterminated quote, or a line break inside quotes, which fmctr does not read)"),
    ("a line break inside quotes", 'label,user,price\n1,"u\n1",3\n0,u2,4\n', [], "error: {path}:2: a quoted field is not closed on its line"),
    ("a quote left open in the header", 'label,"user,price\n1,u1,3\n', [], "error: {path}:1: a quoted field is not closed on its line"),
    ("invalid UTF-8 past the first 64 KiB", b"label,user\n" + b"1,u1\n" * 20000 + b"0,\xff\n", [], "error: {path}:20002:2: not valid UTF-8 text"),
]


@pytest.mark.parametrize("name,content,flags,message", TRAIN_CASES, ids=[c[0] for c in TRAIN_CASES])
def test_train_rejects_bad_input(tmp_path, name, content, flags, message):
    path = write(tmp_path, "data.csv", content)
    out = tmp_path / "model.fm"
    before = set(tmp_path.iterdir())
    result = invoke("train", path, "-o", out, "-q", *flags)
    assert result.exit_code == 1, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(message.format(path=path)), lines[0]
    assert "Traceback" not in result.stderr
    assert set(tmp_path.iterdir()) == before  # no model, no temp file


def test_missing_input_file(tmp_path):
    result = invoke("train", tmp_path / "nope.csv", "-o", tmp_path / "m.fm")
    assert (result.exit_code, result.stderr) == (1, f"error: {tmp_path / 'nope.csv'}: no such file\n")
    assert not (tmp_path / "m.fm").exists()


def test_eval_with_a_non_model_file(tmp_path):
    not_model = write(tmp_path, "model.fm", GOOD)
    result = invoke("eval", MOVIES_TRAIN, "-m", not_model)
    assert (result.exit_code, result.stderr) == (1, f"error: {not_model}: not an fmctr model file, or truncated (bad header length)\n")


def test_predict_with_a_missing_model(tmp_path):
    result = invoke("predict", MOVIES_TRAIN, "-m", tmp_path / "none.fm", "-o", tmp_path / "p.csv")
    assert (result.exit_code, result.stderr) == (1, f"error: {tmp_path / 'none.fm'}: no such model file\n")
    assert list(tmp_path.iterdir()) == []


def test_files_from_before_the_bucket_change(tmp_path):
    """Format version 1 bucketed numeric values up to 2 onto the tokens of larger ones.
    Its files are refused when they have bucketed fields, and read when they have none."""
    for mode, refused in [("bucket", True), ("log1p", False)]:
        model, hashed = tmp_path / f"{mode}.fm", tmp_path / f"{mode}.hashed"
        flags = [*MOVIES_FLAGS, "--numeric-mode", mode]
        assert invoke("train", MOVIES_TRAIN, *flags, "-o", model, "-q", "--epochs", "1").exit_code == 0
        assert invoke("preprocess", MOVIES_TRAIN, *flags, "-o", hashed).exit_code == 0
        model.write_bytes(with_format_version(model.read_bytes(), 1))
        manifest = json.loads((hashed / "manifest.json").read_text())
        (hashed / "manifest.json").write_text(json.dumps({**manifest, "format_version": 1}))
        scored = invoke("eval", MOVIES_TRAIN, "-m", model)
        trained = invoke("train", hashed, "-o", tmp_path / "again.fm", "-q", "--epochs", "1")
        if refused:
            assert (scored.exit_code, scored.stderr) == (1, f"error: {model}: made by an older fmctr, which bucketed "
                                                            "numeric fields differently (values up to 2 shared tokens "
                                                            "with larger ones); train the model again\n")
            assert (trained.exit_code, trained.stderr) == (1, f"error: {hashed}: hashed by an older fmctr, which bucketed "
                                                              "numeric fields differently (values up to 2 shared tokens "
                                                              "with larger ones); run fmctr preprocess again\n")
        else:
            assert (scored.exit_code, trained.exit_code) == (0, 0), scored.stderr + trained.stderr


def test_model_file_damage_is_caught(tmp_path, movies_model):
    data = movies_model.read_bytes()
    cases = {
        "truncated.fm": (data[:-100], "corrupt or truncated model file"),  # in the tensors, past the header
        "flipped.fm": (data[:-5] + bytes([data[-5] ^ 0xFF]) + data[-4:], "model file is corrupt (checksum mismatch)"),
    }
    cases["future.fm"] = (with_format_version(data, 99), "model format version 99 is not one this fmctr")
    for name, (content, message) in cases.items():
        path = write(tmp_path, name, content)
        result = invoke("eval", MOVIES_TRAIN, "-m", path)
        assert result.exit_code == 1
        assert result.stderr.startswith(f"error: {path}: {message}"), result.stderr
        assert len(result.stderr.splitlines()) == 1


def test_predict_bad_rows_leave_no_output_file(tmp_path, movies_model):
    bad = write(tmp_path, "bad.csv", "label,user,item,genres,price,request_id\n1,u1,i1,A,3,r\n1,u1,i1,A,zz,r\n")
    out = tmp_path / "preds.csv"
    result = invoke("predict", bad, "-m", movies_model, "-o", out)
    assert (result.exit_code, result.stderr) == (1, f"error: {bad}:3:5: 'zz' in numeric column 'price' is not a number\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv"]


def test_output_into_a_missing_directory(tmp_path):
    out = tmp_path / "no" / "such" / "model.fm"
    result = invoke("train", MOVIES_TRAIN, *MOVIES_FLAGS, "-o", out, "-q", "--epochs", "1")
    assert result.exit_code == 1
    assert result.stderr == f"error: {out}: cannot write: directory {out.parent} does not exist\n"


def test_predict_keep_column_absent(tmp_path, movies_model):
    result = invoke("predict", MOVIES_TRAIN, "-m", movies_model, "--keep", "session")
    assert (result.exit_code, result.stderr) == (1, f"error: {MOVIES_TRAIN}: --keep column(s) session not found "
                                                    "(columns: label, user, item, genres, price, request_id)\n")


def test_schema_options_on_hashed_input_conflict(tmp_path):
    ds = tmp_path / "d.hashed"
    assert invoke("preprocess", MOVIES_TRAIN, *MOVIES_FLAGS, "-o", ds).exit_code == 0
    result = invoke("train", ds, "--preset", "criteo", "-o", tmp_path / "m.fm")
    assert (result.exit_code, result.stderr) == (1, f"error: {ds} is already hashed: schema options apply only to raw data\n")


# More malformed inputs, across readers and commands.

def test_a_10_mb_field_is_read(tmp_path):
    for sep, ext in ((",", "csv"), ("\t", "tsv")):
        path = write(tmp_path, f"big.{ext}", f"label{sep}user{sep}item\n1{sep}{'x' * 10_000_000}{sep}i1\n0{sep}u2{sep}i2\n")
        result = invoke("train", path, "-o", tmp_path / f"{ext}.fm", "-q", "--json")
        assert result.exit_code == 0, result.stderr
        assert json.loads(result.stdout)["rows"] == 2


def test_too_few_columns_at_line_1_000_001(tmp_path):
    path = write(tmp_path, "long.csv", "label,user\n" + "1,u\n" * 999_999 + "0\n")
    result = invoke("train", path, "-o", tmp_path / "m.fm", "-q")
    assert (result.exit_code, result.stderr) == (1, f"error: {path}:1000001: expected 2 columns, found 1\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["long.csv"]


def test_duplicate_header_names(tmp_path):
    path = write(tmp_path, "d.csv", "label,user,user\n1,a,b\n")
    result = invoke("train", path, "-o", tmp_path / "m.fm")
    assert (result.exit_code, result.stderr) == (1, f"error: {path}:1: duplicate column name(s) in the header: user\n")


def test_empty_stdin():
    result = invoke("predict", "-m", "unused.fm", input=b"")
    assert result.exit_code == 1  # the model is checked first
    result = invoke("train", "-o", "unused.fm", input=b"")
    assert (result.exit_code, result.stderr) == (1, "error: <stdin>: empty file\n")


def test_gzip_magic_then_garbage(tmp_path):
    path = write(tmp_path, "bad.csv.gz", b"\x1f\x8b" + b"not really gzip" * 10)
    result = invoke("train", path, "-o", tmp_path / "m.fm")
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: {path}: corrupt or truncated gzip data")


def test_parquet_with_a_nested_column(tmp_path):
    import polars as pl

    path = tmp_path / "nested.parquet"
    pl.DataFrame({"label": [1, 0], "tags": [["a"], ["b", "c"]]}).write_parquet(path)
    result = invoke("train", path, "-o", tmp_path / "m.fm")
    assert (result.exit_code, result.stderr) == (1, f"error: {path}: column 'tags' has nested type List(String); fmctr reads flat columns\n")


def test_parquet_with_a_float_label(tmp_path):
    import polars as pl

    path = tmp_path / "labels.parquet"
    pl.DataFrame({"label": [1.0, 0.5], "user": ["a", "b"]}).write_parquet(path)
    result = invoke("train", path, "-o", tmp_path / "m.fm")
    assert (result.exit_code, result.stderr) == (1, f"error: {path}: row 2: label '0.5' in column 'label'; labels must be 0/1 or -1/1\n")


def test_truncated_parquet(tmp_path):
    import polars as pl

    path = tmp_path / "t.parquet"
    pl.DataFrame({"label": [1, 0] * 100, "user": ["a", "b"] * 100}).write_parquet(path)
    path.write_bytes(path.read_bytes()[:-40])
    result = invoke("train", path, "-o", tmp_path / "m.fm")
    assert result.exit_code == 1 and result.stderr.startswith(f"error: {path}: not a readable Parquet file")


def test_libffm_value_that_is_not_a_number(tmp_path):
    path = write(tmp_path, "d.ffm", "1 0:3:1 1:4:1\n0 0:3:x\n")
    result = invoke("train", path, "-o", tmp_path / "m.fm")
    assert (result.exit_code, result.stderr) == (1, f"error: {path}:2: feature '0:3:x' has no finite numeric value\n")


def test_eval_needs_labels(tmp_path, movies_model):
    import polars as pl
    from conftest import MOVIES_TEST

    path = tmp_path / "nolabel.csv"
    pl.read_csv(MOVIES_TEST).drop("label").write_csv(path)
    result = invoke("eval", path, "-m", movies_model)
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: {path}: label column 'label' not found")


def test_extra_and_new_values_at_predict_are_fine(tmp_path, movies_model):
    """Extra columns are ignored; unseen categories score deterministically."""
    path = write(tmp_path, "new.csv", "extra,label,user,item,genres,price,request_id\nz,,u_never_seen,i_new,Noir,12.5,r1\n")
    a = invoke("predict", path, "-m", movies_model)
    b = invoke("predict", path, "-m", movies_model)
    assert a.exit_code == 0 and a.stderr == ""
    assert a.stdout == b.stdout and len(a.stdout.splitlines()) == 2


def test_a_pickle_posing_as_a_model_is_not_executed(tmp_path):
    import pickle

    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.fm"
    path.write_bytes(pickle.dumps(Exploit()))
    result = invoke("predict", MOVIES_TRAIN, "-m", path)
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: {path}: not an fmctr model file")
    assert not marker.exists()


def run_with_file_size_limit(args, limit_bytes):
    """Run fmctr with RLIMIT_FSIZE: writes beyond the limit fail as on a full disk."""
    import resource
    import signal
    import subprocess
    import sys

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return subprocess.run([sys.executable, "-m", "fmctr", *map(str, args)], capture_output=True, text=True, preexec_fn=limit)


def test_disk_full_while_writing_a_model(tmp_path):
    data = tmp_path / "data.hashed"
    assert invoke("preprocess", MOVIES_TRAIN, *MOVIES_FLAGS, "-o", data).exit_code == 0
    out = tmp_path / "m.fm"
    proc = run_with_file_size_limit(["train", data, "-o", out, "-q", "--dim", "64"], 20_000)
    assert proc.returncode == 1
    assert proc.stderr == f"error: {out}: cannot write: File too large\n"
    assert [p.name for p in tmp_path.iterdir()] == ["data.hashed"]
    # Too small even for training's temporary hashed data: that write fails as cleanly.
    data.rename(tmp_path.parent / f"{tmp_path.name}-data.hashed")
    proc = run_with_file_size_limit(["train", MOVIES_TRAIN, *MOVIES_FLAGS, "-o", out, "-q"], 50_000)
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: ") and proc.stderr.endswith(": cannot write: File too large\n")
    assert len(proc.stderr.splitlines()) == 1 and list(tmp_path.iterdir()) == []


def test_disk_full_while_writing_predictions(tmp_path, movies_model):
    out = tmp_path / "preds.csv"
    big = tmp_path / "big.csv"
    lines = open(MOVIES_TRAIN).read().splitlines(keepends=True)
    big.write_text(lines[0] + "".join(lines[1:]) * 4)
    proc = run_with_file_size_limit(["predict", big, "-m", movies_model, "-o", out, "--keep", "request_id"], 300_000)
    assert proc.returncode == 1
    assert proc.stderr == f"error: {out}: cannot write: File too large\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.csv"]
