"""Training gives the same model bits as before the training core was restructured.

Each case trains through the command line at --threads 1 (deterministic) and hashes
what the model file holds: weights, optimizer state and the per-epoch losses and
validation metrics. The digests in golden_digests.json were made by the code before
the restructuring (`python tests/test_golden.py --write`); a change that moves any bit
of any case fails here.

The kernels compile with fast-math for the host CPU, and there the last bits follow the
CPU: the same code gave other digests on an AMD EPYC than on the Sapphire Rapids where
the digests were first made (8b1d911; 5 of 6 cases moved, the code unchanged). So each
case trains with numba's code generation for a generic x86-64 (NUMBA_CPU_NAME=generic:
no FMA, no AVX), which any x86-64 CPU runs to the same bits. The digests are
those of 580ee9b so built, the last code whose native bits were checked equal to the
first digests (on Sapphire Rapids); a case may hold more than one digest, each the same
code's bits under another toolchain.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "sample_data"
DIGESTS = Path(__file__).with_name("golden_digests.json")

CRITEO = ["--preset", "criteo"]
MOVIES = ["--multi", "genres", "--numeric", "price", "--ignore", "request_id", "--numeric-mode", "bucket",
          "--no-row-norm"]  # (the rules the digests were made with)
CASES = {
    "criteo defaults, 2 epochs": (DATA / "criteo_like_train.tsv.gz", [*CRITEO, "--epochs", "2"]),
    "criteo --valid, early stopping and rate decay": (
        DATA / "criteo_like_train.tsv.gz", [*CRITEO, "--valid", str(DATA / "criteo_like_test.tsv"), "--epochs", "4",
                                            "--patience", "1", "--metric", "auc"]),
    "criteo --valid-every, dim 16": (
        DATA / "criteo_like_train.tsv.gz", [*CRITEO, "--valid-fraction", "0.2", "--valid-every", "5000",
                                            "--epochs", "2", "--dim", "16"]),
    "movies adam, batch 16": (DATA / "movies_train.csv", [*MOVIES, "--optimizer", "adam", "--batch-size", "16",
                                                          "--epochs", "3"]),
    "movies ftrl, l1, no factors": (DATA / "movies_train.csv", [*MOVIES, "--optimizer", "ftrl", "--l1", "0.5",
                                                                "--dim", "0", "--epochs", "2"]),
    "criteo --min-count, --l2-all": (DATA / "criteo_like_train.tsv.gz", [*CRITEO, "--min-count", "3", "--l2-all",
                                                                          "1e-4", "--epochs", "1"]),
}


def model_digest(path: Path) -> str:
    """SHA-256 over everything a model file holds that training decides (not timings)."""
    from safetensors.numpy import load_file

    tensors = load_file(str(path))
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        meta = json.loads(json.loads(f.read(n))["__metadata__"]["fmctr"])
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(np.ascontiguousarray(tensors[name]).tobytes())
    history = [{k: e[k] for k in ("epoch", "train_logloss", "valid", "lr", "checks")} for e in meta["training"]["history"]]
    for e in history:  # a check's record carries timings nowhere, but be explicit
        e["checks"] = [{k: v for k, v in c.items()} for c in e["checks"] or []]
    h.update(json.dumps({"history": history, "best_epoch": meta["training"]["best_epoch"]}, sort_keys=True).encode())
    return h.hexdigest()


def train_digest(tmp: Path, data: Path, flags: list[str]) -> str:
    model = tmp / "m.fm"
    env = {**os.environ, "NUMBA_CPU_NAME": "generic"}  # (bits that do not follow the CPU: see above)
    env.pop("NUMBA_CPU_FEATURES", None)
    subprocess.run([sys.executable, "-m", "fmctr", "train", str(data), "-o", str(model), "--threads", "1", "-q",
                    *flags], check=True, cwd=tmp, env=env)
    return model_digest(model)


@pytest.mark.parametrize("case", sorted(CASES))
def test_same_model_bits_as_before_the_restructuring(case, tmp_path):
    data, flags = CASES[case]
    known = json.loads(DIGESTS.read_text())[case]
    assert train_digest(tmp_path, data, flags) in ([known] if isinstance(known, str) else known)


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        digests = {case: train_digest(Path(tmp), *CASES[case]) for case in sorted(CASES)}  # (one digest each)
    DIGESTS.write_text(json.dumps(digests, indent=2) + "\n")
    print(json.dumps(digests, indent=2))
