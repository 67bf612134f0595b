"""fmctr against peers on real and planted data, every model on the same splits, in one command.

    python bench/suite.py                                  # the "choose" cases, peers, tune 60 s per case
    python bench/suite.py --group all --no-tune --seeds 1  # every case
    python bench/suite.py --cases adult,ml100k --no-peers --seeds 3 --fmctr-args "--dim 16"
    python bench/suite.py --json out.json                  # also every number as JSON

Prepared splits and the peers' results are cached under --cache (default
~/.cache/fmctr-suite/prepared): a rerun of fmctr-only experiments reuses them
(`--refresh-peers` recomputes the peers). The raw data is never copied into the repo:
`bash ../shared/data/suite/fetch.sh` writes the Parquet files to ~/.cache/fmctr-suite.
`prepare_case(name, cache)` is importable (`from bench.suite import prepare_case`).

Cases (group "choose": cases to choose fmctr's defaults on; "check": held back to check them)
- criteo [choose]: criteo-kaggle-head10k, first 8,000 rows train, last 2,000 test
  (as bench/real_samples.py); raw Criteo TSV, `--preset criteo`.
- avazu [choose]: avazu-head10k, random 80/20 split (RandomState(0) permutation, the
  first 20% test: sklearn's train_test_split(test_size=0.2, random_state=0)); `--preset avazu`.
- adult [choose]: UCI Adult, the classic split adult.data (32,561 rows) / adult.test
  (16,281). NOTE: adult.parquet holds adult.test FIRST (rows 0..16,280) and adult.data
  after it (row 16,281 is adult.data's first row, "39, State-gov, 77516"), so train is
  the LAST 32,561 rows and test the first 16,281. Label income ">50K" (a trailing "."
  stripped); fnlwgt dropped; 5 numeric columns, 8 categorical.
- ml100k [choose]: MovieLens-100k ratings joined with users and items; label rating >= 4;
  rows sorted by timestamp (stable), last 20% test. Features user_id, movie_id,
  gender, occupation, zip_code, release_year (categorical), age (numeric), genres (one
  multi-valued column "Action|Comedy"). Title, timestamp, rating dropped.
- planted10k, planted100k [choose], planted1m [check]: sample_data/generate.py's
  criteo_like (seed 0, vocab_max = train rows, as bench/accuracy.py at 1M), drawn as one
  sample of train + test rows and split in file order; test 50k / 50k / 100k rows.
- planted_rare [check]: criteo_like with target_rate 0.005 (the generator's own base
  rate: the planted bias is shifted down), 200k train + 100k test, vocab_max 200k.
- bio_kdd04 [check]: KDD Cup 2004 protein homology, 74 numeric columns (renamed f4..f77,
  all `--numeric`), label target; split by block EXAMPLE_ID: RandomState(0) permutation
  of the 153 sorted block ids, the first 31 blocks test. BLOCK_ID, EXAMPLE_ID dropped.
- clothing [check]: women's clothing reviews, label `Recommended IND`, random 80/20
  split (RandomState(0) permutation, first 20% test). review_words and title_words:
  the distinct lowercase words ([a-z']+) of Review Text and of Title, multi-valued;
  clothing_id, division, department, class categorical; age and
  positive_feedback numeric. Rating (almost the label: leakage) and the row index dropped.
- diabetes, digits [choose]: sklearn's bundled load_diabetes (442 rows, 10 standardised
  measurements; label: progression above its median) and load_digits (1,797 rows, 64
  whole pixel values; label: digit >= 5), all `--numeric`; stratified 70/30 split,
  train_test_split(random_state=0). Added to choose the numeric `auto` mode on dense data.
- breast_cancer [check]: sklearn's load_breast_cancer, 30 numeric columns, label
  1 = malignant; stratified 70/30 split, train_test_split(random_state=0).

fmctr, run as `python -m fmctr` subprocesses with the case's data args:
- defaults: `train TRAIN -o M -q --seed S <args> <--fmctr-args>`, `eval TEST -m M --json`;
  with --seeds N, seeds 0..N-1: mean AUC/logloss and the AUC spread (max - min).
- tuned: `tune TRAIN -o M --budget S <args>` as a user without validation data runs it
  (trials scored on the rows `train` holds out, the winner refit on every row, so tuned
  and defaults see the same rows), then `eval TEST`.

Peers. Each sweeps a few settings: fit on FIT, score VALID, choose by validation AUC,
refit on all training rows with the chosen setting, score TEST. The sweep climbs from
least to most capacity (passes, C, epochs) and stops at the first rung whose validation
AUC is below the best so far (so liblinear at C 10 on 1M rows is not run when C 0.1
already overfits; on a single-peaked curve the choice is that of the full sweep). VALID is the last 20%
of the training rows for the time-ordered cases (criteo, ml100k) and a random 20%
(RandomState(0)) otherwise. All three see the same features, built from the training
rows only: a categorical value is one feature ("field=value", a missing value is the
value ""); a multi-valued column is a bag of its tokens; a numeric column x becomes
z = standardised sign(x)*ln(1+|x|) (median-filled, clipped to +-5), a missing
indicator, and a one-hot of its 16-quantile bin. Values unseen in the training rows
are dropped.
- VW: vowpalwabbit.Workspace, logistic regression `--loss_function logistic -b 24`
  (its defaults: adaptive, normalised, invariant updates, lr 0.5), one namespace per
  field; sweep --passes {1,3,10} x --l2 {0,1e-6}, multi-pass with --cache_file and
  --holdout_off.
- sklearn LR: LogisticRegression(solver="liblinear") on the sparse matrix; sweep C in
  {0.01,0.1,1,10,100}. Fits on 150k rows or more use solver="lbfgs", max_iter=200
  (liblinear took 22 s at C 0.01 and 49 s at C 0.1 on 80k planted rows, 2 busy cores).
- xLearn FM: create_fm, k=8 (fmctr's default dim), lr 0.2, lambda 0.002 (its defaults,
  instance normalisation on), 2 threads, lock-free off; sweep epoch {3,10,30}; libsvm
  input with 1-based feature ids. Run in a subprocess (a crash is recorded, not fatal).
- sklearn LR +values: the same, where the case has numeric columns whose training
  values are all whole numbers (adult's capital gains, ages, Criteo's counts, digits'
  pixels), with each such column's value also one-hot ("capital-gain==7688"; unseen
  values dropped) - as a user who reads every column as a category has them, and as
  fmctr's `exact` rival hashes them. "-" where the case has no such column.
Peers not importable are installed with pip at the start (ensure_peers; xLearn is a
source build of about 2 minutes and needs USER set). A peer that fails on a case gets
its error text in the table.

Runtime (2 cores shared with other work): the ten cases other than planted1m take about
35 min with peers computed, about 5 min with peers cached. The peers on planted1m take
well over 20 min, mostly VW (313 s at 200k rows and 330 s on bio_kdd04, against
61-137 s for sklearn and xLearn): its text input is built with object-array string
concatenation in Python, probably the bulk of it - the first thing to speed up.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "sample_data"))
DATA = ROOT.parent / "shared" / "data"
SUITE = Path.home() / ".cache" / "fmctr-suite"
PREPARED_VERSION = 1  # bump when a case's preparation changes
PEER_VERSION = 2  # bump when the peers' features or sweeps change (2: sklearn's C up to 100)

CHOOSE = ["criteo", "avazu", "adult", "ml100k", "planted10k", "planted100k", "diabetes", "digits"]
CHECK = ["bio_kdd04", "clothing", "breast_cancer", "planted1m", "planted_rare"]
CRITEO_COLUMNS = ["label"] + [f"I{i}" for i in range(1, 14)] + [f"C{i}" for i in range(1, 27)]
PLANTED = {  # name -> (train rows, test rows, target rate)
    "planted10k": (10_000, 50_000, 0.22), "planted100k": (100_000, 50_000, 0.22),
    "planted1m": (1_000_000, 100_000, 0.22), "planted_rare": (200_000, 100_000, 0.005),
}


@dataclass
class Case:
    """A prepared case: its files, fmctr's data args, and the schema the peers use."""

    name: str
    group: str
    train: str
    test: str
    args: list[str]
    label: str = "label"
    categorical: list[str] = field(default_factory=list)
    numeric: list[str] = field(default_factory=list)
    multi: list[str] = field(default_factory=list)
    time_ordered: bool = False
    raw_format: str = "csv"  # csv (header) or criteo (headerless TSV)
    note: str = ""


# ---------------------------------------------------------------- preparing the cases


def _write_pair(out: Path, train: pl.DataFrame, test: pl.DataFrame) -> tuple[str, str]:
    out.mkdir(parents=True, exist_ok=True)
    train.write_csv(out / "train.csv")
    test.write_csv(out / "test.csv")
    return str(out / "train.csv"), str(out / "test.csv")


def _random_split(n: int, test_fraction: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """sklearn's train_test_split(test_size, random_state=seed) without sklearn: the
    first ceil(fraction * n) of RandomState(seed)'s permutation are the test rows."""
    order = np.random.RandomState(seed).permutation(n)
    n_test = int(np.ceil(test_fraction * n))
    return np.sort(order[n_test:]), np.sort(order[:n_test])


def _criteo(out: Path) -> Case:
    lines = (DATA / "criteo-kaggle-head10k" / "train_head10k.txt").read_bytes().splitlines(keepends=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train.tsv").write_bytes(b"".join(lines[:8000]))
    (out / "test.tsv").write_bytes(b"".join(lines[-2000:]))
    return Case("criteo", "choose", str(out / "train.tsv"), str(out / "test.tsv"), ["--preset", "criteo"],
                categorical=CRITEO_COLUMNS[14:], numeric=CRITEO_COLUMNS[1:14], time_ordered=True, raw_format="criteo")


def _avazu(out: Path) -> Case:
    header, *rows = (DATA / "avazu-head10k" / "avazu_head10k.csv").read_bytes().splitlines(keepends=True)
    train_rows, test_rows = _random_split(len(rows))
    out.mkdir(parents=True, exist_ok=True)
    (out / "train.csv").write_bytes(header + b"".join(rows[i] for i in train_rows))
    (out / "test.csv").write_bytes(header + b"".join(rows[i] for i in test_rows))
    columns = header.decode().strip().split(",")
    return Case("avazu", "choose", str(out / "train.csv"), str(out / "test.csv"), ["--preset", "avazu"],
                label="click", categorical=[c for c in columns if c not in ("id", "click")])


def _adult(out: Path) -> Case:
    d = pl.read_parquet(SUITE / "adult.parquet")
    numeric = ["age", "educational-num", "capital-gain", "capital-loss", "hours-per-week"]
    d = d.with_columns(label=(pl.col("income").str.strip_chars().str.strip_chars_end(".") == ">50K").cast(pl.Int8))
    d = d.drop("income", "fnlwgt").select("label", pl.exclude("label"))
    # adult.parquet is adult.test (16,281 rows) followed by adult.data (32,561 rows).
    assert d.row(16_281)[1:3] == (39, "State-gov"), "adult.parquet is not in the expected order"
    train, test = _write_pair(out, d[16_281:], d[:16_281])
    categorical = [c for c in d.columns if c not in numeric and c != "label"]
    return Case("adult", "choose", train, test, ["--numeric", ",".join(numeric)], categorical=categorical,
                numeric=numeric, note="train = adult.data = the parquet's last 32,561 rows")


def _ml100k(out: Path) -> Case:
    ratings = pl.read_parquet(SUITE / "ml100k_ratings.parquet")
    users = pl.read_parquet(SUITE / "ml100k_users.parquet")
    items = pl.read_parquet(SUITE / "ml100k_items.parquet")
    genre_cols = items.columns[items.columns.index("unknown"):]
    genres = pl.concat_list([pl.when(pl.col(g) == 1).then(pl.lit(g)) for g in genre_cols]).list.drop_nulls()
    items = items.select("movie_id", genres.list.join("|").alias("genres"),
                         pl.col("release_date").str.slice(-4).alias("release_year"))
    d = (ratings.join(users, on="user_id", how="left").join(items, on="movie_id", how="left")
         .sort("timestamp", maintain_order=True)
         .select((pl.col("rating") >= 4).cast(pl.Int8).alias("label"), "user_id", "movie_id", "age", "gender",
                 "occupation", "zip_code", "genres", "release_year"))
    n_train = int(round(0.8 * d.height))
    train, test = _write_pair(out, d[:n_train], d[n_train:])
    return Case("ml100k", "choose", train, test, ["--numeric", "age", "--multi", "genres"],
                categorical=["user_id", "movie_id", "gender", "occupation", "zip_code", "release_year"],
                numeric=["age"], multi=["genres"], time_ordered=True)


def _bio(out: Path) -> Case:
    d = pl.read_parquet(SUITE / "bio_kdd04.parquet")
    numeric = [f"f{c}" for c in d.columns[3:]]
    blocks = np.sort(d["EXAMPLE_ID"].unique().to_numpy())
    order = np.random.RandomState(0).permutation(len(blocks))
    test_blocks = blocks[order[: int(round(0.2 * len(blocks)))]]
    d = d.rename(dict(zip(d.columns[3:], numeric))).with_columns(pl.col("target").cast(pl.Int8).alias("label"))
    is_test = d["EXAMPLE_ID"].is_in(test_blocks.tolist())
    d = d.select("label", *numeric)
    train, test = _write_pair(out, d.filter(~is_test), d.filter(is_test))
    return Case("bio_kdd04", "check", train, test, ["--numeric", ",".join(numeric)], numeric=numeric,
                note=f"{len(test_blocks)} of {len(blocks)} blocks test")


def _words(column: str) -> pl.Expr:
    words = pl.col(column).fill_null("").str.to_lowercase().str.extract_all(r"[a-z']+")
    return words.list.unique(maintain_order=True).list.join("|")


def _clothing(out: Path) -> Case:
    d = pl.read_parquet(SUITE / "womens_clothing.parquet")
    d = d.select(pl.col("Recommended IND").cast(pl.Int8).alias("label"),
                 pl.col("Clothing ID").alias("clothing_id"), pl.col("Age").alias("age"),
                 pl.col("Positive Feedback Count").alias("positive_feedback"),
                 pl.col("Division Name").alias("division"), pl.col("Department Name").alias("department"),
                 pl.col("Class Name").alias("class"), _words("Title").alias("title_words"),
                 _words("Review Text").alias("review_words"))
    train_rows, test_rows = _random_split(d.height)
    train, test = _write_pair(out, d[train_rows], d[test_rows])
    return Case("clothing", "check", train, test,
                ["--numeric", "age,positive_feedback", "--multi", "title_words,review_words"],
                categorical=["clothing_id", "division", "department", "class"],
                numeric=["age", "positive_feedback"], multi=["title_words", "review_words"])


def _breast_cancer(out: Path) -> Case:
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    data = load_breast_cancer()
    names = [re.sub(r"\W+", "_", n) for n in data.feature_names]
    d = pl.DataFrame(data.data, schema=names).with_columns(label=pl.Series((data.target == 0).astype(np.int8)))
    d = d.select("label", *names)
    train_rows, test_rows = train_test_split(np.arange(d.height), test_size=0.3, random_state=0, stratify=data.target)
    train, test = _write_pair(out, d[np.sort(train_rows)], d[np.sort(test_rows)])
    return Case("breast_cancer", "check", train, test, ["--numeric", ",".join(names)], numeric=names,
                note="label 1 = malignant")


def _sklearn_dense(name: str, out: Path) -> Case:
    """sklearn's bundled diabetes (442 rows, 10 standardised measurements; label: the
    disease progression above its median) or digits (1,797 rows, 64 whole pixel values
    0-16; label: the digit is 5 or more), stratified 70/30 split, random_state=0."""
    from sklearn import datasets
    from sklearn.model_selection import train_test_split

    data = datasets.load_diabetes() if name == "diabetes" else datasets.load_digits()
    target = (data.target > np.median(data.target)) if name == "diabetes" else (data.target >= 5)
    names = [f"x{j}" for j in range(data.data.shape[1])]
    d = pl.DataFrame(data.data, schema=names).with_columns(label=pl.Series(target.astype(np.int8)))
    d = d.select("label", *names)
    train_rows, test_rows = train_test_split(np.arange(d.height), test_size=0.3, random_state=0, stratify=target)
    train, test = _write_pair(out, d[np.sort(train_rows)], d[np.sort(test_rows)])
    return Case(name, "choose", train, test, ["--numeric", ",".join(names)], numeric=names,
                note="diabetes: label progression > median" if name == "diabetes" else "digits: label digit >= 5")


def _planted(name: str, out: Path) -> Case:
    import generate

    train_rows, test_rows, rate = PLANTED[name]
    g = generate.criteo_like(train_rows + test_rows, seed=0, vocab_max=train_rows, target_rate=rate)
    lines = g.text.splitlines(keepends=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train.tsv").write_bytes(b"".join(lines[:train_rows]))
    (out / "test.tsv").write_bytes(b"".join(lines[train_rows:]))
    from sklearn.metrics import roc_auc_score

    oracle = roc_auc_score(g.labels[train_rows:], g.probabilities[train_rows:])
    return Case(name, "check" if name in CHECK else "choose", str(out / "train.tsv"), str(out / "test.tsv"),
                ["--preset", "criteo"], categorical=CRITEO_COLUMNS[14:], numeric=CRITEO_COLUMNS[1:14],
                raw_format="criteo", note=f"oracle test AUC {oracle:.4f}")


BUILDERS = {"criteo": _criteo, "avazu": _avazu, "adult": _adult, "ml100k": _ml100k, "bio_kdd04": _bio,
            "clothing": _clothing, "breast_cancer": _breast_cancer,
            "diabetes": lambda out: _sklearn_dense("diabetes", out), "digits": lambda out: _sklearn_dense("digits", out),
            **{name: (lambda out, name=name: _planted(name, out)) for name in PLANTED}}


def prepare_case(name: str, cache: Path | None = None) -> Case:
    """Write the case's train/test files under cache/NAME (once) and return the Case."""
    out = Path(cache or SUITE / "prepared") / name
    stamp = out / "case.json"
    if stamp.exists():
        saved = json.loads(stamp.read_text())
        if saved.pop("version", None) == PREPARED_VERSION:
            return Case(**saved)
    case = BUILDERS[name](out)
    stamp.write_text(json.dumps({**asdict(case), "version": PREPARED_VERSION}, indent=1))
    return case


def read_frame(case: Case, path: str) -> pl.DataFrame:
    """A case's file as a frame: `label` (int) and its feature columns as text/float."""
    if case.raw_format == "criteo":
        d = pl.read_csv(path, separator="\t", has_header=False, new_columns=CRITEO_COLUMNS, infer_schema=False,
                        quote_char=None)
    else:
        d = pl.read_csv(path, infer_schema=False)
    d = d.with_columns(pl.col(case.label).cast(pl.Float64).cast(pl.Int8).alias("label"))
    return d.with_columns(pl.col(case.numeric).cast(pl.Float64, strict=False))


# ---------------------------------------------------------------- the peers' features


def _categorical_ids(train: pl.Series, test: pl.Series) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Each training value's id (0..n-1); test values unseen in training get -1."""
    train, test = train.cast(pl.String).fill_null(""), test.cast(pl.String).fill_null("")
    values = train.unique(maintain_order=True)
    ids = pl.Series(range(len(values)), dtype=pl.Int64)
    to_id = lambda s: s.replace_strict(values, ids, default=-1).to_numpy()  # noqa: E731
    return to_id(train), to_id(test), values.to_list()


def _numeric_parts(train: pl.Series, test: pl.Series):
    """z (standardised signed log1p, median-filled, clipped), missing flag, 16-quantile bin."""
    def t(s):
        x = s.to_numpy().astype(np.float64)
        return np.sign(x) * np.log1p(np.abs(x))
    a, b = t(train), t(test)
    seen = a[~np.isnan(a)]
    median = np.median(seen) if len(seen) else 0.0
    mean, std = (seen.mean(), seen.std() or 1.0) if len(seen) else (0.0, 1.0)
    edges = np.unique(np.quantile(seen, np.linspace(0, 1, 17)[1:-1])) if len(seen) else np.array([])
    out = []
    for x in (a, b):
        missing = np.isnan(x)
        z = np.clip((np.where(missing, median, x) - mean) / std, -5, 5)
        out.append((z, missing, np.searchsorted(edges, np.where(missing, median, x))))
    return out, len(edges) + 1


def whole_columns(case: Case, train: pl.DataFrame) -> list[str]:
    """The numeric columns whose training values are all whole numbers (as fmctr's
    `exact` rival takes them)."""
    def whole(s: pl.Series) -> bool:
        x = s.cast(pl.Float64, strict=False).drop_nulls().drop_nans()
        return len(x) > 0 and bool((x == x.floor()).all())
    return [c for c in case.numeric if whole(train[c])]


def _value_text(s: pl.Series) -> pl.Series:
    x = s.cast(pl.Float64, strict=False)
    return pl.Series(np.where(np.isnan(x.fill_null(np.nan).to_numpy()), "",
                              x.fill_null(0).fill_nan(0).cast(pl.Int64).cast(pl.String).to_numpy()))


def _multi_tokens(train: pl.Series, test: pl.Series, sep: str = "|"):
    """(row, token id) pairs of a multi-valued column; test tokens unseen in training dropped."""
    def explode(s):
        e = pl.DataFrame({"tok": s.cast(pl.String).fill_null("").str.split(sep)}).with_row_index("row").explode("tok")
        return e.filter(pl.col("tok") != "")
    a, b = explode(train), explode(test)
    values = a["tok"].unique(maintain_order=True)
    ids = pl.Series(range(len(values)), dtype=pl.Int64)
    pairs = [(e["row"].to_numpy(), e["tok"].replace_strict(values, ids, default=-1).to_numpy()) for e in (a, b)]
    return pairs, values.to_list()


class Features:
    """Sparse design matrices for train and test, built from the training rows only;
    `names[j]` is feature j as "field=value" (or "field:z"), `fields[j]` its field."""

    def __init__(self, case: Case, train: pl.DataFrame, test: pl.DataFrame, values: bool = False):
        self.names: list[str] = []
        self.fields: list[str] = []
        self.parts = [([], [], []), ([], [], [])]  # per split: rows, cols, values
        self.n = (train.height, test.height)
        for c in case.categorical:
            a, b, seen = _categorical_ids(train[c], test[c])
            self._add(c, [f"{c}={v}" for v in seen], [(np.arange(len(x)), x, np.ones(len(x))) for x in (a, b)])
        for c in case.numeric:
            (pa, pb), n_bins = _numeric_parts(train[c], test[c])
            names = [f"{c}:z", f"{c}=missing"] + [f"{c}=q{i}" for i in range(n_bins)]
            self._add(c, names, [self._numeric_triples(p) for p in (pa, pb)])
            if values and c in whole_columns(case, train):  # each value as a category too ("sklearn LR +values")
                a, b, seen = _categorical_ids(_value_text(train[c]), _value_text(test[c]))
                self._add(c, [f"{c}=={v}" for v in seen], [(np.arange(len(x)), x, np.ones(len(x))) for x in (a, b)])
        for c in case.multi:
            pairs, values = _multi_tokens(train[c], test[c])
            self._add(c, [f"{c}={v}" for v in values], [(r, x, np.ones(len(x))) for r, x in pairs])
        self.y = (train["label"].to_numpy(), test["label"].to_numpy())

    @staticmethod
    def _numeric_triples(part):
        z, missing, bins = part
        rows = np.arange(len(z))
        m = np.flatnonzero(missing)
        return (np.concatenate([rows, m, rows]), np.concatenate([np.zeros(len(z), int), np.ones(len(m), int), 2 + bins]),
                np.concatenate([z, np.ones(len(m)), np.ones(len(z))]))

    def _add(self, fieldname, names, triples):
        base = len(self.names)
        self.names += names
        self.fields += [fieldname] * len(names)
        for part, (r, c, v) in zip(self.parts, triples):
            keep = (c >= 0) & (v != 0)
            part[0].append(r[keep]), part[1].append(c[keep] + base), part[2].append(v[keep])

    def matrix(self, split: int):
        from scipy.sparse import csr_matrix

        rows, cols, vals = (np.concatenate(p) for p in self.parts[split])
        return csr_matrix((vals, (rows, cols)), shape=(self.n[split], len(self.names)))


def _lines(X, y, token: callable) -> list[str]:
    """One text line per row of X: the label, then token(ids, values) of its nonzeros."""
    X = X.tocoo()
    frame = pl.DataFrame({"row": X.row, "tok": token(X.col, X.data)}).group_by("row").agg(pl.col("tok").str.join(" "))
    by_row = np.full(X.shape[0], "", dtype=object)
    by_row[frame["row"].to_numpy()] = frame["tok"].to_numpy()
    return [f"{label} {toks}\n" for label, toks in zip(y.tolist(), by_row.tolist())]


def write_libsvm(X, y, path: Path) -> None:
    def token(cols, vals):
        return (pl.Series(cols + 1).cast(pl.String) + ":" + pl.Series(np.round(vals, 5)).cast(pl.String)).to_numpy()
    path.write_text("".join(_lines(X, y, token)))


def write_vw(X, y, feats: Features, path: Path) -> None:
    safe = lambda s: re.sub(r"[\s|:]", "_", s)  # noqa: E731
    ns = np.array([f"|{safe(f)} " for f in feats.fields], dtype=object)
    names = np.array([safe(n) for n in feats.names], dtype=object)

    def token(cols, vals):
        value = np.where(vals == 1, "", ":" + pl.Series(np.round(vals, 5)).cast(pl.String).to_numpy().astype(object))
        return (ns[cols] + names[cols] + value).astype(str)
    path.write_text("".join(_lines(X, np.where(y > 0, 1, -1), token)))


# ---------------------------------------------------------------- the peers


def metrics(y: np.ndarray, p: np.ndarray) -> dict:
    from sklearn.metrics import log_loss, roc_auc_score

    p = np.clip(np.asarray(p, dtype=np.float64), 1e-7, 1 - 1e-7)
    return {"auc": float(roc_auc_score(y, p)), "logloss": float(log_loss(y, p, labels=[0, 1]))}


def valid_split(case: Case, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Fit and validation rows carved from the training rows: the last 20% for the
    time-ordered cases, a random 20% (RandomState(0)) otherwise."""
    if case.time_ordered:
        cut = int(round(0.8 * n))
        return np.arange(cut), np.arange(cut, n)
    return _random_split(n)


def sklearn_lr(setting: dict, data) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression

    X, y, X_test = data
    big = X.shape[0] >= 150_000  # liblinear's Newton steps take many minutes there
    model = LogisticRegression(C=setting["C"], solver="lbfgs" if big else "liblinear", max_iter=200)
    return model.fit(X, y).predict_proba(X_test)[:, 1]


def vw_lr(setting: dict, work: Path) -> np.ndarray:
    import vowpalwabbit

    (work / "train.cache").unlink(missing_ok=True)
    flags = f"--loss_function logistic -b 24 --passes {setting['passes']} --l2 {setting['l2']} --quiet"
    if setting["passes"] > 1:
        flags += f" --cache_file {work / 'train.cache'} --holdout_off"
    vowpalwabbit.Workspace(f"-d {work / 'train.vw'} {flags} -f {work / 'model.vw'}").finish()
    vowpalwabbit.Workspace(f"-d {work / 'test.vw'} -t -i {work / 'model.vw'} -p {work / 'p.txt'} --link logistic "
                           "--quiet").finish()
    return np.loadtxt(work / "p.txt", ndmin=1)


XLEARN_RUN = """
import json, sys, xlearn
train, test, model, out, params = sys.argv[1:6]
fm = xlearn.create_fm()
fm.setTrain(train)
fm.disableLockFree()
fm.fit(json.loads(params), model)
fm.setTest(test)
fm.setSigmoid()
fm.predict(model, out)
"""


def xlearn_fm(setting: dict, work: Path) -> np.ndarray:
    params = {"task": "binary", "k": 8, "lr": 0.2, "lambda": 0.002, "epoch": setting["epoch"], "nthread": 2}
    done = subprocess.run([sys.executable, "-c", XLEARN_RUN, str(work / "train.svm"), str(work / "test.svm"),
                           str(work / "model.xl"), str(work / "p.txt"), json.dumps(params)],
                          capture_output=True, text=True, env={**os.environ, "USER": os.environ.get("USER") or "bench"})
    if done.returncode:
        log = re.sub(r"\x1b\[[0-9;]*m", "", done.stdout + done.stderr).strip().splitlines()
        raise RuntimeError(f"xLearn exited {done.returncode}: {' / '.join(log[-3:])[:300]}")
    return np.loadtxt(work / "p.txt", ndmin=1)


PEERS = {  # name -> (rungs of settings, least to most capacity; fit-and-score function; short form)
    "VW LR": ([[{"passes": p, "l2": l2} for l2 in (0, 1e-6)] for p in (1, 3, 10)], vw_lr,
              lambda s: f"passes {s['passes']}" + (f", l2 {s['l2']:g}" if s["l2"] else "")),
    "sklearn LR": ([[{"C": c}] for c in (0.01, 0.1, 1, 10, 100)], sklearn_lr, lambda s: f"C {s['C']:g}"),
    # the same, each whole-number numeric column's values also one-hot (as a user who
    # reads every column as a category has them); only where the case has such a column
    "sklearn LR +values": ([[{"C": c}] for c in (0.01, 0.1, 1, 10, 100)], sklearn_lr, lambda s: f"C {s['C']:g}"),
    "xLearn FM": ([[{"epoch": e}] for e in (3, 10, 30)], xlearn_fm, lambda s: f"{s['epoch']} epochs"),
}


def _peer_data(peer: str, X, y, X_test, feats: Features, work: Path):
    """What the peer's function takes: the matrices, or a folder with them as its text input."""
    if peer.startswith("sklearn LR"):
        return X, y, X_test
    work.mkdir(parents=True, exist_ok=True)
    if peer == "VW LR":
        write_vw(X, y, feats, work / "train.vw")
        write_vw(X_test, np.zeros(X_test.shape[0]), feats, work / "test.vw")
    else:
        write_libsvm(X, y, work / "train.svm")
        write_libsvm(X_test, np.zeros(X_test.shape[0], int), work / "test.svm")
    return work


def _sweep(rungs, score) -> tuple[dict, dict]:
    """Climb the rungs (least capacity first), scoring each setting on validation; stop
    at the first rung whose best is below the best so far. Returns (best, {setting: AUC})."""
    tried = {}
    best, best_auc = None, -1.0
    for rung in rungs:
        aucs = [score(s) for s in rung]
        tried.update({id(s): (s, a) for s, a in zip(rung, aucs)})
        if max(aucs) < best_auc:
            break
        best, best_auc = rung[int(np.argmax(aucs))], max(aucs)
    return best, list(tried.values())


def run_peer(peer: str, case: Case, feats: Features) -> dict:
    """Sweep on fit/valid, refit the best on all training rows, score the test rows."""
    started = time.perf_counter()
    X, X_test = feats.matrix(0), feats.matrix(1)
    y, y_test = feats.y
    fit_rows, valid_rows = valid_split(case, X.shape[0])
    rungs, fit, show = PEERS[peer]
    with tempfile.TemporaryDirectory(prefix="fmctr-suite-peer-") as tmp:
        data = _peer_data(peer, X[fit_rows], y[fit_rows], X[valid_rows], feats, Path(tmp) / "sweep")
        best, tried = _sweep(rungs, lambda s: metrics(y[valid_rows], fit(s, data))["auc"])
        test = metrics(y_test, fit(best, _peer_data(peer, X, y, X_test, feats, Path(tmp) / "final")))
    return {**test, "chosen": show(best), "valid_auc": {show(s): round(a, 4) for s, a in tried},
            "seconds": round(time.perf_counter() - started, 1)}


def peer_results(case: Case, cache: Path, refresh: bool, log) -> dict:
    """Every peer's result on the case, from the cache unless refresh (or missing)."""
    path = cache / "peers.json"
    store = json.loads(path.read_text()) if path.exists() else {}
    keys = {peer: f"{case.name}|{peer}|v{PEER_VERSION}|prep{PREPARED_VERSION}" for peer in PEERS}
    if not refresh and all(k in store for k in keys.values()):
        return {peer: store[k] for peer, k in keys.items()}
    train, test = read_frame(case, case.train), read_frame(case, case.test)
    feats = Features(case, train, test)
    out = {}
    for peer, key in keys.items():
        if key in store and not refresh:
            out[peer] = store[key]
            continue
        values = peer.endswith("+values")
        if values and not whole_columns(case, train):
            out[peer] = {"none": "no whole-number column"}
            continue
        try:
            out[peer] = run_peer(peer, case, Features(case, train, test, values=True) if values else feats)
        except Exception as e:  # a peer's failure is a result, not a crash
            out[peer] = {"error": f"{type(e).__name__}: {e}"[:300]}
        log(f"  {case.name}: {peer} {_cell(out[peer], chosen=True)} ({out[peer].get('seconds', '-')} s)")
        store = json.loads(path.read_text()) if path.exists() else {}
        store[key] = out[peer]
        path.write_text(json.dumps(store, indent=1))
    return out


# ---------------------------------------------------------------- fmctr


def fmctr(*args) -> str:
    """`python -m fmctr ARGS`; raise RuntimeError with its last stderr line on failure."""
    done = subprocess.run([sys.executable, "-m", "fmctr", *map(str, args)], capture_output=True, text=True, cwd=ROOT)
    if done.returncode:
        lines = done.stderr.strip().splitlines() or [""]
        raise RuntimeError(f"fmctr {args[0]} exited {done.returncode}: {lines[-1][:300]}")
    return done.stdout


def fmctr_defaults(case: Case, seeds: int, extra: list[str], work: Path) -> dict:
    """Train with the case's data args (and `extra`) for each seed; eval on test."""
    runs = []
    for seed in range(seeds):
        started = time.perf_counter()
        model = work / f"{case.name}.s{seed}.fm"
        fmctr("train", case.train, "-o", model, "-q", "--force", "--seed", seed, *case.args, *extra)
        runs.append({**json.loads(fmctr("eval", case.test, "-m", model, "--json")),
                     "seconds": time.perf_counter() - started})
    aucs = [r["auc"] for r in runs]
    return {"auc": float(np.mean(aucs)), "logloss": float(np.mean([r["logloss"] for r in runs])),
            "spread": float(max(aucs) - min(aucs)), "seeds": len(runs), "aucs": aucs,
            "seconds": round(sum(r["seconds"] for r in runs), 1)}


def fmctr_tuned(case: Case, budget: float, work: Path) -> dict:
    """`fmctr tune` on the training rows as a user without validation data runs it: it
    scores trials on the rows `fmctr train` holds out and refits the winner on every
    row, so tuned and defaults see the same rows. Its model on test."""
    started = time.perf_counter()
    model = work / f"{case.name}.tuned.fm"
    trials = json.loads(fmctr("tune", case.train, "-o", model, "--budget", budget, "--json", "-q",
                              "--force", *case.args))
    result = json.loads(fmctr("eval", case.test, "-m", model, "--json"))
    return {"auc": result["auc"], "logloss": result["logloss"], "trials": trials,
            "seconds": round(time.perf_counter() - started, 1)}


# ---------------------------------------------------------------- the table


def _cell(r: dict | None, spread: bool = False, chosen: bool = False) -> str:
    if r is None or "none" in r:
        return "-"
    if "error" in r:
        return f"FAILED: {r['error'][:120]}".replace("|", "/")
    text = f"{r['auc']:.4f} / {r['logloss']:.4f}"
    if spread and r.get("seeds", 1) > 1:
        text = f"{r['auc']:.4f} (spread {r['spread']:.4f}, {r['seeds']} seeds) / {r['logloss']:.4f}"
    return text + (f" ({r['chosen']})" if chosen and "chosen" in r else "")


def table(results: dict) -> str:
    peers = list(PEERS)
    head = ["case", "group", "rows train/test", "pos. rate", "fmctr defaults AUC / logloss", "fmctr tuned",
            *peers, "best peer"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in results.items():
        ok = {p: v for p, v in r["peers"].items() if "auc" in v}
        best = max(ok, key=lambda p: ok[p]["auc"]) if ok else None
        best_text = f"{best} {ok[best]['auc']:.4f}" if best else "-"
        if best and "auc" in (r.get("defaults") or {}):
            best_text += f" (fmctr {r['defaults']['auc'] - ok[best]['auc']:+.4f})"
        lines.append("| " + " | ".join([
            name, r["group"], f"{r['rows'][0]:,}/{r['rows'][1]:,}", f"{r['positive_rate']:.4f}",
            _cell(r.get("defaults"), spread=True), _cell(r.get("tuned")),
            *(_cell(r["peers"].get(p), chosen=True) for p in peers), best_text]) + " |")
    return "\n".join(lines)


def _count(case: Case) -> tuple[int, int, float]:
    train, test = read_frame(case, case.train), read_frame(case, case.test)
    return train.height, test.height, float(train["label"].mean())


def run_case(name: str, args, work: Path, log) -> dict:
    case = prepare_case(name, args.cache)
    n_train, n_test, rate = _count(case)
    out = {"group": case.group, "rows": [n_train, n_test], "positive_rate": rate, "args": case.args,
           "note": case.note, "peers": {}}
    if not args.no_peers:
        out["peers"] = peer_results(case, args.cache, args.refresh_peers, log)
    for key, run in (("defaults", None if args.no_defaults else
                      lambda: fmctr_defaults(case, args.seeds, args.fmctr_args.split(), work)),
                     ("tuned", None if args.no_tune else lambda: fmctr_tuned(case, args.tune_budget, work))):
        if run is None:
            continue
        try:
            out[key] = run()
        except RuntimeError as e:
            out[key] = {"error": str(e)}
        log(f"  {name}: fmctr {key} {_cell(out[key], spread=True)} ({out[key].get('seconds', '-')} s)")
    return out


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", help=f"comma-separated, of: {', '.join(CHOOSE + CHECK)}")
    p.add_argument("--group", choices=["choose", "check", "all"], default="choose",
                   help="which cases, when --cases is not given (default: choose)")
    p.add_argument("--seeds", type=int, default=1, help="fmctr defaults with --seed 0..N-1: mean and spread")
    p.add_argument("--tune-budget", type=float, default=60.0, help="seconds of `fmctr tune --budget` per case")
    p.add_argument("--no-tune", action="store_true", help="skip fmctr tune")
    p.add_argument("--no-defaults", action="store_true", help="skip the fmctr defaults runs")
    p.add_argument("--no-peers", action="store_true", help="skip the peers (cached results are not shown either)")
    p.add_argument("--refresh-peers", action="store_true", help="recompute the peers' cached results")
    p.add_argument("--fmctr-args", default="", help='extra `fmctr train` options for the defaults runs, e.g. "--dim 16"')
    p.add_argument("--cache", type=Path, default=SUITE / "prepared", help="prepared splits and peer results")
    p.add_argument("--json", type=Path, help="write every result here")
    args = p.parse_args(argv)
    names = args.cases.split(",") if args.cases else {"choose": CHOOSE, "check": CHECK, "all": CHOOSE + CHECK}[args.group]
    unknown = [n for n in names if n not in BUILDERS]
    if unknown:
        p.error(f"unknown case(s) {', '.join(unknown)}; known: {', '.join(CHOOSE + CHECK)}")
    return args, names


PEER_PACKAGES = {"sklearn": "scikit-learn", "vowpalwabbit": "vowpalwabbit", "xlearn": "xlearn"}


def ensure_peers(log) -> None:
    """pip install the peers' packages this Python cannot import (a failure is logged;
    that peer's cells then say FAILED)."""
    env = {**os.environ, "USER": os.environ.get("USER") or "bench"}  # (xLearn's build reads it)
    for module, package in PEER_PACKAGES.items():
        if subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, env=env).returncode == 0:
            continue
        log(f"{module} is not importable: pip install {package}")
        done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", package], capture_output=True, text=True,
                              env=env)
        if done.returncode:
            log(f"  pip install {package} failed: {(done.stderr.strip().splitlines() or [''])[-1][:200]}")


def main(argv=None) -> None:
    args, names = parse_args(argv)
    args.cache.mkdir(parents=True, exist_ok=True)
    log = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    if not args.no_peers:
        ensure_peers(log)
    started = time.perf_counter()
    results = {}
    with tempfile.TemporaryDirectory(prefix="fmctr-suite-") as tmp:
        for name in names:
            log(f"{name} ...")
            case_started = time.perf_counter()
            results[name] = run_case(name, args, Path(tmp), log)
            results[name]["seconds"] = round(time.perf_counter() - case_started, 1)
    print(table(results))
    notes = [f"{n}: {r['note']}" for n, r in results.items() if r["note"]]
    print("\n" + "\n".join(f"- {n}" for n in notes))
    print("\nfmctr data args: " + "; ".join(f"{n} `{' '.join(r['args'])[:80]}`" for n, r in results.items()))
    total = time.perf_counter() - started
    print(f"\ntotal wall time {total:.0f} s (" + ", ".join(f"{n} {r['seconds']:.0f} s" for n, r in results.items()) + ")")
    if args.json:
        args.json.write_text(json.dumps({"results": results, "seconds": total, "fmctr_args": args.fmctr_args}, indent=1))


if __name__ == "__main__":
    main()
