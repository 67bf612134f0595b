"""Fuzzing the files fmctr reads: real files made from sample_data (a model, a
checkpoint of an interrupted run, a hashed dataset), damaged at random with a fixed
seed, then scored, evaluated and trained from. Each run must end with exit 0 and a
sound result, or exit 1 and exactly one `error:` line - never a crash, a traceback
or exit 2. In-process: every array is checked before a kernel can touch it."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest

from conftest import MOVIES_TEST, invoke
from damage import edit_manifest, join, part, split
from test_untrusted_files import files  # noqa: F401  (the fixture)

RNG_SEED = 16


def flip_bits(data: bytes, rng, count: int = 1) -> bytes:
    out = bytearray(data)
    for at in rng.integers(0, len(out), count):
        out[at] ^= 1 << int(rng.integers(0, 8))
    return bytes(out)


def header_edit(data: bytes, rng) -> bytes:
    """A random tensor's dtype or shape changed in the safetensors header."""
    header, body = split(data)
    name = rng.choice(sorted(k for k in header if k != "__metadata__"))
    if rng.random() < 0.5:
        header[name]["dtype"] = str(rng.choice(["I32", "F64", "I64", "U8", "F16"]))
    else:
        header[name]["shape"] = [int(x) for x in rng.integers(0, 4, rng.integers(0, 3))]
    return join(header, body)


def model_mutations(model: bytes, rng) -> list[tuple[str, bytes]]:
    cases = [(f"truncated at {n}", model[:n]) for n in rng.integers(0, len(model), 6)]
    cases += [(f"bit flips {k}", flip_bits(model, rng, 1 + k % 3)) for k in range(8)]
    cases += [(f"header edit {k}", header_edit(model, rng)) for k in range(5)]
    return cases


def sound(result) -> bool:
    """Exit 0 with a result that looks right, or one error line with exit 1."""
    if result.exit_code == 0:
        if result.stdout.startswith("{"):
            metrics = json.loads(result.stdout)
            return 0 <= metrics["auc"] <= 1 and math.isfinite(metrics["logloss"])
        return True
    lines = result.stderr.splitlines()
    return result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.stderr


def check(results: list[tuple[str, object]]) -> None:
    bad = [f"{name}: exit {r.exit_code}, {r.stderr[-300:]!r}" for name, r in results if not sound(r)]
    assert bad == []


def test_damaged_models_and_checkpoints(tmp_path, files):  # noqa: F811
    hashed, model, ckpt = files
    rng = np.random.default_rng(RNG_SEED)
    results = []
    for name, data in model_mutations(model.read_bytes(), rng):
        path = tmp_path / "m.fm"
        path.write_bytes(data)
        results.append((f"eval, model {name}", invoke("eval", hashed, "-m", path, "--json")))
    for name, data in model_mutations(ckpt.read_bytes(), rng)[::3]:
        path = tmp_path / "c.ckpt"
        path.write_bytes(data)
        results.append((f"warm start, checkpoint {name}",
                        invoke("train", MOVIES_TEST, "-m", path, "-o", tmp_path / "w.fm", "-q", "--epochs", "1")))
        path.write_bytes(data)
        results.append((f"resume, checkpoint {name}", invoke("train", "--resume", path, "-o", tmp_path / "r.fm", "-q")))
    check(results)


def dataset_mutations(rng):
    """(name, edit(dataset dir)) pairs: offsets, indices, truncated parts, manifest fields."""
    def array_edit(array, fn):
        def edit(d):
            a = np.load(part(d, array))
            np.save(part(d, array), fn(a))
        return edit

    def set_at(low, high):
        def fn(a):
            a[rng.integers(0, len(a))] = rng.integers(low, high)
            return a
        return fn

    def truncate(array):
        def edit(d):
            raw = part(d, array).read_bytes()
            part(d, array).write_bytes(raw[: int(rng.integers(0, len(raw)))])
        return edit

    cases = [(f"offset edit {k}", array_edit("offsets", set_at(-10, 10**6))) for k in range(4)]
    cases += [(f"index edit {k}", array_edit("indices", set_at(-(2**31), 2**31 - 1))) for k in range(4)]
    cases += [(f"truncated {a}", truncate(a)) for a in ("indices", "offsets", "labels")]
    cases += [(f"part name {n!r}", lambda d, n=n: edit_manifest(d, lambda m: m["parts"][0].update(name=n)))
              for n in ("../x/part-00000", "/etc/passwd", "part-00000/../part-00000")]
    cases += [(f"manifest rows {v!r}", lambda d, v=v: edit_manifest(d, lambda m: m["parts"][0].update(rows=v)))
              for v in (-1, 10**12, "5000")]
    cases += [(f"manifest bit flips {k}", lambda d: (d / "manifest.json").write_bytes(
        flip_bits((d / "manifest.json").read_bytes(), rng, 2))) for k in range(3)]
    return cases


def test_damaged_datasets(tmp_path, files):  # noqa: F811
    hashed, model, _ = files
    rng = np.random.default_rng(RNG_SEED)
    results = []
    for number, (name, edit) in enumerate(dataset_mutations(rng)):
        bad = tmp_path / f"d{number}.hashed"
        shutil.copytree(hashed, bad)
        edit(bad)
        results.append((f"eval, {name}", invoke("eval", bad, "-m", model, "--json")))
        results.append((f"warm start, {name}", invoke("train", bad, "-m", model, "-o", tmp_path / "w.fm", "-q", "--epochs", "1")))
    check(results)
