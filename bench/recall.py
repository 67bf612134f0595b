"""Top-K recall on MovieLens-100k: fmctr trained from positives against LightFM and implicit.

    bash ../shared/data/suite/fetch.sh           # once: ~/.cache/fmctr-suite/ml100k_*.parquet
    python bench/recall.py                       # both protocols, seed 0, peers cached
    python bench/recall.py --seeds 3 --json out.json
    python bench/recall.py --seeds 3 --inits 3       # each model's chosen setting fitted 3 times a split, the mean
    python bench/recall.py --fmctr loss=bpr,dim=64  # fmctr with options over its defaults
    python bench/recall.py --choose --peers none    # changes of fmctr's defaults, scored on the carves only
    python bench/recall.py --choose --changes '[{"loss": "softmax", "history": true}]'  # history: below

Protocols (every rating is a positive; the split's seed is the run's seed):
- lightfm: 10 ratings per user held out at random, from users with 20 or more (LightFM's
  movielens example holds out MovieLens' own ua.test, 10 per user, every user having 20
  or more; on the carves this keeps users with 0-9 training positives out, see split); P@10 etc. reported with the user's training items
  excluded from the ranking and, for P@10, also kept in it (LightFM's example keeps them).
- msr: Microsoft recommenders' python_stratified_split: per user, 75% of the ratings
  (rounded) train at random, the rest test; top-10, training items excluded.

Peers: each one's small sweep is fitted on a carve of the training positives made by
the same protocol (10 per user, or 75/25 per user), scored on the carve's held-out part
by NDCG@10, and the best setting is refitted on all the training positives. fmctr runs
with its defaults for training from positives, the same on both protocols (its epochs
chosen by its own held-out check); those defaults were chosen with `--choose`, which
scores changes of them on the same carves, never on the test positives. Every model's user and item vectors go through the one metric function,
`ranking_metrics` (fmctr's `eval --ranking` code). Peers' results are cached in ~/.cache/fmctr-suite/recall-peers.json
(`--refresh-peers` recomputes them).

`no_softmax` (a setting): the blend of logistic and ALS alone, as it was before softmax
joined it (the catalogue limit set to 0 for the run, as a catalogue too large for the
softmax leaves it out).

`history` (a setting, off by default): the user side also gets a multi-valued field
`seen`, the items the user has among the training positives (FISM / SVD++'s implicit
feedback), values 1/sqrt(bag size) by default. Each training positive's bag leaves out
its own item (else the model learns that the target is in the bag); its negatives share
its row; the user vectors that rank hold all of the user's training items. It uses the
training interactions alone - what ALS and the other peers are given - never a test
one, so the comparison stays fair. The epochs' held-out check then gets its own split
(history_hold): bags rebuilt from the positives kept, so a held-out user's row never
holds the held-out items it is scored on. With --loss logistic a bag is in each of a
positive's 33 rows (a one-epoch fit on LightFM's carve took 135 s, against 34 s): {"cap": 8, "norm":
"mean"} keeps 8 of the items at random per positive. It did not beat the defaults on the carves (README, "Training from positives only").
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import scipy.sparse as sp

from fmctr.datasets.negatives import Positives
from fmctr.hashing.tokens import HashSpec, Rows, hash_chunk, ones
from fmctr.reading.read import Chunk
from fmctr.reading.schema import Field, Schema
from fmctr.training.config import TrainConfig
from fmctr.training.positives import DEFAULT_LOSS, NEGATIVES, POOL, hold_out, train_positives
from fmctr.models.softmax import MAX_ITEMS
from fmctr.models.towers import item_vectors, user_side
from fmctr.commands.recall import vector_ranking_metrics
from fmctr.models.retrieval import Exclusions

CACHE = Path.home() / ".cache" / "fmctr-suite"
# In the peers' cache keys: results from another metric function, or from other
# splits (v4: LightFM's protocol holds out only users with 20 or more), are not reused.
METRICS_VERSION = "ranking-v4"
INIT_STEP = 100  # --inits: the refits' seeds are the split's seed + this x i
K = 10
BITS = 18
# fmctr runs with its defaults for training from positives (fmctr.training.positives);
# --choose sweeps these changes of them on the carves only, to choose those defaults.
CHOICES = [{}, {"no_softmax": True}, {"loss": "logistic"}, {"loss": "als"}, {"loss": "bpr"}, {"loss": "softmax"}, {"pool": 1},
           {"negatives": 16}, {"unobserved": 0.25}, {"unobserved": 1.0}, {"features": True}]


def load() -> pl.DataFrame:
    ratings = pl.read_parquet(CACHE / "ml100k_ratings.parquet")
    users = pl.read_parquet(CACHE / "ml100k_users.parquet").get_column("user_id").sort()
    items = pl.read_parquet(CACHE / "ml100k_items.parquet").get_column("movie_id").sort()
    return ratings.with_columns(u=pl.col("user_id").replace_strict(users, np.arange(len(users))),
                                i=pl.col("movie_id").replace_strict(items, np.arange(len(items))))


def split(frame: pl.DataFrame, protocol: str, seed: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(train, test) by the protocol, at random within each user. LightFM's protocol
    holds out 10 positives of each user who has at least 20, as MovieLens' own ua.test
    does (every MovieLens-100k user has 20 or more): each scored user keeps 10 or more
    to train on. On the test split that is every user; on the carve of the training
    positives it leaves out the users with fewer than 20 there (a fifth of them), who
    would otherwise be scored with 0-9 training positives - 32 with none - where the
    test's users have 10 or more: a carve that rewards ranking cold users by
    popularity, which the test never asks for."""
    shuffled = frame.with_columns(r=pl.Series(np.random.default_rng(seed).random(frame.height)))
    ranked = shuffled.with_columns(pos=pl.col("r").rank("ordinal").over("u") - 1, n=pl.len().over("u"))
    held = ((pl.col("pos") < 10) & (pl.col("n") >= 20) if protocol == "lightfm"
            else pl.col("pos") >= (pl.col("n") * 0.75).round())
    return ranked.filter(~held).drop("r", "pos", "n"), ranked.filter(held).drop("r", "pos", "n")


def matrix(frame: pl.DataFrame, shape) -> sp.csr_matrix:
    u, i = frame.get_column("u").to_numpy(), frame.get_column("i").to_numpy()
    return sp.csr_matrix((np.ones(len(u), np.float32), (u, i)), shape=shape)


def ranking_metrics(vectors: tuple, train: sp.csr_matrix, test: sp.csr_matrix, exclude: bool = True) -> dict:
    """The one metric function every model goes through: fmctr's own ranking evaluation
    (fmctr.commands.recall.vector_ranking_metrics, what `eval --ranking` runs) on the
    model's user and item vectors, for each user with a test positive, the user's
    training items excluded (or not)."""
    users, items = vectors
    tested = np.flatnonzero(np.diff(test.indptr))
    relevant = [test.indices[test.indptr[u]:test.indptr[u + 1]].astype(np.int64) for u in tested]
    seen = Exclusions.from_lists([train.indices[train.indptr[u]:train.indptr[u + 1]] for u in tested]) if exclude \
        else None
    metrics = vector_ranking_metrics(users[tested], items, relevant, K, exclude=seen)
    return {**{f"{name}@{K}": metrics[name] for name in ("precision", "recall", "ndcg", "map", "hit_rate")},
            "mrr": metrics["mrr"], "auc": metrics["auc"]}


# ---- fmctr -------------------------------------------------------------------------

def _hash(frame: pl.DataFrame, columns: list[str], multi: tuple[str, ...] = ()):
    schema = Schema(label=None, fields=tuple(Field(c, "multi" if c in multi else "categorical") for c in columns))
    # (fmctr's readers give a missing value as ""; hash_chunk given a null makes a bad index)
    strings = frame.select(pl.col(c).cast(pl.Utf8).fill_null("") for c in columns)
    return hash_chunk(Chunk(strings, None), schema, HashSpec(bits=BITS), name="bench", columns=columns,
                      require_label=False)


def sides(features: bool, shape) -> tuple:
    """(user rows, item rows) in index order: the ids alone, or with the side features
    (age in decades, gender, occupation, zip prefix; genres as a bag, release year)."""
    if not features:
        return _hash(pl.DataFrame({"u": np.arange(shape[0])}), ["u"]), _hash(pl.DataFrame({"i": np.arange(shape[1])}), ["i"])
    users = pl.read_parquet(CACHE / "ml100k_users.parquet").sort("user_id").with_columns(
        u=pl.int_range(pl.len()), decade=pl.col("age") // 10, zip=pl.col("zip_code").str.slice(0, 2))
    items = pl.read_parquet(CACHE / "ml100k_items.parquet").sort("movie_id")
    genres = items.columns[items.columns.index("unknown"):]
    items = items.with_columns(
        i=pl.int_range(pl.len()), year=pl.col("release_date").str.slice(-4),
        genres=pl.concat_str([pl.when(pl.col(g) == 1).then(pl.lit(g)) for g in genres], separator="|",
                             ignore_nulls=True))
    return (_hash(users, ["u", "decade", "gender", "occupation", "zip"]),
            _hash(items, ["i", "genres", "year"], multi=("genres",)))


def _bags(u: np.ndarray, i: np.ndarray, shape, history: dict, leave_one_out: bool) -> Rows:
    """Rows of [the user's id (unless history["id"] is False), `seen` = the user's items
    among (u, i)]: one row per pair with the pair's own item left out (leave_one_out) -
    at most history["cap"] of the others, drawn at random - else one row per user index
    with all of them. Bag values 1/sqrt(bag size) (norm "sqrt", SVD++'s), 1/bag size
    ("mean", which a drawn part of the bag estimates without bias) or 1 ("none")."""
    ids = _hash(pl.DataFrame({"u": np.arange(shape[0])}), ["u"]).indices
    seen = _hash(pl.DataFrame({"seen": np.arange(shape[1])}), ["seen"]).indices
    order = np.argsort(u, kind="stable")
    starts = np.r_[0, np.cumsum(np.bincount(u, minlength=shape[0]))]
    rng, cap, with_id = np.random.default_rng(len(u)), history.get("cap"), history.get("id", True)
    rows = []
    for user in range(shape[0]):
        items = seen[i[order[starts[user]:starts[user + 1]]]]
        n = len(items)
        bag = items[None, :]
        if leave_one_out:
            bag = np.tile(items, n).reshape(n, n)[~np.eye(n, dtype=bool)].reshape(n, max(n - 1, 0))
            if cap is not None and n - 1 > cap:
                bag = np.take_along_axis(bag, rng.random(bag.shape).argsort(axis=1)[:, :cap], 1)
        rows.append(np.c_[np.full(len(bag), ids[user], np.int32), bag] if with_id else bag)
    lengths = np.concatenate([np.full(len(r), r.shape[1]) for r in rows])
    offsets = np.r_[0, np.cumsum(lengths)].astype(np.int64)
    indices = np.concatenate([r.ravel() for r in rows]).astype(np.int32)
    built = Rows(indices, _bag_values(lengths, offsets, history.get("norm", "sqrt"), with_id), offsets, None)
    return built.take(np.argsort(order, kind="stable")) if leave_one_out else built  # (back to the pairs' order)


def _bag_values(lengths: np.ndarray, offsets: np.ndarray, norm: str, with_id: bool) -> np.ndarray:
    if norm == "none":
        return ones(offsets[-1])
    size = np.maximum(lengths - with_id, 1)
    values = np.repeat(1.0 / (np.sqrt(size) if norm == "sqrt" else size), lengths).astype(np.float32)
    if with_id:
        values[offsets[:-1][lengths > 0]] = 1.0
    return values


def history_positives(u: np.ndarray, i: np.ndarray, shape, history: dict, catalogue) -> tuple[Positives, Rows]:
    """(the positives, each user row's bag its user's other training items; a user row
    per user index with all of them, for ranking)."""
    return (Positives(_bags(u, i, shape, history, True), i.astype(np.int64), catalogue, u.astype(np.int64)),
            _bags(u, i, shape, history, False))


def history_hold(u: np.ndarray, i: np.ndarray, shape, history: dict, catalogue):
    """train_positives' `hold` for history rows: fmctr.training.positives.hold_out, with
    the bags rebuilt from the positives kept and each held-out user scored by a row of
    those alone (the row of a held-out positive would hold the user's other held-out
    items: the answers)."""
    def rebuild(cut, users):
        fit, rows = history_positives(u[:cut], i[:cut], shape, history, catalogue)
        return fit, rows.take(users)

    return lambda positives, fraction, seed: hold_out(positives, fraction, seed, rebuild=rebuild)


def fmctr_vectors(train: pl.DataFrame, shape, setting: dict, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """fmctr trained from the positives with the setting's options over its defaults
    for this mode (fmctr.training.positives), epochs chosen by its own held-out check.
    `history`: the user side gets the user's training items as a bag (see _bags; true,
    or a dict of norm, cap, id)."""
    options = {k: v for k, v in setting.items() if k not in ("negatives", "loss", "sampling", "pool", "features",
                                                             "history", "unobserved", "no_softmax")}
    users, catalogue = sides(setting.get("features", False), shape)
    u, i = train.get_column("u").to_numpy(), train.get_column("i").to_numpy().astype(np.int64)
    hold = hold_out
    if setting.get("history"):
        history = setting["history"] if isinstance(setting["history"], dict) else {}
        positives, users = history_positives(u, i, shape, history, catalogue)
        hold = history_hold(u, i, shape, history, catalogue)
    else:
        positives = Positives(users.take(u), i, catalogue)
    cfg = TrainConfig.from_options(seed=seed, engine="cpu", threads=2, **options)
    import fmctr.training.positives as modes

    modes.MAX_ITEMS = 0 if setting.get("no_softmax") else MAX_ITEMS  # (the blend of logistic and ALS alone)
    result, _ = train_positives(positives, cfg, bits=BITS, negatives=setting.get("negatives", NEGATIVES),
                                sampling=setting.get("sampling", "uniform"), loss=setting.get("loss", DEFAULT_LOSS),
                                pool=setting.get("pool", POOL), unobserved=setting.get("unobserved"),
                                hold=hold)
    w = result.weights
    return user_side(w, users).vectors, item_vectors(w, catalogue)


# ---- peers ---------------------------------------------------------------------------

def lightfm_vectors(train: sp.csr_matrix, setting: dict, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from lightfm import LightFM

    model = LightFM(no_components=setting["dim"], loss=setting["loss"], learning_rate=0.05, random_state=seed)
    model.fit(train.tocoo(), epochs=setting["epochs"], num_threads=2)
    (_, users), (item_bias, items) = model.get_user_representations(), model.get_item_representations()
    return np.c_[users, np.ones(len(users))], np.c_[items, item_bias]


def implicit_vectors(train: sp.csr_matrix, setting: dict, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from implicit.cpu.als import AlternatingLeastSquares
    from implicit.cpu.bpr import BayesianPersonalizedRanking

    if setting["model"] == "als":
        model = AlternatingLeastSquares(factors=setting["dim"], regularization=setting["reg"], alpha=setting["alpha"],
                                        iterations=15, random_state=seed, num_threads=2)
    else:
        model = BayesianPersonalizedRanking(factors=setting["dim"], learning_rate=setting["lr"],
                                            regularization=setting["reg"], iterations=setting["epochs"],
                                            random_state=seed, num_threads=2)
    model.fit(train, show_progress=False)
    return np.asarray(model.user_factors), np.asarray(model.item_factors)


def _grid(**axes) -> list[dict]:
    return [dict(zip(axes, values)) for values in itertools.product(*axes.values())]


PEERS = {
    "lightfm-warp": (lightfm_vectors, _grid(loss=["warp"], dim=[32, 64], epochs=[10, 30, 60])),
    "lightfm-bpr": (lightfm_vectors, _grid(loss=["bpr"], dim=[32, 64], epochs=[10, 30, 60])),
    "implicit-bpr": (implicit_vectors, _grid(model=["bpr"], dim=[32, 64], lr=[0.01, 0.05], reg=[0.01],
                                            epochs=[100, 300])),
    # (reg 10 and alpha 1 were its choice at the edges of a 2 x 2 grid; widened to 30, 100 and 0.3)
    "implicit-als": (implicit_vectors, _grid(model=["als"], dim=[32, 64], reg=[0.1, 10.0, 30.0, 100.0],
                                            alpha=[0.3, 1.0, 10.0])),
}


def carves(frame, protocol, seed):
    """(train, test) and the carve of train into (fit, valid), by the same protocol."""
    train, test = split(frame, protocol, seed)
    return (train, test), split(train, protocol, seed + 1000)


def carve_ndcg(fit, setting, frame, protocol, seed, shape) -> float:
    _, (carve_fit, carve_valid) = carves(frame, protocol, seed)
    vectors = fit(carve_fit, setting, seed)
    return ranking_metrics(vectors, matrix(carve_fit, shape), matrix(carve_valid, shape))[f"ndcg@{K}"]


def choose_and_test(fit, settings, frame, protocol, seed, shape, inits: int = 1) -> dict:
    """Sweep on a carve of the training positives (unless there is one setting), refit
    the best on all of them, test. `inits` > 1: the best refitted that many times, with
    seeds seed + INIT_STEP x i, and the metrics averaged (the model's expected score on
    the split, not one draw's)."""
    (train, test), _ = carves(frame, protocol, seed)
    tried = [(carve_ndcg(fit, s, frame, protocol, seed, shape) if len(settings) > 1 else None, s) for s in settings]
    best = max(tried, key=lambda t: t[0] or 0)[1]
    train_m, test_m = matrix(train, shape), matrix(test, shape)
    fits = []
    for i in range(inits):
        started = time.perf_counter()
        vectors = fit(train, best, seed + INIT_STEP * i)
        fits.append({"seconds": time.perf_counter() - started, "excluded": ranking_metrics(vectors, train_m, test_m)})
        if protocol == "lightfm":
            fits[-1]["kept"] = ranking_metrics(vectors, train_m, test_m, exclude=False)
    out = {"setting": best, "seconds": round(float(np.mean([f["seconds"] for f in fits])), 2),
           "sweep": [[v and round(v, 4), s] for v, s in tried], "train_pairs": train.height}
    for part in ("excluded", "kept"):
        if part in fits[0]:
            out[part] = {m: float(np.mean([f[part][m] for f in fits])) for m in fits[0][part]}
    if inits > 1:
        out["inits"] = [f["excluded"] for f in fits]
    return out


def choose_defaults(protocols, seeds, changes) -> str:
    """fmctr's defaults for this mode: each change of them scored on the carves alone
    (never the test positives), over both protocols and every seed."""
    frame = load()
    shape = (frame.get_column("u").max() + 1, frame.get_column("i").max() + 1)
    lines = [f"carve NDCG@{K} (mean over {', '.join(protocols)} x {len(seeds)} seed(s)), each change of the defaults"]
    for change in changes:
        values = [carve_ndcg(lambda f, s, sd: fmctr_vectors(f, shape, s, sd), change, frame, p, seed, shape)
                  for p in protocols for seed in seeds]
        lines.append(f"{json.dumps(change):<28}{np.mean(values):.4f}  " + " ".join(f"{v:.4f}" for v in values))
        print(lines[-1], file=sys.stderr, flush=True)
    return "\n".join(lines)


def peer_fit(name):
    fn = PEERS[name][0]
    return lambda frame, setting, seed, shape: fn(matrix(frame, shape), setting, seed)


def run(protocols, seeds, peers, fmctr_settings, refresh: bool, inits: int = 1) -> dict:
    frame = load()
    shape = (frame.get_column("u").max() + 1, frame.get_column("i").max() + 1)
    cache_file = CACHE / "recall-peers.json"
    cache = {} if refresh or not cache_file.exists() else json.loads(cache_file.read_text())
    results = {}
    for protocol, seed in itertools.product(protocols, seeds):
        for name in peers:
            key = f"{METRICS_VERSION}/{protocol}/{seed}/{name}/{json.dumps(PEERS[name][1])}"
            once, key = key, key + (f"/inits{inits}" if inits > 1 else "")
            if key not in cache:
                fit = peer_fit(name)
                # (with --inits, a setting already chosen on the carve is refitted, not swept again)
                chosen = cache.get(once) if inits > 1 else None
                settings = [chosen["setting"]] if chosen else PEERS[name][1]
                cache[key] = choose_and_test(lambda f, s, sd: fit(f, s, sd, shape), settings, frame,
                                             protocol, seed, shape, inits)
                if chosen:
                    cache[key]["sweep"] = chosen["sweep"]
                cache_file.write_text(json.dumps(cache))
            results[(protocol, seed, name)] = cache[key]
        if not fmctr_settings:
            continue
        results[(protocol, seed, "fmctr")] = choose_and_test(
            lambda f, s, sd: fmctr_vectors(f, shape, s, sd), fmctr_settings, frame, protocol, seed, shape, inits)
        print(f"{protocol} seed {seed}: fmctr {results[(protocol, seed, 'fmctr')]['setting']}", file=sys.stderr)
    return results


def table(results: dict, protocols, seeds, inits: int = 1) -> str:
    names = sorted({name for (_, _, name) in results}, key=lambda n: (n == "fmctr", n))
    lines = []
    for protocol in protocols:
        fits = f" x {inits} fits (seeds) each" if inits > 1 else ""
        lines.append(f"\n{protocol} protocol, {len(seeds)} seed(s){fits}, mean; training items excluded"
                     + (" (P@10 kept: training items left in the ranking)" if protocol == "lightfm" else ""))
        lines.append(f"{'model':<14}{'P@10':>8}{'R@10':>8}{'NDCG@10':>9}{'MAP@10':>8}{'AUC':>8}"
                     + (f"{'P@10 kept':>11}" if protocol == "lightfm" else "") + "  fit s  chosen")
        for name in names:
            runs = [results[(protocol, s, name)] for s in seeds]
            mean = {m: np.mean([r["excluded"][m] for r in runs]) for m in runs[0]["excluded"]}
            kept = f"{np.mean([r['kept'][f'precision@{K}'] for r in runs]):>11.4f}" if protocol == "lightfm" else ""
            lines.append(f"{name:<14}{mean['precision@10']:>8.4f}{mean['recall@10']:>8.4f}{mean['ndcg@10']:>9.4f}"
                         f"{mean['map@10']:>8.4f}{mean['auc']:>8.4f}{kept}{np.mean([r['seconds'] for r in runs]):>7.1f}  "
                         f"{runs[0]['setting']}")
    return "\n".join(lines)


def _value(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocols", default="lightfm,msr")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--peers", default=",".join(PEERS), help="comma-separated, or 'none'")
    parser.add_argument("--fmctr", default="", help="options over fmctr's defaults, k=v,... (e.g. loss=bpr,dim=64); "
                                                   "none: peers only")
    parser.add_argument("--choose", action="store_true", help="score changes of fmctr's defaults on the carves only")
    parser.add_argument("--changes", default=None, help="with --choose: a JSON list of changes instead of CHOICES")
    parser.add_argument("--inits", type=int, default=1, help="refit every model's chosen setting this many times "
                                                             "(other seeds) and report the mean")
    parser.add_argument("--refresh-peers", action="store_true")
    parser.add_argument("--json", default=None, help="also write every number here")
    args = parser.parse_args()
    protocols, seeds = args.protocols.split(","), list(range(args.seeds))
    if args.choose:
        print(choose_defaults(protocols, seeds, json.loads(args.changes) if args.changes else CHOICES))
        return
    peers = [] if args.peers == "none" else args.peers.split(",")
    given = {k: _value(v) for k, v in (kv.split("=") for kv in args.fmctr.split(",") if "=" in kv)}
    results = run(protocols, seeds, peers, [] if args.fmctr == "none" else [given], args.refresh_peers, args.inits)
    print(table(results, protocols, seeds, args.inits))
    if args.json:
        Path(args.json).write_text(json.dumps({"/".join(map(str, k)): v for k, v in results.items()}, indent=1))


if __name__ == "__main__":
    main()
