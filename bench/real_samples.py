"""fmctr on the small real CTR samples, against the peers' published numbers.

    python bench/real_samples.py                          # defaults
    python bench/real_samples.py --data ../shared/data    # where the samples are
    python bench/real_samples.py -- --dim 16 --lr 0.05    # extra `fmctr train` options

The samples are not part of this repository. Splits (as the peers' numbers were measured):

- Criteo (criteo-kaggle-head10k/train_head10k.txt): first 8,000 rows train, last 2,000 test.
- Avazu (avazu-head10k/avazu_head10k.csv): a random 80/20 split of the rows with
  seed 0, the way sklearn's train_test_split(test_size=0.2, random_state=0) makes it.

Each runs `fmctr train` and `fmctr eval --json` exactly as a user would, with the
default options (no validation data: the small samples have none to spare).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
PEERS = {
    "criteo": {"xLearn FM": 0.749, "sklearn hashed LR": 0.747},
    "avazu": {"VW logistic regression": 0.711, "xLearn FFM": 0.702},
}


def split(data: Path, work: Path) -> dict[str, tuple[Path, Path, list[str]]]:
    lines = (data / "criteo-kaggle-head10k" / "train_head10k.txt").read_bytes().splitlines(keepends=True)
    (work / "criteo_train.tsv").write_bytes(b"".join(lines[:8000]))
    (work / "criteo_test.tsv").write_bytes(b"".join(lines[-2000:]))
    header, *rows = (data / "avazu-head10k" / "avazu_head10k.csv").read_bytes().splitlines(keepends=True)
    # As sklearn's train_test_split(test_size=0.2, random_state=0) splits: the test
    # rows are the first 20% of RandomState(0)'s permutation.
    order = np.random.RandomState(0).permutation(len(rows))
    n_test = int(np.ceil(0.2 * len(rows)))
    (work / "avazu_train.csv").write_bytes(header + b"".join(rows[i] for i in order[n_test:]))
    (work / "avazu_test.csv").write_bytes(header + b"".join(rows[i] for i in order[:n_test]))
    return {
        "criteo": (work / "criteo_train.tsv", work / "criteo_test.tsv", ["--preset", "criteo"]),
        "avazu": (work / "avazu_train.csv", work / "avazu_test.csv", ["--preset", "avazu"]),
    }


def fmctr(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "fmctr", *map(str, args)], capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"fmctr {' '.join(map(str, args))} failed:\n{done.stderr}")
    return done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--only", choices=list(PEERS), action="append", help="run only this sample")
    parser.add_argument("--seeds", type=int, default=1,
                        help="train with --seed 0..N-1 and report the mean and spread (training is Hogwild: "
                             "two threads do not repeat bit for bit)")
    parser.add_argument("extra", nargs="*", help="extra `fmctr train` options (after --)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fmctr-real-") as tmp:
        work = Path(tmp)
        print(f"| sample | fmctr test AUC{' (mean of seeds, min-max)' if args.seeds > 1 else ''} | logloss | peers |")
        print("|---|---:|---:|---|")
        for name, (train, test, flags) in split(args.data, work).items():
            if args.only and name not in args.only:
                continue
            aucs, loglosses = [], []
            for seed in range(args.seeds):
                model = work / f"{name}.fm"
                fmctr("train", train, *flags, "-o", model, "-q", "--seed", str(seed), *args.extra)
                metrics = json.loads(fmctr("eval", test, "-m", model, "--json"))
                aucs.append(metrics["auc"])
                loglosses.append(metrics["logloss"])
            peers = ", ".join(f"{p} {a:.3f}" for p, a in PEERS[name].items())
            spread = f" ({min(aucs):.4f}-{max(aucs):.4f})" if args.seeds > 1 else ""
            print(f"| {name} | {np.mean(aucs):.4f}{spread} | {np.mean(loglosses):.4f} | {peers} |", flush=True)


if __name__ == "__main__":
    main()
