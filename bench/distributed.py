"""Does data-parallel training keep accuracy? One process against 2 ranks under
torchrun (gloo, one machine), same planted data, same options, scored on the same
held-out rows.

    python bench/distributed.py                    # 200k and 1M training rows
    python bench/distributed.py --rows 200000 --epochs 2 --seed 1

Prints test AUC per run and the difference (target: 2 ranks within 0.002 of one process).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "sample_data"))

import generate  # noqa: E402

TEST_ROWS = 100_000


def fmctr(*args: str) -> str:
    return subprocess.run([sys.executable, "-m", "fmctr", *args], check=True, capture_output=True, text=True).stdout


def compare(rows: int, epochs: int, seed: int, vocab: int, sync_every: int | None, work: Path) -> dict:
    g = generate.criteo_like(rows + TEST_ROWS, seed=seed, vocab_max=vocab)
    lines = g.text.splitlines(keepends=True)
    (work / "train.tsv").write_bytes(b"".join(lines[:rows]))
    (work / "test.tsv").write_bytes(b"".join(lines[rows:]))
    fmctr("preprocess", str(work / "train.tsv"), "--preset", "criteo", "-o", str(work / "train.hashed"))
    common = ["--epochs", str(epochs), "--dim", "16", "-q", "--seed", str(seed)]
    sync = ["--sync-every", str(sync_every)] if sync_every else []
    fmctr("train", str(work / "train.hashed"), "-o", str(work / "one.fm"), "--threads", "2", *common)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                    "-m", "fmctr", "train", str(work / "train.hashed"), "-o", str(work / "two.fm"), "--threads", "1",
                    *common, *sync], check=True, capture_output=True)
    auc = {name: json.loads(fmctr("eval", str(work / "test.tsv"), "-m", str(work / f"{name}.fm"), "--json"))["auc"]
           for name in ("one", "two")}
    return {"rows": rows, "one process": auc["one"], "2 ranks": auc["two"], "difference": auc["two"] - auc["one"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[200_000, 1_000_000])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--vocab", type=int, default=100_000)
    parser.add_argument("--sync-every", type=int, default=None)
    args = parser.parse_args()
    print(f"| training rows | one process, test AUC | 2 ranks, test AUC | difference (target >= -0.002) |")
    print("|---:|---:|---:|---:|")
    for rows in args.rows:
        with tempfile.TemporaryDirectory(prefix="fmctr-dist-") as work:
            r = compare(rows, args.epochs, args.seed, args.vocab, args.sync_every, Path(work))
        print(f"| {rows:,} | {r['one process']:.4f} | {r['2 ranks']:.4f} | {r['difference']:+.4f} |", flush=True)


if __name__ == "__main__":
    main()
