"""Top-K recall on MovieLens-100k: fmctr trained from positives against LightFM and implicit.

    bash ../shared/data/suite/fetch.sh           # once: ~/.cache/fmctr-suite/ml100k_*.parquet
    python bench/recall.py                       # both protocols, seed 0, peers cached
    python bench/recall.py --seeds 3 --json out.json
    python bench/recall.py --fmctr "dim=32,negatives=8,loss=bpr"   # one fmctr setting

Protocols (every rating is a positive; the split's seed is the run's seed):
- lightfm: 10 ratings per user held out at random (LightFM's movielens example holds out
  MovieLens' own ua.test, 10 per user); P@10 etc. reported with the user's training items
  excluded from the ranking and, for P@10, also kept in it (LightFM's example keeps them).
- msr: Microsoft recommenders' python_stratified_split: per user, 75% of the ratings
  (rounded) train at random, the rest test; top-10, training items excluded.

Every model is chosen the same way: its small sweep is fitted on a carve of the training
positives made by the same protocol (10 per user, or 75/25 per user), scored on the
carve's held-out part by NDCG@10, and the best setting is refitted on all the training
positives. Every model's (users x items) scores go through the one metric function,
`ranking_metrics`. Peers' results are cached in ~/.cache/fmctr-suite/recall-peers.json
(`--refresh-peers` recomputes them).
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
from fmctr.hashing.tokens import HashSpec, hash_chunk
from fmctr.reading.read import Chunk
from fmctr.reading.schema import Field, Schema
from fmctr.training.config import TrainConfig
from fmctr.training.positives import train_positives
from fmctr.models.towers import item_vectors, user_side
from fmctr.ranking import mean_ranking_metrics
from fmctr.training.ranked import top_k

CACHE = Path.home() / ".cache" / "fmctr-suite"
K = 10
BITS = 18
# fmctr's defaults for training from positives, chosen on the carves (README, "Recall").
FMCTR_DEFAULT = {"dim": 32, "negatives": 8, "loss": "logistic", "sampling": "uniform", "lr": 0.05}
FMCTR_SWEEP = [dict(FMCTR_DEFAULT, **change) for change in (
    {}, {"loss": "bpr"}, {"dim": 64}, {"negatives": 4}, {"sampling": "popularity"})]


def load() -> pl.DataFrame:
    ratings = pl.read_parquet(CACHE / "ml100k_ratings.parquet")
    users = pl.read_parquet(CACHE / "ml100k_users.parquet").get_column("user_id").sort()
    items = pl.read_parquet(CACHE / "ml100k_items.parquet").get_column("movie_id").sort()
    return ratings.with_columns(u=pl.col("user_id").replace_strict(users, np.arange(len(users))),
                                i=pl.col("movie_id").replace_strict(items, np.arange(len(items))))


def split(frame: pl.DataFrame, protocol: str, seed: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(train, test) by the protocol, at random within each user."""
    shuffled = frame.with_columns(r=pl.Series(np.random.default_rng(seed).random(frame.height)))
    ranked = shuffled.with_columns(pos=pl.col("r").rank("ordinal").over("u") - 1, n=pl.len().over("u"))
    held = pl.col("pos") < 10 if protocol == "lightfm" else pl.col("pos") >= (pl.col("n") * 0.75).round()
    return ranked.filter(~held).drop("r", "pos", "n"), ranked.filter(held).drop("r", "pos", "n")


def matrix(frame: pl.DataFrame, shape) -> sp.csr_matrix:
    u, i = frame.get_column("u").to_numpy(), frame.get_column("i").to_numpy()
    return sp.csr_matrix((np.ones(len(u), np.float32), (u, i)), shape=shape)


def ranking_metrics(scores: np.ndarray, train: sp.csr_matrix, test: sp.csr_matrix, exclude: bool = True) -> dict:
    """The one metric function every model goes through: each test user's top K over the
    catalogue, training items excluded (or not), measured by fmctr.ranking (MAP divided
    by every relevant item, as Microsoft recommenders' table)."""
    users = np.flatnonzero(np.diff(test.indptr))
    seen = [train.indices[train.indptr[u]:train.indptr[u + 1]] if exclude else np.zeros(0, np.int64) for u in users]
    relevant = [set(test.indices[test.indptr[u]:test.indptr[u + 1]].tolist()) for u in users]
    metrics = mean_ranking_metrics(top_k(scores[users], seen, K).tolist(), relevant, K)
    return {f"{name}@{K}": metrics[name] for name in ("precision", "recall", "ndcg", "map", "hit_rate")}


# ---- fmctr -------------------------------------------------------------------------

def _hash(frame: pl.DataFrame, columns: list[str]):
    schema = Schema(label=None, fields=tuple(Field(c) for c in columns))
    strings = frame.select(pl.col(c).cast(pl.Utf8) for c in columns)
    return hash_chunk(Chunk(strings, None), schema, HashSpec(bits=BITS), name="bench", columns=columns,
                      require_label=False)


def fmctr_scores(train: pl.DataFrame, shape, setting: dict, seed: int) -> np.ndarray:
    users = pl.DataFrame({"u": np.arange(shape[0])})
    catalogue = _hash(pl.DataFrame({"i": np.arange(shape[1])}), ["i"])
    positives = Positives(_hash(train, ["u"]), train.get_column("i").to_numpy().astype(np.int64), catalogue)
    cfg = TrainConfig.from_options(dim=setting["dim"], lr=setting["lr"], seed=seed, engine="cpu", threads=2,
                                   epochs=setting.get("epochs"))
    result, chose = train_positives(positives, cfg, bits=BITS, negatives=setting["negatives"],
                                    sampling=setting["sampling"], loss=setting["loss"])
    w = result.weights
    return user_side(w, _hash(users, ["u"])).vectors @ item_vectors(w, catalogue).T


# ---- peers ---------------------------------------------------------------------------

def lightfm_scores(train: sp.csr_matrix, setting: dict, seed: int) -> np.ndarray:
    from lightfm import LightFM

    model = LightFM(no_components=setting["dim"], loss=setting["loss"], learning_rate=0.05, random_state=seed)
    model.fit(train.tocoo(), epochs=setting["epochs"], num_threads=2)
    users, items = model.get_user_representations(), model.get_item_representations()
    return users[1] @ items[1].T + items[0][None, :]


def implicit_scores(train: sp.csr_matrix, setting: dict, seed: int) -> np.ndarray:
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
    return np.asarray(model.user_factors) @ np.asarray(model.item_factors).T


def _grid(**axes) -> list[dict]:
    return [dict(zip(axes, values)) for values in itertools.product(*axes.values())]


PEERS = {
    "lightfm-warp": (lightfm_scores, _grid(loss=["warp"], dim=[32, 64], epochs=[10, 30, 60])),
    "lightfm-bpr": (lightfm_scores, _grid(loss=["bpr"], dim=[32, 64], epochs=[10, 30, 60])),
    "implicit-bpr": (implicit_scores, _grid(model=["bpr"], dim=[32, 64], lr=[0.01, 0.05], reg=[0.01],
                                            epochs=[100, 300])),
    "implicit-als": (implicit_scores, _grid(model=["als"], dim=[32, 64], reg=[0.1, 10.0], alpha=[1.0, 10.0])),
}


def choose_and_test(fit, settings, frame, protocol, seed, shape) -> dict:
    """Sweep on a carve of the training positives, refit the best on all of them, test."""
    train, test = split(frame, protocol, seed)
    carve_fit, carve_valid = split(train, protocol, seed + 1000)
    tried = []
    for setting in settings:
        scores = fit(carve_fit, setting, seed)
        tried.append((ranking_metrics(scores, matrix(carve_fit, shape), matrix(carve_valid, shape))[f"ndcg@{K}"],
                      setting))
    best = max(tried, key=lambda t: t[0])[1]
    started = time.perf_counter()
    scores = fit(train, best, seed)
    seconds = time.perf_counter() - started
    train_m, test_m = matrix(train, shape), matrix(test, shape)
    out = {"setting": best, "seconds": round(seconds, 2), "sweep": [[round(v, 4), s] for v, s in tried],
           "excluded": ranking_metrics(scores, train_m, test_m),
           "train_items": sum(len(set(r)) for r in train.group_by("u").agg("i").get_column("i"))}
    if protocol == "lightfm":
        out["kept"] = ranking_metrics(scores, train_m, test_m, exclude=False)
    return out


def peer_fit(name):
    fn = PEERS[name][0]
    return lambda frame, setting, seed, shape: fn(matrix(frame, shape), setting, seed)


def run(protocols, seeds, peers, fmctr_settings, refresh: bool) -> dict:
    frame = load()
    shape = (frame.get_column("u").max() + 1, frame.get_column("i").max() + 1)
    cache_file = CACHE / "recall-peers.json"
    cache = {} if refresh or not cache_file.exists() else json.loads(cache_file.read_text())
    results = {}
    for protocol, seed in itertools.product(protocols, seeds):
        for name in peers:
            key = f"{protocol}/{seed}/{name}/{json.dumps(PEERS[name][1])}"
            if key not in cache:
                fit = peer_fit(name)
                cache[key] = choose_and_test(lambda f, s, sd: fit(f, s, sd, shape), PEERS[name][1], frame,
                                             protocol, seed, shape)
                cache_file.write_text(json.dumps(cache))
            results[(protocol, seed, name)] = cache[key]
        if not fmctr_settings:
            continue
        results[(protocol, seed, "fmctr")] = choose_and_test(
            lambda f, s, sd: fmctr_scores(f, shape, s, sd), fmctr_settings, frame, protocol, seed, shape)
        print(f"{protocol} seed {seed}: fmctr {results[(protocol, seed, 'fmctr')]['setting']}", file=sys.stderr)
    return results


def table(results: dict, protocols, seeds) -> str:
    names = sorted({name for (_, _, name) in results}, key=lambda n: (n == "fmctr", n))
    lines = []
    for protocol in protocols:
        lines.append(f"\n{protocol} protocol, {len(seeds)} seed(s), mean; training items excluded"
                     + (" (P@10 kept: training items left in the ranking)" if protocol == "lightfm" else ""))
        lines.append(f"{'model':<14}{'P@10':>8}{'R@10':>8}{'NDCG@10':>9}{'MAP@10':>8}"
                     + (f"{'P@10 kept':>11}" if protocol == "lightfm" else "") + "  fit s  chosen")
        for name in names:
            runs = [results[(protocol, s, name)] for s in seeds]
            mean = {m: np.mean([r["excluded"][m] for r in runs]) for m in runs[0]["excluded"]}
            kept = f"{np.mean([r['kept'][f'precision@{K}'] for r in runs]):>11.4f}" if protocol == "lightfm" else ""
            lines.append(f"{name:<14}{mean['precision@10']:>8.4f}{mean['recall@10']:>8.4f}{mean['ndcg@10']:>9.4f}"
                         f"{mean['map@10']:>8.4f}{kept}{np.mean([r['seconds'] for r in runs]):>7.1f}  "
                         f"{runs[0]['setting']}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocols", default="lightfm,msr")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--peers", default=",".join(PEERS), help="comma-separated, or 'none'")
    parser.add_argument("--fmctr", default=None, help="one fmctr setting instead of the sweep: k=v,...; none: peers only")
    parser.add_argument("--refresh-peers", action="store_true")
    parser.add_argument("--json", default=None, help="also write every number here")
    args = parser.parse_args()
    protocols, seeds = args.protocols.split(","), list(range(args.seeds))
    peers = [] if args.peers == "none" else args.peers.split(",")
    settings = [] if args.fmctr == "none" else FMCTR_SWEEP
    if args.fmctr and args.fmctr != "none":
        given = dict(kv.split("=") for kv in args.fmctr.split(","))
        settings = [{k: type(FMCTR_DEFAULT.get(k, 0))(v) if k in FMCTR_DEFAULT else int(v)
                     for k, v in {**FMCTR_DEFAULT, **given}.items()}]
    results = run(protocols, seeds, peers, settings, args.refresh_peers)
    print(table(results, protocols, seeds))
    if args.json:
        Path(args.json).write_text(json.dumps({"/".join(map(str, k)): v for k, v in results.items()}, indent=1))


if __name__ == "__main__":
    main()
