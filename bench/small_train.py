"""Small data: a default training's cost follows the rows, not the size of the tables.

    python bench/small_train.py [--rows 300,1000,4000] [--repeat 3] [--json]

Times `fmctr train FILE -o M -q` (every default: held-out runs, rivals, blocks under
1,000 held-out rows, merged refits - 20 or more short runs on a few hundred rows) as
whole processes on the first N rows of sample_data/clicks_train.csv, at the default
--bits 22 and, as the baseline in the same run, at --bits 16: tables 64 times
smaller, the same runs. Interleaved (22, 16, 22, 16, ...) so that the machine's load
falls on both alike; the median of each and their ratio per size.

Why: at bits 22 the engine's tables hold 4M rows whatever the data. Before the tables
were laid out for the features a small set holds (fmctr.tables.sparse_zeros, with
RowSource.few_features), each run zeroed most of their huge pages, copied them whole
and merged them whole: 400 rows trained in 9.6 s, against 4.0 s after. Target: the
default within 1.25x of --bits 16 at every size.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "sample_data" / "clicks_train.csv"
TARGET = 1.25


def timed(argv: list[str]) -> float:
    t = time.perf_counter()
    done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed: {done.stderr.strip()}")
    return time.perf_counter() - t


def head(rows: int, folder: Path) -> Path:
    lines = SOURCE.read_text().splitlines(keepends=True)
    if rows >= len(lines):
        sys.exit(f"{SOURCE} has {len(lines) - 1:,} rows; asked for {rows:,}")
    path = folder / f"clicks_{rows}.csv"
    path.write_text("".join(lines[: rows + 1]))
    return path


def measure(rows: int, repeat: int, folder: Path) -> dict:
    data = head(rows, folder)
    command = [sys.executable, "-m", "fmctr", "train", str(data), "-o", str(folder / "m.fm"), "-q"]
    timed(command)  # (untimed: numba's cache, the OS's file cache)
    times: dict[int, list[float]] = {22: [], 16: []}
    for _ in range(repeat):
        for bits in (22, 16):
            times[bits].append(timed(command + ["--bits", str(bits)]))
    default, small = statistics.median(times[22]), statistics.median(times[16])
    return {"rows": rows, "bits22_s": default, "bits16_s": small, "ratio": default / small,
            "met": default / small <= TARGET, "runs": times}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", default="300,1000,4000")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = [measure(int(n), args.repeat, Path(tmp)) for n in args.rows.split(",")]
    if args.json:
        print(json.dumps(results, indent=1))
        return
    print(f"{'rows':>6} {'--bits 22 (s)':>14} {'--bits 16 (s)':>14} {'ratio':>6}  target <= {TARGET}x")
    for r in results:
        print(f"{r['rows']:>6,} {r['bits22_s']:>14.2f} {r['bits16_s']:>14.2f} {r['ratio']:>5.2f}x  "
              f"{'met' if r['met'] else 'MISSED'}")


if __name__ == "__main__":
    main()
