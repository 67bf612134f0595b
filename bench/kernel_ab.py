"""The cpu engine's training kernel against other versions of itself and the bare probe,
in ONE process, so that every arm runs under the same machine load (on a shared machine
separate processes minutes apart moved by 2x).

    git show HEAD~2:fmctr/models/kernel.py > /tmp/old_kernel.py
    python bench/kernel_ab.py HASHED --threads 2 --rounds 4 old=/tmp/old_kernel.py new=fmctr/models/kernel.py probe

Each arm is NAME=PATH to a kernel.py (loaded as a module of its own, compiled into a
fresh numba cache folder, not beside the source) or `probe`
(../shared/tools/fm_probe_hashed.py, run in this process: it times nothing here, its
epoch function is called). Every kernel
arm gets its own engine (the default options, dim 16) and the same rows: all of HASHED,
in one shuffled order, gathered once (so the engine's streaming and gathering are not
timed - the kernel alone is; each is compiled first). Kernels that take an empty bitmap
(`if len(seen)`) get every feature met in advance and train with it, as default
training does (CpuEngine.meet_in_advance); older ones check each feature. Pass 1 warms (the tables fault in; the probe's are already
touched) and prints a digest of the weights - kernel arms that keep every bit of
training print the same digest at --threads 1. Then each round runs one pass per arm,
in turn. Prints rows/s per round, the median, and each arm's per-round ratio to the
first arm (median)."""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

PROBE = Path(__file__).resolve().parent.parent.parent / "shared/tools/fm_probe_hashed.py"
BLOCK = 1 << 16


def kernel_arm(name: str, path: str, rows, order, threads: int):
    import numpy as np

    from fmctr.hashing.tokens import is_ones
    from fmctr.tables import read_only as _read_only
    from fmctr.models.kinds import kind_of
    from fmctr.training.config import TrainConfig

    spec = importlib.util.spec_from_file_location(f"kernel_ab_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # (numba's cache pickles the module by name)
    spec.loader.exec_module(module)
    cfg = TrainConfig.from_options(dim=16, epochs=1, threads=threads).resolved(
        engine="cpu", device="cpu", rows=len(rows), validation=False)
    kind = kind_of(cfg.kind)
    engine = kind.engine(kind.zeros(1 << 22, 16), cfg, engine="cpu", device="cpu", threads=threads, optimizer=None)
    engine.set_counts(np.bincount(rows.indices, minlength=1 << 22), len(rows))
    gathered, identity = engine._gather(rows, order)
    max_row = int(np.diff(gathered.offsets).max())
    # Kernels from before the bitmap (kernel._first_meeting) index a bool per feature:
    # given the bitmap they would write past its end.
    seen = engine.seen_bits if hasattr(module, "_first_meeting") else np.zeros(1 << 22, np.bool_)
    if "if len(seen)" in Path(path).read_text():  # (kernels that take an empty bitmap: as training does)
        engine.meet_in_advance(np.bincount(rows.indices, minlength=1 << 22))
        seen = seen[:0]

    # Kernels that take no values for one-hot rows (kernel._value) get none, as training gives them.
    values = gathered.values[:0] if "def _value(" in Path(path).read_text() and is_ones(gathered.values) \
        else gathered.values

    def block(lo: int, hi: int) -> float:
        arrays = (gathered.indices, values, gathered.offsets, gathered.labels, identity[lo:hi])
        return module.train_rows(
            *map(_read_only, arrays), cfg.batch_size, threads,
            engine.w.bias, engine.w.linear, engine.table, 16,
            engine.bias_state, engine.linear_state1, engine.linear_state2, engine.factor_state2,
            seen, max_row, engine.code, engine.lr, cfg.l2_linear, cfg.l2_factors, cfg.eps, 0.9, 0.999,
            engine.counters, cfg.seed, cfg.init_std, cfg.adagrad_init, engine.ftrl, engine.inv_counts, engine.priors)

    def one_pass() -> float:
        return sum(block(lo, min(lo + BLOCK, len(gathered))) for lo in range(0, len(gathered), BLOCK))

    block(0, 0)  # compiled (or loaded from the cache) before any timing
    def digest() -> str:
        return hashlib.sha256(engine.table.tobytes() + engine.meta.tobytes()).hexdigest()[:12]

    return one_pass, digest


def probe_arm(hashed: str, threads: int):
    """The probe's script run here (it loads its rows and times one epoch of its own),
    then its epoch function called once per round."""
    space = {"__name__": "probe"}
    argv, sys.argv = sys.argv, ["probe", hashed, "--threads", str(threads)]
    try:
        exec(compile(PROBE.read_text(), str(PROBE), "exec"), space)
    finally:
        sys.argv = argv
    n = len(space["y"])
    return (lambda: space["epoch"](space["X"], space["O"], space["y"], space["T"], space["G"], 0.03, threads, n)), (
        lambda: "-")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("hashed")
    parser.add_argument("arms", nargs="+", help="NAME=path/to/kernel.py, or probe")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    # A cache of its own: numba's cache names the module that compiled a file, and the
    # arms load kernel files under names of their own.
    os.environ["NUMBA_CACHE_DIR"] = tempfile.mkdtemp(prefix="kernel-ab-")
    import numpy as np

    from fmctr.datasets.hashed import open_hashed
    from fmctr.hashing.tokens import Rows
    from fmctr.models.runtime import set_threads

    dataset = open_hashed(args.hashed)
    rows = Rows.concat([dataset.read_part(i) for i in range(len(dataset.parts))])
    order = np.random.default_rng(0).permutation(len(rows)).astype(np.int64)
    threads = set_threads(args.threads)
    arms = {}
    for arm in args.arms:
        name, _, path = arm.partition("=")
        arms[name] = probe_arm(args.hashed, threads) if name == "probe" else kernel_arm(name, path, rows, order, threads)
    for name, (one_pass, digest) in arms.items():
        started = time.perf_counter()
        one_pass()
        print(f"pass 1 {name}: {len(rows) / (time.perf_counter() - started):,.0f} rows/s, weights {digest()}",
              flush=True)
    speeds: dict[str, list[float]] = {name: [] for name in arms}
    for number in range(args.rounds):
        for name, (one_pass, _) in arms.items():
            started = time.perf_counter()
            one_pass()
            speeds[name].append(len(rows) / (time.perf_counter() - started))
        print(f"round {number + 1}: " + "  ".join(f"{n} {v[-1]:,.0f}" for n, v in speeds.items()), flush=True)
    first = next(iter(speeds))
    for name, values in speeds.items():
        ratio = statistics.median(a / b for a, b in zip(values, speeds[first]))
        print(f"{name}: median {statistics.median(values):,.0f} rows/s ({threads} threads), {ratio:.2f}x {first}")


if __name__ == "__main__":
    main()
