"""Start-up: how long short commands take as whole processes, as a user runs them.

    python bench/startup.py [--repeat 9] [--json]

Times `fmctr --version`, `fmctr --help`, `fmctr info`, and `fmctr predict` / `fmctr eval` on 10 rows
of each sample file (Criteo TSV, movies CSV), each in a fresh process, interleaved
so that the machine's load falls on all alike; beside them, in the same run, two
baselines: a bare `python -c pass` and the imports no fmctr command can avoid
(numpy, polars, pyarrow's CSV reader, typer). Reports the median and the minimum of
the wall time and of the CPU time (user + system, which other load on a shared
machine disturbs less), and the median as a multiple of the import floor.
The children run with Python's bytecode cache, as an installed fmctr has it (pip
compiles the modules at install): PYTHONDONTWRITEBYTECODE is dropped for them, so the
untimed first run writes `__pycache__`; `--no-bytecode-cache` keeps it (then every run
compiles fmctr's modules from source, 0.05-0.1 s more per command here).
Targets: --help/--version <= 0.3 s, a 10-row predict <= 0.6 s (issue 13); info < 0.5 s (issue 14).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "sample_data"
FLOOR = "import numpy, polars, pyarrow.csv, typer"


ENV = dict(os.environ)


def timed(argv: list[str]) -> tuple[float, float]:
    """(wall, cpu) seconds of one child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed: {done.stderr.strip()}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def prepare(tmp: Path) -> dict[str, list[str]]:
    """Two small models and 10-row files; the commands to time."""
    fm = [sys.executable, "-m", "fmctr"]
    criteo, movies = tmp / "criteo.fm", tmp / "movies.fm"
    for model, data, flags in ((criteo, DATA / "criteo_like_train.tsv.gz", ["--preset", "criteo"]),
                               (movies, DATA / "movies_train.csv", ["--multi", "genres", "--numeric", "price",
                                                                    "--ignore", "request_id"])):
        subprocess.run([*fm, "train", str(data), *flags, "--epochs", "1", "-o", str(model), "-q"], check=True, env=ENV)
    ten_tsv, ten_csv = tmp / "ten.tsv", tmp / "ten.csv"
    ten_tsv.write_text("".join((DATA / "criteo_like_test.tsv").read_text().splitlines(keepends=True)[:10]))
    ten_csv.write_text("".join((DATA / "movies_test.csv").read_text().splitlines(keepends=True)[:11]))
    return {
        "python -c pass": [sys.executable, "-c", "pass"],
        f"imports floor ({FLOOR})": [sys.executable, "-c", FLOOR],
        "fmctr --version": [*fm, "--version"],
        "fmctr --help": [*fm, "--help"],
        "predict 10 rows, Criteo TSV": [*fm, "predict", str(ten_tsv), "-m", str(criteo)],
        "predict 10 rows, movies CSV": [*fm, "predict", str(ten_csv), "-m", str(movies)],
        "eval 10 rows, movies CSV": [*fm, "eval", str(ten_csv), "-m", str(movies), "--json"],
        "info --json (Criteo model)": [*fm, "info", str(criteo), "--json"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--no-bytecode-cache", action="store_true",
                        help="keep PYTHONDONTWRITEBYTECODE for the children, as the environment has it")
    args = parser.parse_args()
    if not args.no_bytecode_cache:
        ENV.pop("PYTHONDONTWRITEBYTECODE", None)
    cached = "PYTHONDONTWRITEBYTECODE" not in ENV
    with tempfile.TemporaryDirectory() as tmp:
        commands = prepare(Path(tmp))
        for argv in commands.values():  # once untimed: file caches warm, numba's cache present
            timed(argv)
        runs: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
        for _ in range(args.repeat):
            for name, argv in commands.items():
                runs[name].append(timed(argv))
    floor = statistics.median(w for w, _ in runs[f"imports floor ({FLOOR})"])
    table = {name: {"wall_median": statistics.median(w for w, _ in r), "wall_min": min(w for w, _ in r),
                    "cpu_median": statistics.median(c for _, c in r), "cpu_min": min(c for _, c in r),
                    "x_floor": statistics.median(w for w, _ in r) / floor} for name, r in runs.items()}
    if args.json:
        print(json.dumps({"repeat": args.repeat, "load": os.getloadavg(), "bytecode_cache": cached, "commands": table},
                         indent=1))
        return
    print(f"{args.repeat} runs each, interleaved; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; "
          f"bytecode cache {'on' if cached else 'off (PYTHONDONTWRITEBYTECODE)'}")
    print(f"{'command':<62} {'wall med':>8} {'min':>6} {'cpu med':>8} {'min':>6} {'x floor':>8}")
    for name, t in table.items():
        print(f"{name:<62} {t['wall_median']:8.2f} {t['wall_min']:6.2f} {t['cpu_median']:8.2f} {t['cpu_min']:6.2f} "
              f"{t['x_floor']:8.2f}")


if __name__ == "__main__":
    main()
