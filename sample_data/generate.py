"""Make fmctr's sample datasets: synthetic CTR data drawn from a planted FM.

    python sample_data/generate.py            # rewrite the files in sample_data/
    python sample_data/generate.py --check    # exit 1 if they differ from what it makes

Two kinds of data:

* Criteo-like TSV (no header: label, I1..I13 integers, C1..C26 8-hex tokens, empty =
  missing). Categorical values are Zipf-distributed over vocabularies of very different
  sizes; the truth is an FM (k=4) over the categorical tokens and the Criteo log^2
  buckets of the integers, so the reachable AUC is known: `oracle_auc` uses the true
  probabilities.
* A CSV with a header (user, item, genres="A|B", price, request_id), the truth an FM
  over user, item, each genre and the price bucket.
* A user/item world for recall (`world`): users.csv (user_id, age, occupation),
  items.csv (movie_id, genres, year) and the impressions shown to the users with
  their clicks, joined with both sides' columns (clicks_train.csv, clicks_test.csv:
  each user's impressions split 80/20). The truth is an FM over the user's id,
  age group and occupation and the item's id, genres and decade. It has an RNG of its
  own, so the other files do not change with it.

The benchmarks (bench/) call `criteo_like` for bigger sizes. Everything is a pure
function of the seed.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
N_NUMERIC = 13
N_CATEGORICAL = 26
TRUE_DIM = 4


@dataclass
class Generated:
    text: bytes  # the data file's bytes
    labels: np.ndarray
    probabilities: np.ndarray  # the planted model's click probabilities
    truth: dict | None = None  # the planted model itself: ids (rows x fields), w, v, scale, shift


def _zipf_ids(rng: np.random.Generator, vocab: int, n: int, exponent: float = 1.1) -> np.ndarray:
    """Ids 0..vocab-1 with P(id = r) proportional to 1/(r+1)^exponent."""
    ranks = np.arange(1, vocab + 1, dtype=np.float64)
    p = ranks**-exponent
    cdf = np.cumsum(p / p.sum())
    return np.minimum(np.searchsorted(cdf, rng.random(n)), vocab - 1)


def _token_names(rng: np.random.Generator, vocab: int) -> np.ndarray:
    return np.array([f"{x:08x}" for x in rng.integers(0, 2**32, size=vocab, dtype=np.uint64)])


def _bucket(x: np.ndarray) -> np.ndarray:
    """The planted world's numeric buckets: floor(ln(x)^2) for x > 2, else floor(x).
    (fmctr's own rule keeps the values up to 2 apart from the log^2 buckets; the truth
    here need not match it.)"""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(x > 2, np.floor(np.log(np.maximum(x, 1)) ** 2), np.floor(x)).astype(np.int64)


def _fm_truth(rng, n_tokens: int, scale_w: float, scale_v: float):
    return rng.normal(0, scale_w, n_tokens), rng.normal(0, scale_v, (n_tokens, TRUE_DIM))


def criteo_like(rows: int, *, seed: int = 0, vocab_max: int = 300, interacting: int = 4, missing: float = 0.1,
                target_rate: float = 0.22, numeric_missing: float = 0.2) -> Generated:
    """Criteo-like rows from a planted FM. Vocabulary sizes range from 4 to `vocab_max`
    across the 26 fields (log-spaced)."""
    rng = np.random.default_rng(seed)
    vocabs = np.unique(np.geomspace(4, vocab_max, N_CATEGORICAL).astype(int))
    vocabs = np.resize(vocabs, N_CATEGORICAL)
    # Truth for each categorical token and each numeric bucket (buckets 0..60, plus missing).
    n_buckets = 64
    ids = np.empty((rows, N_CATEGORICAL + N_NUMERIC), dtype=np.int64)
    offset = 0
    field_offsets = []
    numeric_text = []
    for j in range(N_NUMERIC):
        scale = rng.uniform(0.5, 3.0)
        values = np.floor(rng.lognormal(mean=scale, sigma=1.2, size=rows)).astype(np.int64) - (j == 1)
        absent = rng.random(rows) < numeric_missing
        bucket = np.clip(_bucket(values.astype(np.float64)), -1, n_buckets - 3) + 1
        ids[:, j] = offset + np.where(absent, n_buckets - 1, bucket)
        field_offsets.append(offset)
        offset += n_buckets
        numeric_text.append(np.where(absent, "", values.astype(str)))
    names = []
    offset_of_interacting = None
    for j, vocab in enumerate(vocabs):
        if j == interacting:
            offset_of_interacting = offset
        picked = _zipf_ids(rng, int(vocab), rows)
        absent = rng.random(rows) < missing * (j % 3 == 0)
        ids[:, N_NUMERIC + j] = offset + np.where(absent, vocab, picked)
        tokens = _token_names(rng, int(vocab))
        names.append(np.where(absent, "", tokens[picked]))
        offset += int(vocab) + 1
    w, v = _fm_truth(rng, offset, 0.35, 0.8)
    # Only a few fields interact (the first categorical ones), as in real logs where
    # most of the signal is per-field and a few pairs matter.
    v[: field_offsets[-1] + n_buckets] = 0.0
    v[offset_of_interacting:] = 0.0
    logits = w[ids].sum(1)
    s = v[ids].sum(1)
    logits += 0.5 * ((s**2).sum(1) - (v[ids] ** 2).sum((1, 2)))
    mean, std = logits.mean(), logits.std()
    logits = (logits - mean) / std * 1.3
    shift = _bias_for_rate(logits, target_rate)
    logits += shift
    p = 1 / (1 + np.exp(-logits))
    labels = (rng.random(rows) < p).astype(np.int64)
    import polars as pl

    cols = [labels.astype(str), *numeric_text, *names]
    frame = pl.DataFrame({f"c{j}": c for j, c in enumerate(cols)})
    text = frame.write_csv(separator="\t", include_header=False, quote_style="never")
    truth = {"ids": ids, "w": w, "v": v, "mean": mean, "std": std / 1.3, "shift": shift}
    return Generated(text.encode(), labels, p, truth)


def truth_logits(truth: dict, rows: slice | np.ndarray, known: np.ndarray | None = None) -> np.ndarray:
    """The planted model's logits for some rows; with `known` (a mask over token ids),
    tokens outside it contribute nothing (a model that never learned them)."""
    ids = truth["ids"][rows]
    w, v = truth["w"], truth["v"]
    if known is not None:
        w, v = np.where(known, w, 0.0), np.where(known[:, None], v, 0.0)
    z = w[ids].sum(1)
    vs = v[ids]
    z += 0.5 * ((vs.sum(1) ** 2).sum(1) - (vs**2).sum((1, 2)))
    return (z - truth["mean"]) / truth["std"] + truth["shift"]


def _bias_for_rate(logits: np.ndarray, rate: float) -> float:
    lo, hi = -10.0, 10.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if np.mean(1 / (1 + np.exp(-(logits + mid)))) < rate:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


GENRES = ["Action", "Comedy", "Drama", "Horror", "Romance", "SciFi", "Thriller", "Documentary"]


def movies(rows: int, *, seed: int = 1, n_users: int = 60, n_items: int = 40) -> Generated:
    """A CSV with a header: label, user, item, genres (multi-valued), price (numeric),
    request_id (an id to pass through)."""
    rng = np.random.default_rng(seed)
    user = _zipf_ids(rng, n_users, rows, 0.8)
    item = _zipf_ids(rng, n_items, rows, 0.9)
    item_genres = [sorted(rng.choice(len(GENRES), size=rng.integers(1, 4), replace=False)) for _ in range(n_items)]
    item_price = np.round(rng.lognormal(2.0, 0.8, n_items), 2)
    u_w, u_v = _fm_truth(rng, n_users, 0.5, 0.5)
    i_w, i_v = _fm_truth(rng, n_items, 0.5, 0.5)
    g_w, g_v = _fm_truth(rng, len(GENRES), 0.5, 0.5)
    logits = u_w[user] + i_w[item] + (u_v[user] * i_v[item]).sum(1)
    for r in range(rows):
        gs = item_genres[item[r]]
        logits[r] += g_w[gs].sum() + (u_v[user[r]] * g_v[gs].sum(0)).sum()
    logits -= 0.15 * np.log1p(item_price[item])
    logits = (logits - logits.mean()) / logits.std() * 1.5
    logits += _bias_for_rate(logits, 0.25)
    p = 1 / (1 + np.exp(-logits))
    labels = (rng.random(rows) < p).astype(np.int64)
    out = io.StringIO()
    out.write("label,user,item,genres,price,request_id\n")
    for r in range(rows):
        genres = "|".join(GENRES[g] for g in item_genres[item[r]])
        out.write(f"{labels[r]},u{user[r]},i{item[r]},{genres},{item_price[item[r]]},req-{seed}-{r:06d}\n")
    return Generated(out.getvalue().encode(), labels, p)


OCCUPATIONS = ["student", "engineer", "artist", "doctor", "writer", "retired", "other"]


def world(*, seed: int = 2, n_users: int = 200, n_items: int = 150, shown: int = 30) -> dict[str, bytes]:
    """users.csv, items.csv, clicks_train.csv, clicks_test.csv (see the docstring)."""
    rng = np.random.default_rng(seed)
    age = rng.integers(16, 70, n_users)
    occupation = rng.integers(0, len(OCCUPATIONS), n_users)
    genres = [sorted(rng.choice(len(GENRES), size=rng.integers(1, 4), replace=False)) for _ in range(n_items)]
    year = rng.integers(1960, 2024, n_items)
    dim = TRUE_DIM
    v = {name: rng.normal(0, 0.6, (size, dim)) for name, size in
         (("user", n_users), ("age", 6), ("occ", len(OCCUPATIONS)), ("item", n_items), ("genre", len(GENRES)),
          ("decade", 7))}
    w_item = rng.normal(0, 0.5, n_items)
    user_v = v["user"] + v["age"][np.minimum((age - 16) // 10, 5)] + v["occ"][occupation]
    item_v = v["item"] + np.array([v["genre"][g].sum(0) for g in genres]) + v["decade"][np.minimum((year - 1960) // 10, 6)]
    popular = _zipf_ids(rng, n_items, n_users * shown, 0.7).reshape(n_users, shown)
    logits = w_item[popular] + np.einsum("uf,usf->us", user_v, item_v[popular]) * 1.5
    logits += _bias_for_rate(logits.ravel(), 0.2)
    labels = (rng.random(logits.shape) < 1 / (1 + np.exp(-logits))).astype(np.int64)
    test = rng.random(logits.shape) < 0.2
    users = [f"u{u},{age[u]},{OCCUPATIONS[occupation[u]]}" for u in range(n_users)]
    items = [f"m{i},{'|'.join(GENRES[g] for g in genres[i])},{year[i]}" for i in range(n_items)]
    clicks = {False: io.StringIO(), True: io.StringIO()}
    for out in clicks.values():
        out.write("label,user_id,age,occupation,movie_id,genres,year\n")
    for u in range(n_users):
        for s in range(shown):
            clicks[bool(test[u, s])].write(f"{labels[u, s]},{users[u]},{items[popular[u, s]]}\n")
    return {
        "users.csv": ("user_id,age,occupation\n" + "".join(f"{line}\n" for line in users)).encode(),
        "items.csv": ("movie_id,genres,year\n" + "".join(f"{line}\n" for line in items)).encode(),
        "clicks_train.csv": clicks[False].getvalue().encode(),
        "clicks_test.csv": clicks[True].getvalue().encode(),
    }


def oracle_auc(g: Generated) -> float:
    from fmctr.metrics import auc

    return auc(g.labels, g.probabilities)


def sample_files() -> dict[str, bytes]:
    """The files sample_data/ holds, by name."""
    # Train and test must share the planted model, so draw them as one sample and split.
    both = criteo_like(25_000, seed=0)
    lines = both.text.splitlines(keepends=True)
    train_text, test_text = b"".join(lines[:20_000]), b"".join(lines[20_000:])
    test_part = Generated(test_text, both.labels[20_000:], both.probabilities[20_000:])
    m = movies(6_000, seed=1)
    m_lines = m.text.splitlines(keepends=True)
    header = m_lines[0]
    movies_train = header + b"".join(m_lines[1:5_001])
    movies_test = header + b"".join(m_lines[5_001:])
    movies_test_part = Generated(movies_test, m.labels[5_000:], m.probabilities[5_000:])
    truth = {
        "criteo_like_test.tsv": {"rows": 5_000, "oracle_auc": round(oracle_auc(test_part), 4)},
        "movies_test.csv": {"rows": 1_000, "oracle_auc": round(oracle_auc(movies_test_part), 4)},
    }
    return {
        "criteo_like_train.tsv.gz": gzip.compress(train_text, mtime=0),
        "criteo_like_test.tsv": test_text,
        "movies_train.csv": movies_train,
        "movies_test.csv": movies_test,
        "truth.json": (json.dumps(truth, indent=2) + "\n").encode(),
        **world(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args(argv)
    files = sample_files()
    if args.check:
        stale = [n for n, data in files.items() if not (HERE / n).is_file() or (HERE / n).read_bytes() != data]
        for name in stale:
            print(f"differs: sample_data/{name}", file=sys.stderr)
        return 1 if stale else 0
    from fmctr.atomic import write_bytes

    for name, data in files.items():
        write_bytes(HERE / name, data)
        print(f"wrote sample_data/{name} ({len(data):,} bytes)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
