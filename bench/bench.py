"""fmctr's speed and memory, each stage against a baseline measured in the same run.

    python bench/bench.py                       # 1M rows; memory also at 20M rows
    python bench/bench.py --rows 200000 --memory-rows 0

Generates Criteo-like data (sample_data/generate.py, planted FM, 13 numeric + 26
categorical fields), then runs every stage in a fresh process, timing the work inside
it and reading the process's peak RSS from the kernel (wait4). Each stage (baselines
included) first runs untimed on the first 20k rows in the same process, so rows/s is
the steady state and the one-off start-up (imports done, compiled kernels loaded) is
its own column. Prints a table of rows/s, the ratio to the stage's baseline, and
peak RSS. The machine is shared and noisy: compare ratios, not absolutes.

Then an accuracy check (speed must not cost accuracy): the cpu engine and the torch
engine each train one epoch on the same 100k rows with the same options and batch
size, and both are scored on 100k held-out rows of the same planted model.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

STAGES = {
    # name -> the body of stage(DATA, HASHED, MODEL, PREDS), run in a child process; it
    # returns (rows, seconds).
    "read (bare polars.read_csv)": """
import polars as pl
t = time.perf_counter()
df = pl.read_csv(DATA, separator="\\t", has_header=False, infer_schema=False, quote_char=None)
return df.height, time.perf_counter() - t
""",
    "preprocess TSV -> hashed": """
from fmctr.commands.jobs import preprocess
from fmctr.reading.schema import build_spec
from fmctr.hashing.tokens import HashSpec
t = time.perf_counter()
[ds] = preprocess(DATA, HASHED, spec=build_spec(preset="criteo"), hashing=HashSpec(bits=BITS))
return ds.rows, time.perf_counter() - t
""",
    "train hashed, torch autograd + Adagrad, batch 4096 (baseline)": """
from fmctr.commands.jobs import train_model
from fmctr.reading.schema import build_spec
from fmctr.training.config import TrainConfig
model, result = train_model(HASHED, spec=build_spec(), hashing=None,
    cfg=TrainConfig.from_options(dim=DIM, epochs=1, engine="torch", device="cpu", batch_size=4096, threads=THREADS))
return result.rows, result.history[0].seconds
""",
    "train hashed, fmctr cpu engine (1 epoch)": """
from fmctr.commands.jobs import train_model
from fmctr.reading.schema import build_spec
from fmctr.training.config import TrainConfig
from fmctr.models.modelfile import save
model, result = train_model(HASHED, spec=build_spec(), hashing=None, cfg=TrainConfig.from_options(dim=DIM, epochs=1, threads=THREADS))
save(model, MODEL)
return result.rows, result.history[0].seconds
""",
    "train hashed, 1 process x 1 thread": """
from fmctr.commands.jobs import train_model
from fmctr.reading.schema import build_spec
from fmctr.training.config import TrainConfig
model, result = train_model(HASHED, spec=build_spec(), hashing=None, cfg=TrainConfig.from_options(dim=DIM, epochs=1, threads=1))
return result.rows, result.history[0].seconds
""",
    "train hashed, 2 ranks x 1 thread (torchrun, gloo)": """
import subprocess
out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                      "-m", "fmctr", "train", HASHED, "-o", MODEL + ".2", "-q", "--json", "--epochs", "1",
                      "--dim", str(DIM), "--threads", "1"], capture_output=True, text=True, check=True).stdout
summary = json.loads(out.strip().splitlines()[-1])
return summary["rows"], summary["history"][0]["seconds"]
""",
    "train from raw TSV (hash + 1 epoch)": """
from fmctr.commands.jobs import train_model
from fmctr.reading.schema import build_spec
from fmctr.hashing.tokens import HashSpec
from fmctr.training.config import TrainConfig
t = time.perf_counter()
model, result = train_model(DATA, spec=build_spec(preset="criteo"), hashing=HashSpec(bits=BITS), cfg=TrainConfig.from_options(dim=DIM, epochs=1, threads=THREADS))
return result.rows, time.perf_counter() - t
""",
    "predict TSV -> CSV": """
from fmctr.commands.jobs import predict
from fmctr.models.modelfile import load
model = load(MODEL, training_state=False)
t = time.perf_counter()
n = predict(DATA, model, PREDS)
return n, time.perf_counter() - t
""",
}

REPEATED = {"read (bare polars.read_csv)", "preprocess TSV -> hashed", "predict TSV -> CSV"}
# Run cold: the 2-rank stage starts its own processes, so it and its baseline both
# include loading the compiled kernels.
COLD = {"train hashed, 1 process x 1 thread", "train hashed, 2 ranks x 1 thread (torchrun, gloo)"}
WARM_ROWS = 20_000
ACCURACY_ROWS = 100_000  # training rows of the accuracy check (the torch engine at batch 4 is slow)
TEST_ROWS = 100_000

PRELUDE = """
import json, os, sys, time
def report(rows, seconds, first=None):
    print(json.dumps({"rows": rows, "seconds": seconds, "first_call": first}))
"""
# Each stage first runs on WARM_ROWS rows in the same process, untimed in the table:
# the rows/s are then the steady state, not the one-off start-up (loading the compiled
# numba kernels costs about 0.2 s per process), which is reported on its own.
RUN = """
first = None
if WARM:
    t = time.perf_counter()
    stage(SMALL_DATA, SMALL_HASHED, MODEL, PREDS + ".warm")
    first = time.perf_counter() - t
report(*stage(DATA, HASHED, MODEL, PREDS), first)
"""


def stage_source(body: str) -> str:
    return "def stage(DATA, HASHED, MODEL, PREDS):\n" + "".join(f"    {line}\n" for line in body.strip().splitlines())


def run_stage(body: str, variables: dict, warm: bool = True) -> dict:
    """Run a stage in a fresh Python; return its report plus its peak RSS in MiB."""
    assignments = "".join(f"{k} = {v!r}\n" for k, v in {**variables, "WARM": warm}.items())
    code = PRELUDE + assignments + stage_source(body) + RUN
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, cwd=ROOT)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"stage failed (status {status}):\n{code}")
    report = json.loads(out.decode().strip().splitlines()[-1])
    report["rss_mib"] = usage.ru_maxrss / 1024
    report["rows_per_s"] = report["rows"] / report["seconds"]
    return report


def split_tail(path: Path, rows: int, tail: Path) -> None:
    """Move the last `rows` lines of `path` to `tail`."""
    with path.open("rb+") as f:
        lines = f.read().splitlines(keepends=True)
        tail.write_bytes(b"".join(lines[-rows:]))
        f.seek(0)
        f.write(b"".join(lines[:-rows]))
        f.truncate()


def accuracy_check(train: Path, test: Path, work: Path, args) -> list[str]:
    """Test AUC of the cpu engine (fused kernel, Hogwild threads) and of the torch
    engine (autograd) trained alike: same rows, options, batch size and epoch."""
    common = ["--preset", "criteo", "--bits", str(args.bits), "--dim", str(args.dim), "--epochs", "1",
              "--batch-size", "4", "-q"]
    lines = []
    aucs = {}
    for engine in ("torch", "cpu"):
        model = work / f"accuracy-{engine}.fm"
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "fmctr", "train", str(train), "-o", str(model), "--engine", engine, *common],
                       cwd=ROOT, check=True, capture_output=True)
        seconds = time.perf_counter() - started
        out = subprocess.run([sys.executable, "-m", "fmctr", "eval", str(test), "-m", str(model), "--json"],
                             cwd=ROOT, check=True, capture_output=True, text=True).stdout
        aucs[engine] = json.loads(out)["auc"]
        lines.append(f"{engine} engine: test AUC {aucs[engine]:.4f} ({seconds:.0f} s with start-up)")
    lines.append(f"difference (cpu - torch): {aucs['cpu'] - aucs['torch']:+.4f} (target: within 0.002)")
    return lines


def replicate(hashed: Path, copies: int, out: Path) -> None:
    """A hashed dataset of `copies` times the rows of `hashed`, by hard links."""
    manifest = json.loads((hashed / "manifest.json").read_text())
    out.mkdir()
    parts = []
    for c in range(copies):
        for part in manifest["parts"]:
            name = f"part-{len(parts):05d}"
            for array in ("indices", "values", "offsets", "labels"):
                if (hashed / f"{part['name']}.{array}.npy").exists():
                    os.link(hashed / f"{part['name']}.{array}.npy", out / f"{name}.{array}.npy")
            parts.append({**part, "name": name})
    manifest["parts"] = parts
    manifest["rows"] = manifest["rows"] * copies
    (out / "manifest.json").write_text(json.dumps(manifest))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--memory-rows", type=int, default=20_000_000, help="rows for the memory check (0: skip)")
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--bits", type=int, default=22)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--vocab", type=int, default=100_000, help="largest categorical vocabulary")
    parser.add_argument("--repeats", type=int, default=3, help="runs of the read, preprocess and predict stages (median)")
    parser.add_argument("--no-accuracy", dest="accuracy", action="store_false",
                        help="skip the check that the cpu engine is as accurate as the torch engine")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="fmctr-bench-"))
    try:
        data = work / "data.tsv"
        test = work / "test.tsv"
        started = time.perf_counter()
        # In a child, so that this process stays small: a child forked from a big
        # parent would report the parent's pages as its peak RSS. TEST_ROWS more rows
        # from the same planted model are held out for the accuracy check.
        subprocess.run([sys.executable, "-c", "import sys, generate; sys.stdout.buffer.write("
                        f"generate.criteo_like({args.rows + TEST_ROWS}, seed=0, vocab_max={args.vocab}).text)"],
                       stdout=data.open("wb"), cwd=ROOT / "sample_data", check=True)
        split_tail(data, TEST_ROWS, test)
        print(f"generated {args.rows:,} Criteo-like rows ({data.stat().st_size / 2**20:.0f} MiB) "
              f"in {time.perf_counter() - started:.0f}s; dim {args.dim}, bits {args.bits}, threads {args.threads}",
              file=sys.stderr)
        small = work / "small.tsv"
        accuracy_train = work / "accuracy.tsv"
        with data.open("rb") as full, small.open("wb") as out, accuracy_train.open("wb") as out2:
            for number, line in zip(range(ACCURACY_ROWS), full):
                if number < WARM_ROWS:
                    out.write(line)
                out2.write(line)
        subprocess.run([sys.executable, "-m", "fmctr", "preprocess", str(small), "-o", str(work / "small.hashed"),
                        "--preset", "criteo", "--bits", str(args.bits)], cwd=ROOT, check=True, capture_output=True)
        variables = {"DATA": str(data), "HASHED": str(work / "data.hashed"), "MODEL": str(work / "model.fm"),
                     "PREDS": str(work / "preds.csv"), "BITS": args.bits, "DIM": args.dim, "THREADS": args.threads,
                     "SMALL_DATA": str(small), "SMALL_HASHED": str(work / "small.hashed")}
        results = {}
        for name, code in STAGES.items():
            # The quick stages run --repeats times (the median counts): this machine's
            # load moves single runs by 20-30%.
            runs = [run_stage(code, variables, warm=name not in COLD) for _ in range(args.repeats if name in REPEATED else 1)]
            runs.sort(key=lambda r: r["rows_per_s"])
            results[name] = runs[len(runs) // 2]
            speeds = ", ".join(f"{r['rows_per_s']:,.0f}" for r in runs)
            spread = f" (runs: {speeds})" if len(runs) > 1 else ""
            print(f"  {name}: {results[name]['rows_per_s']:,.0f} rows/s{spread}", file=sys.stderr)

        read = results["read (bare polars.read_csv)"]["rows_per_s"]
        torch_train = results["train hashed, torch autograd + Adagrad, batch 4096 (baseline)"]["rows_per_s"]
        baseline_of = {
            "preprocess TSV -> hashed": ("bare read", read),
            "train hashed, fmctr cpu engine (1 epoch)": ("torch baseline", torch_train),
            "train from raw TSV (hash + 1 epoch)": ("torch baseline", torch_train),
            "train hashed, 2 ranks x 1 thread (torchrun, gloo)": ("1 process x 1 thread",
                                                                   results["train hashed, 1 process x 1 thread"]["rows_per_s"]),
            "predict TSV -> CSV": ("bare read", read),
        }
        print(f"\n| stage ({args.rows:,} rows) | rows/s | vs baseline | peak RSS | first call ({WARM_ROWS // 1000}k rows) |")
        print("|---|---:|---:|---:|---:|")
        for name, r in results.items():
            ratio = ""
            if name in baseline_of:
                label, base = baseline_of[name]
                ratio = f"{r['rows_per_s'] / base:.2f}x {label}"
            first = "cold" if r["first_call"] is None else f"{r['first_call']:.2f} s"
            print(f"| {name} | {r['rows_per_s']:,.0f} | {ratio} | {r['rss_mib']:,.0f} MiB | {first} |")

        if args.memory_rows:
            copies = max(1, args.memory_rows // args.rows)
            big = work / "big.hashed"
            replicate(work / "data.hashed", copies, big)
            code = STAGES["train hashed, fmctr cpu engine (1 epoch)"].replace("save(model, MODEL)", "")
            small_run = results["train hashed, fmctr cpu engine (1 epoch)"]
            big_run = run_stage(code, {**variables, "HASHED": str(big)})
            print(f"| train hashed, {big_run['rows']:,} rows | {big_run['rows_per_s']:,.0f} | "
                  f"RSS {big_run['rss_mib'] / small_run['rss_mib']:.2f}x the {args.rows:,}-row run | {big_run['rss_mib']:,.0f} MiB | "
                  f"{big_run['first_call']:.2f} s |")
        if args.accuracy:
            print(f"\naccuracy check: {ACCURACY_ROWS:,} training rows, 1 epoch, batch 4, "
                  f"{TEST_ROWS:,} held-out test rows")
            for line in accuracy_check(accuracy_train, test, work, args):
                print(f"  {line}")
        model_mib = (2**args.bits) * (args.dim + 1) * 4 * 2 / 2**20
        print(f"\nmodel + optimizer state at bits {args.bits}, dim {args.dim}: {model_mib:,.0f} MiB")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
