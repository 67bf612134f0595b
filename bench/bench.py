"""fmctr's speed and memory, each stage against a baseline measured in the same run.

    python bench/bench.py                       # 1M rows; memory at 20M, whole process at 10M
    python bench/bench.py --rows 100000 --memory-rows 0 --whole-rows 300000

Generates Criteo-like data (sample_data/generate.py, planted FM, 13 numeric + 26
categorical fields), then runs every stage in a fresh process, timing the work inside
it and reading the process's peak RSS from the kernel (wait4). Each fmctr stage (and
its polars/torch baselines) first runs untimed on the first 20k rows in the same
process, so rows/s is the steady state and the one-off start-up (imports done, compiled
kernels loaded) is its own column. Prints a table of rows/s, the ratio to the stage's
baseline, peak RSS, and for the ratios that have one a target ("met"/"missed"). The
machine is shared and noisy: compare ratios, not absolutes.

Targets, each a ratio of two numbers measured in this run:
  - preprocess TSV -> hashed >= 1.0x the bare polars read of the same TSV;
  - predict TSV -> CSV >= 1.0x the bare polars read of the same TSV (these two each
    run --repeats times, each run right after a read of its own: the median of the
    per-pair ratios);
  - the fmctr cpu engine's training epoch >= 1.0x the bare probe
    (../shared/tools/fm_probe_hashed.py next to the repository: a per-row Hogwild
    Adagrad FM in numba, run as `python fm_probe_hashed.py HASHED --dim 16 --bits 22
    --threads 2` (--dim, --bits, --ref-threads) on the same hashed dataset; it times
    one epoch after its own warm-up and prints rows/s). Reported as absent, not a
    crash, when the file is missing;
  - the same epoch >= 1.0x one xLearn FM epoch (k=16, --ref-threads threads, its
    default options: task binary, lr 0.2, lambda 0.002, adagrad, instance
    normalisation, shuffling, lock-free) on the same hashed rows, written once as
    libsvm text (untimed). xLearn's epoch time is the "Time cost (sec)" of epoch 1 in
    its own log: that timer wraps only the gradient pass over the rows already in
    memory, so reading/parsing the text ("Time cost for reading problem"), model
    initialisation and saving are excluded (the parse time is shown beside it). If
    xlearn is not importable the bench runs `pip install xlearn` (a source build of
    about 2 minutes; USER must be set, and is set to "bench" when it is not); if that
    fails the row says so and the run goes on;
  - `python -m fmctr train HASHED -o MODEL --epochs 1 --dim 16` on --whole-rows
    hashed rows (the 1M-row dataset repeated by hard links), timed from process
    start to exit (imports, loading, the epoch and writing the model included),
    >= 0.7x the in-process steady-state rows/s of the cpu engine stage on the same
    dataset; the two alternate for --whole-rounds rounds (median of the per-round
    ratios).
The probe's, xLearn's and fmctr's epochs run in --epoch-rounds interleaved rounds
(probe, xLearn, fmctr, probe, ...): their ratios are the median of the per-round
ratios, each round's three epochs having run within the same minute or two.
The probe, xLearn and whole-process stages drive only the command line and
subprocesses, not fmctr's internal modules.

Then an accuracy check (speed must not cost accuracy): the cpu engine and the torch
engine each train one epoch on the same 100k rows with the same options and batch
size, and both are scored on 100k held-out rows of the same planted model.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROBE = ROOT.parent / "shared/tools/fm_probe_hashed.py"  # not part of this repository
PROBE_STAGE = "train hashed, bare probe (fm_probe_hashed.py, numba)"
XLEARN_STAGE = "train hashed, xLearn FM (1 epoch, parse excluded)"
CPU_STAGE = "train hashed, fmctr cpu engine (1 epoch)"
# xLearn's FM with its documented defaults (lr 0.2, lambda 0.002, adagrad, instance
# normalisation, shuffling, lock-free Hogwild); k, epochs and threads set to match.
XLEARN_OPTIONS = {"task": "binary", "lr": 0.2, "lambda": 0.002, "epoch": 1}

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
    # The next two are the cpu engine's references, run as subprocesses on its HASHED
    # dataset, each timing one epoch itself; they return (rows, seconds, note).
    PROBE_STAGE: r"""
import re, subprocess
proc = subprocess.run([sys.executable, PROBE, HASHED, "--dim", str(DIM), "--bits", str(BITS), "--threads", str(REF_THREADS)],
                      capture_output=True, text=True)
if proc.returncode:
    raise SystemExit(f"the probe exited {proc.returncode}: " + (proc.stderr.strip().splitlines() or [""])[-1])
out = proc.stdout
m = re.search(r"probe on hashed data, \d+ threads: ([\d,]+) rows/s \(([\d,]+) rows", out)
if m is None:
    raise SystemExit("no rows/s in the probe's output: " + out.strip()[-200:])
rows = int(m.group(2).replace(",", ""))
return rows, rows / float(m.group(1).replace(",", "")), "own warm-up"
""",
    XLEARN_STAGE: r"""
import re, subprocess
rows = sum(1 for _ in open(LIBSVM, "rb"))
code = "import json, sys, xlearn; fm = xlearn.create_fm(); fm.setTrain(sys.argv[1]); fm.fit(json.loads(sys.argv[2]), sys.argv[3])"
proc = subprocess.run([sys.executable, "-c", code, LIBSVM, json.dumps(XLEARN_PARAMS), MODEL + ".xlearn"], capture_output=True,
                      text=True, env={**os.environ, "USER": os.environ.get("USER") or "bench"})
log = re.sub(r"\x1b\[[0-9;]*m", "", proc.stdout)
if proc.returncode:
    raise SystemExit(f"xLearn exited {proc.returncode}: " + ((proc.stderr.strip() or log.strip()).splitlines() or [""])[-1])
# The epoch's row of xLearn's log: "[ 100%      ]     1     0.467230     0.19" (epoch,
# train loss, seconds); its timer wraps only the gradient pass over the parsed rows.
epoch = re.search(r"^\[\s*\d+%\s*\]\s+1\s+\S+\s+([\d.]+)\s*$", log, re.M)
parse = re.search(r"Time cost for reading problem: ([\d.]+)", log)
if epoch is None:
    raise SystemExit("no epoch time in xLearn's log:\n" + log)
return rows, float(epoch.group(1)), f"parse {float(parse.group(1)):.2f} s excluded"
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

READ_STAGE = "read (bare polars.read_csv)"
REPEATED = {READ_STAGE, "preprocess TSV -> hashed", "predict TSV -> CSV"}
AGAINST_READ = {"preprocess TSV -> hashed", "predict TSV -> CSV"}  # (each run beside a read of its own)
# Run cold: the 2-rank stage starts its own processes, so it and its baseline both
# include loading the compiled kernels.
COLD = {"train hashed, 1 process x 1 thread", "train hashed, 2 ranks x 1 thread (torchrun, gloo)"}
# Run once, without the 20k-row warm-up call: they time their own epoch.
OWN_TIMING = {PROBE_STAGE, XLEARN_STAGE}
# Run in interleaved rounds (epoch_rounds), compared round by round.
EPOCH_TRIO = (PROBE_STAGE, XLEARN_STAGE, CPU_STAGE)
WARM_ROWS = 20_000
ACCURACY_ROWS = 100_000  # training rows of the accuracy check (the torch engine at batch 4 is slow)
TEST_ROWS = 100_000

PRELUDE = """
import json, os, sys, time
def report(rows, seconds, first=None, note=None):
    print(json.dumps({"rows": rows, "seconds": seconds, "first_call": first, "note": note}))
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
result = stage(DATA, HASHED, MODEL, PREDS)
report(*result[:2], first, *result[2:])
"""


# `python -m fmctr train` as a user runs it, timed from before the process starts until
# it has exited (imports, loading the data, the epoch, writing the model); run in a
# stage process of its own so that wait4 reports the trainer's peak RSS.
WHOLE_PROCESS = r"""
import subprocess
t = time.perf_counter()
proc = subprocess.run([sys.executable, "-m", "fmctr", "train", HASHED, "-o", MODEL, "--epochs", "1", "--dim", str(DIM),
                       "--threads", str(THREADS), "-q", "--json"], capture_output=True, text=True)
seconds = time.perf_counter() - t
if proc.returncode:
    raise SystemExit(f"fmctr train exited {proc.returncode}: " + (proc.stderr.strip().splitlines() or [""])[-1])
summary = json.loads(proc.stdout.strip().splitlines()[-1])
return summary["rows"], seconds, f"epoch {summary['history'][0]['seconds']:.1f} s of {seconds:.1f} s"
"""

# A hashed dataset as libsvm text for xLearn ("label index:value ..."), in a child
# process of its own: argv = HASHED OUT. Reads the dataset's part files directly, as
# the probe does.
TO_LIBSVM = r"""
import glob, os, sys
import numpy as np
hashed, out = sys.argv[1], sys.argv[2]
with open(out, "w") as f:
    for name in sorted(glob.glob(os.path.join(hashed, "part-*.indices.npy"))):
        base = name[: -len(".indices.npy")]
        indices, offsets, labels = np.load(name), np.load(base + ".offsets.npy"), np.load(base + ".labels.npy")
        values = np.load(base + ".values.npy") if os.path.exists(base + ".values.npy") else None
        lines = []
        for r, label in enumerate((labels > 0).astype(int).tolist()):
            a, b = offsets[r], offsets[r + 1]
            if values is None:
                features = ":1 ".join(map(str, indices[a:b].tolist())) + ":1"
            else:
                features = " ".join(f"{i}:{v:g}" for i, v in zip(indices[a:b].tolist(), values[a:b].tolist()))
            lines.append(f"{label} {features}\n")
        f.writelines(lines)
"""


def ensure_xlearn() -> str | None:
    """Make xlearn importable by this Python, installing it with pip if need be;
    return None when it is, else why not."""
    env = {**os.environ, "USER": os.environ.get("USER") or "bench"}  # xLearn's build and log need USER
    if subprocess.run([sys.executable, "-c", "import xlearn"], env=env, capture_output=True).returncode == 0:
        return None
    print("xlearn is not importable: pip install xlearn (a source build, about 2 minutes)", file=sys.stderr)
    started = time.perf_counter()
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "xlearn"], env=env, capture_output=True, text=True)
    if pip.returncode:
        lines = [line.strip() for line in (pip.stdout + pip.stderr).splitlines() if line.strip()]
        return "`pip install xlearn` failed" + (f": {lines[-1][:160]}" if lines else "")
    check = subprocess.run([sys.executable, "-c", "import xlearn"], env=env, capture_output=True, text=True)
    if check.returncode:
        return "xlearn installed but does not import: " + (check.stderr.strip().splitlines() or [""])[-1][:160]
    print(f"installed xlearn in {time.perf_counter() - started:.0f}s", file=sys.stderr)
    return None


def stage_source(body: str) -> str:
    return "def stage(DATA, HASHED, MODEL, PREDS):\n" + "".join(f"    {line}\n" for line in body.strip().splitlines())


def epoch_rounds(variables: dict, skipped: dict, rounds: int) -> dict:
    """The probe's, xLearn's and fmctr's epochs, interleaved: round after round each
    runs once, in turn, so that a round's three numbers share the machine's minute
    (on this shared machine one stage's rows/s moved 2x between runs minutes apart).
    Each stage's report is its median round, with every round's rows/s in "rounds"."""
    results, runs = {}, {name: [] for name in EPOCH_TRIO}
    if not skipped.get(XLEARN_STAGE):
        # The same hashed rows as text, once, untimed (xLearn's parse is not in its epoch either).
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", TO_LIBSVM, variables["HASHED"], variables["LIBSVM"]], check=True)
        print(f"  wrote the hashed rows as libsvm text for xLearn in {time.perf_counter() - started:.0f}s",
              file=sys.stderr)
    for _ in range(rounds):
        for name in EPOCH_TRIO:
            if skipped.get(name) or any("error" in r for r in runs[name]):
                continue
            own = name in OWN_TIMING
            runs[name].append(run_stage(STAGES[name], variables, warm=not own, fatal=not own))
    for name in EPOCH_TRIO:
        failed = [r["error"] for r in runs[name] if "error" in r]
        if skipped.get(name) or failed:
            results[name] = {"error": skipped.get(name) or failed[0]}
            print(f"  {name}: {results[name]['error']}", file=sys.stderr)
            continue
        speeds = [r["rows_per_s"] for r in runs[name]]
        results[name] = {**sorted(runs[name], key=lambda r: r["rows_per_s"])[len(speeds) // 2], "rounds": speeds}
        print(f"  {name}: {results[name]['rows_per_s']:,.0f} rows/s (rounds: "
              + ", ".join(f"{x:,.0f}" for x in speeds) + ")", file=sys.stderr)
    return results


def run_stage(body: str, variables: dict, warm: bool = True, fatal: bool = True) -> dict:
    """Run a stage in a fresh Python; return its report plus its peak RSS in MiB.
    A stage that fails stops the bench, or with fatal=False returns {"error": why}."""
    assignments = "".join(f"{k} = {v!r}\n" for k, v in {**variables, "WARM": warm}.items())
    code = PRELUDE + assignments + stage_source(body) + RUN
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                                stderr=None if fatal else err, cwd=ROOT)
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        if status != 0:
            if fatal:
                raise SystemExit(f"stage failed (status {status}):\n{code}")
            err.seek(0)
            lines = [line.strip() for line in err.read().decode(errors="replace").splitlines() if line.strip()]
            return {"error": "failed: " + (lines[-1] if lines else f"status {status}")}
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
    parser.add_argument("--whole-rows", type=int, default=10_000_000,
                        help="rows for the whole-process training run (0: skip)")
    parser.add_argument("--epoch-rounds", type=int, default=3,
                        help="interleaved rounds of the probe, xLearn and fmctr epochs (median of per-round ratios)")
    parser.add_argument("--whole-rounds", type=int, default=3,
                        help="interleaved rounds of the in-process and whole-process runs (median of per-round ratios)")
    parser.add_argument("--ref-threads", type=int, default=2, help="threads of the probe and of xLearn")
    parser.add_argument("--no-xlearn", dest="xlearn", action="store_false", help="skip xLearn (and its install)")
    parser.add_argument("--no-accuracy", dest="accuracy", action="store_false",
                        help="skip the check that the cpu engine is as accurate as the torch engine")
    args = parser.parse_args()
    if args.ref_threads != args.threads:
        print(f"note: fmctr trains with {args.threads} threads, the probe and xLearn with {args.ref_threads}",
              file=sys.stderr)

    # Before any timing: the source build takes both cores for minutes.
    skipped = {XLEARN_STAGE: "xLearn: skipped (--no-xlearn)" if not args.xlearn else None,
               PROBE_STAGE: None if PROBE.exists() else f"probe absent: no {PROBE}"}
    if args.xlearn and (why := ensure_xlearn()):
        skipped[XLEARN_STAGE] = f"xLearn not run: {why}"

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
                     "SMALL_DATA": str(small), "SMALL_HASHED": str(work / "small.hashed"),
                     "PROBE": str(PROBE), "REF_THREADS": args.ref_threads, "LIBSVM": str(work / "data.libsvm"),
                     "XLEARN_PARAMS": {**XLEARN_OPTIONS, "k": args.dim, "nthread": args.ref_threads}}
        results = {}
        for name, code in STAGES.items():
            if name in EPOCH_TRIO:
                if name == EPOCH_TRIO[0]:
                    results.update(epoch_rounds(variables, skipped, args.epoch_rounds))
                continue
            if skipped.get(name):
                results[name] = {"error": skipped[name]}
                print(f"  {name}: {skipped[name]}", file=sys.stderr)
                continue
            # The quick stages run --repeats times (the median counts): this machine's
            # load moves single runs by 20-30%. Those measured against the bare read
            # alternate with a read of their own, compared round by round.
            reads, runs = [], []
            for _ in range(args.repeats if name in REPEATED else 1):
                if name in AGAINST_READ:
                    reads.append(run_stage(STAGES[READ_STAGE], variables)["rows_per_s"])
                runs.append(run_stage(code, variables, warm=name not in COLD))
            if "error" in runs[0]:
                results[name] = runs[0]
                print(f"  {name}: {runs[0]['error']}", file=sys.stderr)
                continue
            speeds_in_order = [r["rows_per_s"] for r in runs]
            runs.sort(key=lambda r: r["rows_per_s"])
            results[name] = {**runs[len(runs) // 2], **({"rounds": speeds_in_order, "read_rounds": reads} if reads else {})}
            speeds = ", ".join(f"{r['rows_per_s']:,.0f}" for r in runs)
            spread = f" (runs: {speeds})" if len(runs) > 1 else ""
            print(f"  {name}: {results[name]['rows_per_s']:,.0f} rows/s{spread}", file=sys.stderr)

        # The memory run and the whole-process run: the cpu engine stage (without
        # saving the model) on the dataset repeated by hard links.
        steady_code = STAGES[CPU_STAGE].replace("save(model, MODEL)", "")
        memory_copies = max(1, args.memory_rows // args.rows) if args.memory_rows else 0
        if args.memory_rows:
            big = work / "big.hashed"
            replicate(work / "data.hashed", memory_copies, big)
            results["memory"] = run_stage(steady_code, {**variables, "HASHED": str(big)})
            print(f"  train hashed, {results['memory']['rows']:,} rows: {results['memory']['rows_per_s']:,.0f} rows/s",
                  file=sys.stderr)
        if args.whole_rows:
            whole_copies = max(1, round(args.whole_rows / args.rows))
            if whole_copies == memory_copies:
                whole = work / "big.hashed"
            else:
                whole = work / "whole.hashed"
                replicate(work / "data.hashed", whole_copies, whole)
            # In interleaved rounds, as the epochs: a single pair's ratio moved with
            # which of the two drew the machine's busier minute (0.63x-0.90x).
            runs = {"steady": [], "whole": []}
            for _ in range(args.whole_rounds):
                runs["steady"].append(run_stage(steady_code, {**variables, "HASHED": str(whole)}))
                runs["whole"].append(run_stage(WHOLE_PROCESS, {**variables, "HASHED": str(whole),
                                                               "MODEL": str(work / "whole.fm")}, warm=False))
            for key, done in runs.items():
                speeds = [r["rows_per_s"] for r in done]
                results[key] = {**sorted(done, key=lambda r: r["rows_per_s"])[len(done) // 2], "rounds": speeds}
                print(f"  {key} ({results[key]['rows']:,} rows): {results[key]['rows_per_s']:,.0f} rows/s (rounds: "
                      + ", ".join(f"{x:,.0f}" for x in speeds) + ")", file=sys.stderr)

        def speed(name: str) -> float | None:
            return results[name]["rows_per_s"] if name in results and "error" not in results[name] else None

        read, torch_train = speed("read (bare polars.read_csv)"), speed("train hashed, torch autograd + Adagrad, batch 4096 (baseline)")
        # stage -> its ratios: (baseline label, baseline rows/s, target ratio or None);
        # a stage's first ratio shares its row, the others get rows of their own.
        ratios = {
            "preprocess TSV -> hashed": [("bare read", read, 1.0)],
            CPU_STAGE: [("torch baseline", torch_train, None),
                        ("bare probe", speed(PROBE_STAGE), 1.0),
                        ("xLearn FM epoch", speed(XLEARN_STAGE), 1.0)],
            "train from raw TSV (hash + 1 epoch)": [("torch baseline", torch_train, None)],
            "train hashed, 2 ranks x 1 thread (torchrun, gloo)": [("1 process x 1 thread",
                                                                   speed("train hashed, 1 process x 1 thread"), None)],
            "predict TSV -> CSV": [("bare read", read, 1.0)],
            "whole": [("in-process steady state", speed("steady"), 0.7)],
        }
        labels = {
            PROBE_STAGE: f"{PROBE_STAGE}, {args.ref_threads} threads",
            XLEARN_STAGE: f"{XLEARN_STAGE[:-1]}, k={args.dim}, {args.ref_threads} threads)",
            "memory": f"train hashed, {results.get('memory', {}).get('rows', 0):,} rows (1 epoch)",
            "steady": f"train hashed, {results.get('steady', {}).get('rows', 0):,} rows, cpu engine in-process steady state",
            "whole": f"train {results.get('whole', {}).get('rows', 0):,} hashed rows as a whole process "
                     f"(`python -m fmctr train`, start to exit, model written)",
        }

        def ratio_cells(name: str, label: str, base: float | None, target: float | None) -> tuple[str, str]:
            """The ratio of stage `name` to its baseline, and its target's verdict. Stages
            run in interleaved rounds (EPOCH_TRIO) are compared round by round: the
            median of the per-round ratios."""
            mine, goal = speed(name), f">= {target:.1f}x: " if target else ""
            if mine is None or base is None:
                return (f"n/a ({label} not measured)" if base is None else "n/a"), (goal + "not measured" if goal else "")
            ratio, shown = mine / base, ""
            paired = [results.get(n, {}).get("rounds") for n in (name, baseline_of.get(label))]
            if label == "bare read" and results.get(name, {}).get("read_rounds"):
                paired = [results[name]["rounds"], results[name]["read_rounds"]]
            if all(paired):
                per_round = [a / b for a, b in zip(*paired)]
                ratio = statistics.median(per_round)
                shown = " (rounds: " + ", ".join(f"{x:.2f}" for x in per_round) + ")"
            return f"{ratio:.2f}x {label}{shown}", (goal + ("met" if ratio >= target else "missed") if goal else "")

        baseline_of = {"bare probe": PROBE_STAGE, "xLearn FM epoch": XLEARN_STAGE, "in-process steady state": "steady"}

        print(f"\n| stage ({args.rows:,} rows, k={args.dim}, bits {args.bits}, {args.threads} threads) | rows/s | "
              f"vs baseline (same run) | peak RSS | first call ({WARM_ROWS // 1000}k rows) or note | target |")
        print("|---|---:|---:|---:|---:|---|")
        for name, r in results.items():
            label = labels.get(name, name)
            if "error" in r:
                print(f"| {label} | {r['error']} | | | | |")
            else:
                first = r["note"] if r.get("note") else "cold" if r["first_call"] is None else f"{r['first_call']:.2f} s"
                if r.get("first_call") is not None and r.get("note"):
                    first = f"{r['first_call']:.2f} s ({r['note']})"
                extra = ""
                if name == "memory" and CPU_STAGE in results:
                    extra = f"RSS {r['rss_mib'] / results[CPU_STAGE]['rss_mib']:.2f}x the {args.rows:,}-row run"
                cells = ratio_cells(name, *ratios[name][0]) if name in ratios else (extra, "")
                print(f"| {label} | {r['rows_per_s']:,.0f} | {cells[0]} | {r['rss_mib']:,.0f} MiB | {first} | {cells[1]} |")
            for more in ratios.get(name, [])[1 if "error" not in r else 0:]:
                cells = ratio_cells(name, *more)
                print(f"| {label}, same run | | {cells[0]} | | | {cells[1]} |")
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
