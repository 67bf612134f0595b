"""fmctr's accuracy on planted-FM data, against a peer-like baseline and the ceiling.

    python bench/accuracy.py                      # 1M train / 100k valid / 200k test rows
    python bench/accuracy.py --rows 200000        # smaller, quicker
    python bench/accuracy.py --work /tmp/acc      # keep the data there and reuse it next time
    python bench/accuracy.py --only defaults --set lr=0.05 --set dim=16   # try a setting

Data: sample_data/generate.py's Criteo-like generator (13 numeric + 26 categorical
fields, Zipf-distributed vocabularies of up to --vocab values, a planted FM), one
sample split in file order into train, valid and test. It prints, on the test rows:

- oracle: the planted model's own probabilities;
- ceiling: the planted model restricted to the tokens seen at least 10 times in the
  training rows (a model can learn little about rarer ones);
- peer-like baseline: what pytorch-fm and DeepCTR-Torch do - Adam, lr 1e-3, batch
  4096, 2 epochs, no validation (fmctr's torch engine, k=16);
- fmctr with its defaults and `--valid` (early stopping on the validation rows);

then per-epoch validation and test AUC of each run, and how much of the gap between
baseline and ceiling fmctr closes (the target is at least half).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time

from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "sample_data"))

import generate  # noqa: E402

from fmctr.hashing.tokens import HashSpec  # noqa: E402
from fmctr.metrics import auc  # noqa: E402
from fmctr.commands.jobs import evaluate_model, preprocess, train_model  # noqa: E402
from fmctr.reading.schema import build_spec  # noqa: E402
from fmctr.models.kinds import kind_of  # noqa: E402
from fmctr.training.config import TrainConfig  # noqa: E402
from fmctr.training.validation import scores  # noqa: E402
from fmctr.datasets.batches import DatasetRows  # noqa: E402
from fmctr import dataset  # noqa: E402

RUNS = {
    "baseline": (TrainConfig.from_options(dim=16, epochs=2, engine="torch", device="cpu", optimizer="adam", lr=1e-3,
                             batch_size=4096, l2_linear=0.0, l2_factors=0.0, l2_all_linear=0.0, l2_all_factors=0.0), False),
    "defaults": (TrainConfig.from_options(), True),
}


def make_data(work: Path, rows: int, valid: int, test: int, vocab: int, seed: int, min_count: int, bits: int) -> dict:
    """Write train/valid/test TSVs and hashed copies into `work`; return the truth's AUCs."""
    summary_path = work / "truth.json"
    if summary_path.exists():
        summary = json.loads(summary_path.read_text())
        # (the hashed copies' format version too: a new one means hashing changed)
        if summary["config"] == [rows, valid, test, vocab, seed, min_count, bits, dataset.FORMAT_VERSION]:
            return summary
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    g = generate.criteo_like(rows + valid + test, seed=seed, vocab_max=vocab)
    lines = g.text.splitlines(keepends=True)
    parts = {"train": slice(0, rows), "valid": slice(rows, rows + valid), "test": slice(rows + valid, rows + valid + test)}
    for name, part in parts.items():
        (work / f"{name}.tsv").write_bytes(b"".join(lines[part]))
    del lines
    counts = np.bincount(g.truth["ids"][parts["train"]].ravel(), minlength=len(g.truth["w"]))
    test_labels = g.labels[parts["test"]]
    summary = {
        "config": [rows, valid, test, vocab, seed, min_count, bits, dataset.FORMAT_VERSION],
        "oracle_auc": auc(test_labels, g.probabilities[parts["test"]]),
        "ceiling_auc": auc(test_labels, generate.truth_logits(g.truth, parts["test"], counts >= min_count)),
        "linear_truth_auc": auc(test_labels, generate.truth_logits({**g.truth, "v": 0 * g.truth["v"]}, parts["test"])),
        "distinct_tokens_in_train": int((counts > 0).sum()),
        "tokens_seen_min_count": int((counts >= min_count).sum()),
    }
    del g
    spec = build_spec(preset="criteo")
    for name in parts:
        shutil.rmtree(work / f"{name}.hashed", ignore_errors=True)
        preprocess(str(work / f"{name}.tsv"), work / f"{name}.hashed", spec=spec, hashing=HashSpec(bits=bits))
    summary_path.write_text(json.dumps(summary, indent=2))
    print(f"generated and hashed {rows + valid + test:,} rows in {time.perf_counter() - started:.0f}s", file=sys.stderr)
    return summary


def run(name: str, cfg: TrainConfig, use_valid: bool, work: Path) -> dict:
    test = DatasetRows(dataset.open_hashed(work / "test.hashed"))
    test_labels = test.labels()
    per_epoch = []

    def on_epoch(record, weights):
        test_auc = auc(test_labels, scores(kind_of("fm"), weights, test))
        valid_auc = record.valid["auc"] if record.valid else None
        per_epoch.append({"epoch": record.epoch, "valid_auc": valid_auc, "test_auc": test_auc,
                          "rows_per_s": record.rows_per_s})
        shown = f"valid AUC {valid_auc:.4f}  " if valid_auc is not None else ""
        print(f"  {name} epoch {record.epoch}: {shown}test AUC {test_auc:.4f}  "
              f"({record.rows_per_s:,.0f} rows/s)", file=sys.stderr)

    started = time.perf_counter()
    model, result = train_model(str(work / "train.hashed"), spec=None, hashing=None, cfg=cfg,
                                valid=str(work / "valid.hashed") if use_valid else None, on_epoch=on_epoch)
    seconds = time.perf_counter() - started
    final = evaluate_model(str(work / "test.hashed"), model)
    return {"name": name, "test": final, "best_epoch": result.best_epoch, "epochs": per_epoch, "seconds": seconds}


def parse_setting(text: str) -> tuple[str, object]:
    key, _, value = text.partition("=")
    known = TrainConfig.from_options().options()
    if key not in known:
        raise SystemExit(f"--set {text}: unknown TrainConfig field (known: {', '.join(known)})")
    current = getattr(TrainConfig.from_options(), key)
    if current is not None:
        return key, type(current)(value)
    for kind in (int, float, str):
        try:
            return key, kind(value)
        except ValueError:
            pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="training rows")
    parser.add_argument("--valid", type=int, default=100_000)
    parser.add_argument("--test", type=int, default=200_000)
    parser.add_argument("--vocab", type=int, default=1_000_000, help="largest categorical vocabulary")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-count", type=int, default=10, help="the ceiling knows tokens seen this often")
    parser.add_argument("--bits", type=int, default=22, help="hash space 2^bits")
    parser.add_argument("--work", type=Path, help="keep the data here (reused when it matches)")
    parser.add_argument("--only", action="append", choices=list(RUNS), help="run only these")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="change a TrainConfig field of the fmctr run(s)")
    args = parser.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="fmctr-accuracy-"))
    try:
        truth = make_data(work, args.rows, args.valid, args.test, args.vocab, args.seed, args.min_count, args.bits)
        print(f"oracle AUC {truth['oracle_auc']:.4f}, ceiling (tokens seen >= {args.min_count}) "
              f"{truth['ceiling_auc']:.4f}, linear part of the truth only {truth['linear_truth_auc']:.4f}", file=sys.stderr)
        settings = dict(parse_setting(s) for s in args.set)
        results = {}
        for name in args.only or list(RUNS):
            cfg, use_valid = RUNS[name]
            if name != "baseline":
                cfg = cfg.with_options(**settings)
            results[name] = run(name, cfg, use_valid, work)
        print(f"\n| model ({args.rows:,} train rows, test {args.test:,}) | test AUC | test logloss | epochs (best) |")
        print("|---|---:|---:|---:|")
        print(f"| oracle (planted model) | {truth['oracle_auc']:.4f} | | |")
        print(f"| ceiling (planted model, tokens seen >= {args.min_count}) | {truth['ceiling_auc']:.4f} | | |")
        for name, r in results.items():
            print(f"| {name} | {r['test']['auc']:.4f} | {r['test']['logloss']:.4f} | {len(r['epochs'])} ({r['best_epoch']}) |")
        if "baseline" in results and "defaults" in results:
            base, ours = results["baseline"]["test"]["auc"], results["defaults"]["test"]["auc"]
            closed = (ours - base) / (truth["ceiling_auc"] - base)
            print(f"\nfmctr defaults close {closed:.0%} of the gap between the baseline ({base:.4f}) "
                  f"and the ceiling ({truth['ceiling_auc']:.4f}); the target is 50%.")
        print("\nper epoch:")
        for name, r in results.items():
            for e in r["epochs"]:
                v = f"{e['valid_auc']:.4f}" if e["valid_auc"] is not None else "-"
                print(f"  {name:9s} epoch {e['epoch']:2d}  valid AUC {v}  test AUC {e['test_auc']:.4f}")
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
