"""Recall's speed (issue 12's targets), printed, not asserted:

1. MovieLens-100k's shape: top-10 for 943 users over 1,682 items, the whole process
   (`fmctr recall ...` from start to exit, model load included) - target < 1 s.
   The users and items are synthetic with MovieLens' columns; the model's weights
   are random on the indices those columns hash to (what a trained model stores).
2. At scale, on generated vectors: top-100 for 10,000 users over 1,000,000 items at
   dim 16 (vectors of 17: the factor sums and the 1 / item term), against a bare
   float32 matrix product of the same shapes (BLAS, every core, blocked - the
   10,000 x 1,000,000 result alone would be 40 GB - at the fastest of a few block
   shapes) in the same run - target >= 0.7x its throughput - with the peak memory
   of each, measured in a process of its own.

3. `--faiss` (needs `pip install faiss-cpu`): exact search against FAISS's exact
   IndexFlatIP, and FAISS's approximate HNSW index (build time, query time, and the
   share of the exact top K it finds), over catalogues of 10^4 to 10^6 items: where an
   ANN index starts to pay off.

    python bench/recall_speed.py [--users 10000 --items 1000000 --k 100 --dim 16] [--skip-small] [--faiss]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

GENRES = ["Action", "Adventure", "Animation", "Children", "Comedy", "Crime", "Documentary", "Drama", "Fantasy",
          "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western"]


def movielens_shaped(folder: Path, seed: int = 0) -> tuple[Path, Path, Path]:
    """users.csv (943), items.csv (1,682) and a model (dim 16) over their columns."""
    import polars as pl

    from fmctr.datasets.inputs import open_input
    from fmctr.hashing.tokens import HashSpec
    from fmctr.models.modelfile import Model, save
    from fmctr.models.weights import FMWeights
    from fmctr.reading.schema import SchemaSpec

    rng = np.random.default_rng(seed)
    users = pl.DataFrame({"user_id": [str(u) for u in range(1, 944)], "age": rng.integers(7, 74, 943).astype(str),
                          "gender": rng.choice(["M", "F"], 943), "occupation": rng.choice([f"o{i}" for i in range(21)], 943)})
    items = pl.DataFrame({"movie_id": [str(i) for i in range(1, 1683)],
                          "genres": ["|".join(rng.choice(GENRES, rng.integers(1, 4), replace=False)) for _ in range(1682)],
                          "year": rng.integers(1922, 1999, 1682).astype(str)})
    users.write_csv(folder / "users.csv")
    items.write_csv(folder / "items.csv")
    schema = SchemaSpec(numeric=("age", "year"), multi=("genres",), user=("user_id", "age", "gender", "occupation"),
                        item=("movie_id", "genres", "year")).check().resolve(
        ["label", *users.columns, *items.columns])
    hashing = HashSpec(bits=20)
    weights = FMWeights.zeros(hashing.size, 16)
    for name, side in (("users.csv", schema.side(False)), ("items.csv", schema.side(True))):
        rows = open_input(str(folder / name), schema=side, hashing=hashing, require_label=False).all_rows()
        touched = np.unique(rows.indices)
        weights.linear[touched] = rng.normal(0, 0.1, len(touched))
        weights.factors[touched] = rng.normal(0, 0.1, (len(touched), 16))
    save(Model(weights, schema, hashing, {"input": "bench"}), folder / "model.fm")
    return folder / "users.csv", folder / "items.csv", folder / "model.fm"


# What `fmctr recall` imports before it reads anything (numpy, polars, numba, typer).
IMPORTS = "import fmctr.commands.cli, fmctr.commands.recall, fmctr.models.modelfile"


def small(runs: int = 5) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with tempfile.TemporaryDirectory() as tmp:
        users, items, model = movielens_shaped(Path(tmp))
        command = [sys.executable, "-m", "fmctr", "recall", str(users), "--items", str(items), "-m", str(model),
                   "-k", "10", "-o", str(Path(tmp) / "top10.csv")]
        times, bare = [], []
        for _ in range(runs):
            t = time.perf_counter()
            subprocess.run(command, env=env, check=True)
            times.append(time.perf_counter() - t)
            t = time.perf_counter()
            subprocess.run([sys.executable, "-c", IMPORTS], env=env, check=True)
            bare.append(time.perf_counter() - t)
        lines = sum(1 for _ in open(Path(tmp) / "top10.csv")) - 1
    return {"users": 943, "items": 1682, "k": 10, "candidates": lines, "seconds": times, "best_s": min(times),
            "python_and_imports_s": min(bare)}


def _vectors(users: int, items: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    u = rng.standard_normal((users, dim + 1), dtype=np.float32)
    u[:, -1] = 1.0
    return u, rng.standard_normal((items, dim + 1), dtype=np.float32)


def scale_top_k(users: int, items: int, dim: int, k: int) -> dict:
    from fmctr.models.retrieval import top_k

    u, i = _vectors(users, items, dim)
    top_k(u[:4], i[:70_000], k, scan=True)  # load the kernel before the clock
    t = time.perf_counter()
    positions, scores = top_k(u, i, k, scan=True)
    seconds = time.perf_counter() - t
    check = u[:3] @ i.T  # three users by brute force
    exact = all(np.array_equal(np.sort(np.argsort(-check[r], kind="stable")[:k]), np.sort(positions[r]))
                for r in range(3))
    return {"seconds": seconds, "gscores_per_s": users * items / seconds / 1e9, "first_three_exact": exact,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def scale_matmul(users: int, items: int, dim: int) -> dict:
    u, i = _vectors(users, items, dim)
    best = None
    for user_block, item_block in ((users, 16_384), (2048, 65_536), (512, 262_144)):
        ub, ib = min(user_block, users), min(item_block, items)
        out = np.empty((ub, ib), np.float32)
        t = time.perf_counter()
        for lo in range(0, users, ub):
            for start in range(0, items, ib):
                a, b = u[lo : lo + ub], i[start : start + ib]
                np.matmul(a, b.T, out=out if (len(a), len(b)) == out.shape else None)
        seconds = time.perf_counter() - t
        if best is None or seconds < best["seconds"]:
            best = {"seconds": seconds, "block": [ub, ib]}
    best["gscores_per_s"] = users * items / best["seconds"] / 1e9
    best["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return best


def faiss_table(users: int = 1000, k: int = 100, dim: int = 16, sizes=(10_000, 100_000, 1_000_000)) -> list[dict]:
    """Per catalogue size: seconds for `users` queries by fmctr's exact search, FAISS's
    exact IndexFlatIP, and FAISS's HNSW (M 32, efSearch 128; its build time apart),
    with HNSW's recall of the exact top K."""
    import faiss

    from fmctr.models.retrieval import top_k

    u, _ = _vectors(users, 0, dim)
    top_k(u[:4], _vectors(1, 70_000, dim)[1], k, scan=True)  # load the kernel before the clock
    table = []
    for size in sizes:
        items = _vectors(1, size, dim, seed=1)[1]
        row = {"items": size}
        t = time.perf_counter()
        exact, _ = top_k(u, items, k)
        row["fmctr_s"] = time.perf_counter() - t
        flat = faiss.IndexFlatIP(dim + 1)
        flat.add(items)
        t = time.perf_counter()
        flat.search(u, k)
        row["faiss_flat_s"] = time.perf_counter() - t
        hnsw = faiss.IndexHNSWFlat(dim + 1, 32, faiss.METRIC_INNER_PRODUCT)
        t = time.perf_counter()
        hnsw.add(items)
        row["hnsw_build_s"] = time.perf_counter() - t
        hnsw.hnsw.efSearch = 128
        t = time.perf_counter()
        _, found = hnsw.search(u, k)
        row["hnsw_s"] = time.perf_counter() - t
        row["hnsw_recall"] = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(exact.tolist(), found.tolist())]))
        table.append(row)
        print(f"  {size:>9,} items: fmctr exact {row['fmctr_s']:.2f} s, faiss IndexFlatIP {row['faiss_flat_s']:.2f} s, "
              f"HNSW {row['hnsw_s']:.2f} s (build {row['hnsw_build_s']:.1f} s, finds {row['hnsw_recall']:.1%} of the "
              f"exact top {k})", flush=True)
    return table


def in_child(part: str, args) -> dict:
    command = [sys.executable, __file__, "--part", part, "--users", str(args.users), "--items", str(args.items),
               "--dim", str(args.dim), "--k", str(args.k)]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(out.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--skip-small", action="store_true")
    parser.add_argument("--skip-scale", action="store_true")
    parser.add_argument("--faiss", action="store_true")
    parser.add_argument("--part", choices=["topk", "matmul"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.part == "topk":
        print(json.dumps(scale_top_k(args.users, args.items, args.dim, args.k)))
        return
    if args.part == "matmul":
        print(json.dumps(scale_matmul(args.users, args.items, args.dim)))
        return
    print(f"cores: {os.cpu_count()}", flush=True)
    if not args.skip_small:
        s = small()
        print(f"top-10, 943 users x 1,682 items, whole process: best {s['best_s']:.2f} s of "
              f"{', '.join(f'{x:.2f}' for x in s['seconds'])} (python and the imports alone: "
              f"{s['python_and_imports_s']:.2f} s); {s['candidates']:,} lines", flush=True)
    if args.faiss:
        print(f"top-{args.k} for 1,000 users, dim {args.dim}, against FAISS:", flush=True)
        faiss_table(k=args.k, dim=args.dim)
    if args.skip_scale:
        return
    top = in_child("topk", args)
    bare = in_child("matmul", args)
    print(f"top-{args.k}, {args.users:,} users x {args.items:,} items, dim {args.dim}: {top['seconds']:.2f} s "
          f"({top['gscores_per_s']:.2f} G scores/s, peak RSS {top['peak_rss_mb']:.0f} MB, "
          f"exact on 3 users checked: {top['first_three_exact']})")
    print(f"bare float32 matmul, same shapes: {bare['seconds']:.2f} s ({bare['gscores_per_s']:.2f} G scores/s, "
          f"blocks {bare['block'][0]:,} x {bare['block'][1]:,}, peak RSS {bare['peak_rss_mb']:.0f} MB)")
    print(f"top-K throughput / matmul throughput: {bare['seconds'] / top['seconds']:.2f}x (target >= 0.7x)")


if __name__ == "__main__":
    main()
