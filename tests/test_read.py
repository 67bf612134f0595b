"""Every input format reads to the same hashed rows for the same content."""

from __future__ import annotations

import gzip
import io
import sys

import numpy as np
import polars as pl
import pytest

from fmctr.hashing.tokens import HashSpec, token_index
from fmctr.datasets.inputs import open_input
from fmctr.reading.read import sniff_format
from fmctr.reading.schema import SPARSE_FIELD, build_spec

ROWS = [("1", "a", "x"), ("0", "b", "y"), ("-1", "", "x,z")]
SPEC = HashSpec(bits=20)


def expected_indices():
    return [token_index(f, v, SPEC) for _, a, b in ROWS for f, v in (("f1", a), ("f2", b))]


def csv_text(sep=",") -> str:
    def q(v):
        return f'"{v}"' if sep in v else v

    return "label" + sep + "f1" + sep + "f2\n" + "".join(sep.join(q(v) for v in row) + "\n" for row in ROWS)


def read_rows(path, **spec_args):
    data = open_input(str(path), spec=build_spec(**spec_args), hashing=SPEC, require_label=True)
    return data.all_rows()


@pytest.mark.parametrize("kind", ["csv", "tsv", "csv.gz", "parquet", "crlf"])
def test_formats_agree(tmp_path, kind):
    path = tmp_path / f"data.{kind}"
    if kind == "csv":
        path.write_text(csv_text())
    elif kind == "crlf":
        path.write_bytes(csv_text().replace("\n", "\r\n").encode())
    elif kind == "tsv":
        path.write_text(csv_text("\t"))
    elif kind == "csv.gz":
        path.write_bytes(gzip.compress(csv_text().encode()))
    else:
        pl.DataFrame({"label": [1, 0, -1], "f1": ["a", "b", None], "f2": ["x", "y", "x,z"]}).write_parquet(path)
    rows = read_rows(path)
    assert rows.indices.tolist() == expected_indices()
    assert rows.labels.tolist() == [1.0, 0.0, 0.0]


def test_stdin(monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(gzip.compress(csv_text().encode()))))
    rows = read_rows("-")
    assert rows.indices.tolist() == expected_indices()


def test_utf8_bom_in_header(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbf" + csv_text().encode())
    assert read_rows(path).indices.tolist() == expected_indices()


def test_criteo_preset_with_and_without_label(tmp_path):
    ints = [str(i) for i in range(13)]
    cats = [f"c{i}" for i in range(26)]
    (tmp_path / "with.tsv").write_text("\t".join(["1", *ints, *cats]) + "\n")
    (tmp_path / "without.tsv").write_text("\t".join([*ints, *cats]) + "\n")
    labelled = read_rows(tmp_path / "with.tsv", preset="criteo")
    assert labelled.labels.tolist() == [1.0]
    assert len(labelled.indices) == 39
    assert labelled.indices[13] == token_index("C1", "c0", SPEC)
    unlabelled = open_input(str(tmp_path / "without.tsv"), spec=build_spec(preset="criteo"), hashing=SPEC, require_label=False).all_rows()
    assert unlabelled.indices.tolist() == labelled.indices.tolist()


def test_libsvm(tmp_path):
    path = tmp_path / "data.svm"
    path.write_text("1 3:1 7:0.5\n-1 3:2\n0\n")
    rows = read_rows(path, row_norm=False)
    assert sniff_format(path.read_bytes(), None) == "libsvm"
    idx = lambda t: token_index(SPARSE_FIELD, t, SPEC)  # noqa: E731
    assert rows.indices.tolist() == [idx("3"), idx("7"), idx("3")]
    assert rows.values.tolist() == [1.0, 0.5, 2.0]
    assert rows.offsets.tolist() == [0, 2, 3, 3]
    assert rows.labels.tolist() == [1.0, 0.0, 0.0]
    # by default (its features are one bag) each row is scaled to the rows' mean squared
    # norm, (1.25 + 4) / 2; the empty row stays empty (fmctr.hashing.rownorm)
    scaled = read_rows(path).values
    assert np.allclose(scaled, [*np.sqrt(2.625 / 1.25) * np.array([1.0, 0.5]), np.sqrt(2.625 / 4) * 2.0])


def test_libffm_keeps_the_field_in_the_token(tmp_path):
    path = tmp_path / "data.ffm"
    path.write_text("1 0:3:1 1:3:1\n0 0:5:0.25\n")
    rows = read_rows(path, row_norm=False)
    assert sniff_format(path.read_bytes(), None) == "libffm"
    idx = lambda t: token_index(SPARSE_FIELD, t, SPEC)  # noqa: E731
    assert rows.indices.tolist() == [idx("0:3"), idx("1:3"), idx("0:5")]
    assert rows.indices[0] != rows.indices[1]
    assert rows.values.tolist() == [1.0, 1.0, 0.25]


def test_multi_valued_and_numeric_columns_from_flags(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("label,user,genres,price,id\n1,u1,A|B,2.5,r1\n0,u2,,,r2\n")
    rows = read_rows(path, multi=["genres"], numeric=["price"], ignore=["id"], numeric_mode="log1p",
                     row_norm=False)
    g = lambda t: token_index("genres", t, SPEC)  # noqa: E731
    assert rows.offsets.tolist() == [0, 4, 7]
    assert rows.indices[2:4].tolist() == [g("A"), g("B")]
    np.testing.assert_allclose(rows.values[:4], [1, np.log1p(2.5), 1, 1], rtol=1e-6)


def test_schema_file_toml_and_json(tmp_path):
    (tmp_path / "s.toml").write_text('label = "click"\nnumeric = ["price"]\nignore = ["id"]\nnumeric_mode = "raw"\n')
    (tmp_path / "s.json").write_text('{"label": "click", "numeric": ["price"], "ignore": ["id"], "numeric_mode": "raw"}')
    data = tmp_path / "d.csv"
    data.write_text("id,click,site,price\n1,1,s1,3\n2,0,s2,4\n")
    a = read_rows(data, schema_file=tmp_path / "s.toml")
    b = read_rows(data, schema_file=tmp_path / "s.json")
    assert a.indices.tolist() == b.indices.tolist()
    assert a.values.tolist() == [1.0, 3.0, 1.0, 4.0]
    assert a.labels.tolist() == [1.0, 0.0]
