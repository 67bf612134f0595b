"""The four jobs as plain functions: preprocess and train here; evaluate and predict in
fmctr.commands.scoring (and importable from here too), which loads nothing of training.

Each takes paths and options, returns values, and prints nothing; warnings go to an
optional `log` callable. The CLI is a thin layer over these.
"""

from __future__ import annotations

import glob
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np

from fmctr import __version__

from fmctr.datasets import hashed as dataset

from fmctr.atomic import Target, atomic_dir, check_output, scratch_dir
from fmctr.datasets.batches import DatasetRows
from fmctr.errors import BadInput, BadModel, BadOptions
from fmctr.datasets.inputs import Input, Log, fingerprint, open_input
from fmctr.datasets.inputs import silent as _silent
from fmctr.hashing.tokens import HashSpec
from fmctr.models.modelfile import Model, is_model_file, load, save
from fmctr.hashing.rare import RareMap
from fmctr.reading.read import display_name
from fmctr.reading.schema import SchemaSpec
from fmctr.training.checkpoints import Checkpoints
from fmctr.training import selection
from fmctr.training.config import DEFAULT_EPOCHS, TrainConfig
from fmctr.training.distributed import ReplicaSync
from fmctr.training.guards import check_memory
from fmctr.training.loop import Start, TrainResult, train
from fmctr.training.state import Resume
from fmctr.commands.scoring import PREDICTIONS, PROBABILITY, evaluate_model, predict  # noqa: F401 (every job from here)

def preprocess(paths: str | Sequence[str], output: Target, *, spec: SchemaSpec, hashing: HashSpec,
               min_count: int | None = None, force: bool = False) -> list[dataset.HashedDataset]:
    """Hash raw data once into a dataset directory that train/eval read directly.
    Several inputs give one shard per input, `output/shard-NNNNN.hashed`: shards
    hashed anywhere (other processes, other machines) can be used together, since
    hashing is stateless (but for `auto` numeric columns' standardised values, fitted
    on the first input: the other inputs of one command take its schema; shards made
    by separate commands must agree, or use --numeric-mode fine). With `min_count`, a counting pass over every input finds
    the frequent values and rare ones are mapped to their field's rare token; the
    frequent set is stored with the data, and a model trained on it keeps it. An
    existing `output` is replaced only if it is a hashed dataset (or `force`)."""
    paths = [paths] if isinstance(paths, str) else list(paths)
    paths = [m for p in paths for m in _expand(p)]
    output = check_output(output, dataset.DATASET, inputs=paths, force=force)
    for path in paths:
        if dataset.is_hashed(path):
            raise BadOptions(f"{path}: is already a hashed dataset")
    if min_count is not None and min_count < 1:
        raise BadOptions(f"--min-count must be at least 1, got {min_count}")
    schemas = []  # the first input's: every other input is hashed with it

    def opened(number: int) -> Input:
        data = open_input(paths[number], spec=spec if not schemas else None, schema=schemas[0] if schemas else None,
                          hashing=hashing, require_label=True)
        schemas[:] = [data.schema]
        return data

    with scratch_dir() as work:
        if min_count:
            from fmctr.hashing.rare import check_schema

            inputs = (opened(n) for n in range(len(paths)))
            first = next(inputs)
            check_schema(first.schema)  # before any hashing
            hashed = [_as_dataset(first, Path(work) / "0")]
            hashed += [_as_dataset(data, Path(work) / f"{n}") for n, data in enumerate(inputs, 1)]
            rare = RareMap.count(DatasetRows(hashed), min_count, hashed[0].schema, hashing)

            def shard(number: int, target: Path) -> dataset.HashedDataset:
                return _remapped([hashed[number]], rare, target)
        else:

            def shard(number: int, target: Path) -> dataset.HashedDataset:
                return _as_dataset(opened(number), target)

        if len(paths) == 1:
            return [shard(0, output)]
        shards = []
        with atomic_dir(output) as tmp:
            for number in range(len(paths)):
                shards.append(shard(number, tmp / f"shard-{number:05d}.hashed"))
            listing = [{"shard": s.path.name, "input": display_name(p), "rows": s.rows} for s, p in zip(shards, paths)]
            (tmp / dataset.SHARDS).write_text(json.dumps({"shards": listing}, indent=2) + "\n")
    return [dataset.open_hashed(Path(output.name) / s.path.name) for s in shards]


def _expand(path: str) -> list[str]:
    """A quoted glob ('logs/*.tsv.gz') names its matches; anything else itself."""
    if path != "-" and any(ch in path for ch in "*?[") and not Path(path).exists():
        matches = sorted(glob.glob(path))
        if not matches:
            raise BadInput(f"{path}: no file matches")
        return matches
    return [path]


def _as_dataset(data: Input, path: Target) -> dataset.HashedDataset:
    return dataset.write((rows for rows, _ in data.parts), path, data.schema, data.hashing)


@dataclass
class Job:
    """What a training run was asked to do, kept in checkpoints so that
    `fmctr train --resume` needs nothing else. Paths are stored absolute, with a
    fingerprint of the data (fmctr.datasets.inputs.fingerprint) to check on resume."""

    input: str
    valid: str | None
    valid_fraction: float | None
    output: str | None
    config: dict
    fingerprints: dict | None = None  # input, valid: what the data looked like

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def of_run(cls, path: str, valid: str | None, valid_fraction: float | None, output: str | None,
               cfg: TrainConfig) -> Job:
        return cls(_absolute(path), _absolute(valid), valid_fraction, _absolute(output), asdict(cfg),
                   {"input": fingerprint(path), "valid": fingerprint(valid) if valid is not None else None})

    @classmethod
    def from_checkpoint(cls, job, checkpoint: Path) -> Job:
        """The job a checkpoint holds, read as untrusted: relative paths (older
        checkpoints) are taken from the checkpoint's directory, and the model is only
        written beside the checkpoint, and over nothing but a model file: a stored output
        elsewhere needs -o."""
        paths = ("input", "valid", "output")
        if not isinstance(job, dict) or not all(job.get(k) is None or isinstance(job[k], str) for k in paths) \
                or not isinstance(job.get("config"), dict) or not isinstance(job.get("fingerprints") or {}, dict) \
                or not (job.get("valid_fraction") is None or isinstance(job["valid_fraction"], (int, float))):
            raise BadModel(f"{checkpoint}: malformed checkpoint (the training job)")
        here = checkpoint.resolve().parent
        found = {k: job.get(k) if job.get(k) in (None, "-") else str(here / job[k]) for k in paths}
        output = found["output"]
        if output is not None and (Path(output).resolve().parent != here
                                   or Path(output).exists() and not is_model_file(output)):
            found["output"] = None  # the CLI asks for -o
        return cls(found["input"] or "-", found["valid"], job.get("valid_fraction"), found["output"], job["config"],
                   job.get("fingerprints"))


def resume_job(checkpoint: Path, threads: int | None) -> tuple[Model, Job, TrainConfig]:
    """A checkpoint, the job it holds, and the job's configuration (threads as now asked)."""
    base = load(checkpoint)
    job = base.training.get("resume")
    if job is None or base.checkpoint is None or base.optimizer is None:
        raise BadOptions(f"{checkpoint}: not a checkpoint (a model file continues with --model)")
    job = Job.from_checkpoint(job, Path(checkpoint))
    try:
        cfg = TrainConfig.from_dict(job.config)
    except (BadOptions, TypeError) as e:
        raise BadModel(f"{checkpoint}: malformed checkpoint ({e})") from None
    return base, job, cfg.with_options(threads=threads if threads is not None else cfg.threads).check()


def _absolute(path: str | None) -> str | None:
    return path if path in (None, "-") else os.path.abspath(path)


def _check_resumed_data(resume: Model, path: str, valid: str | None, rows: int) -> None:
    """Refuse to resume on other data than the run started on (by fingerprint before
    reading, by the number of training rows after)."""
    stored = (resume.training.get("resume") or {}).get("fingerprints") or {}
    for what, given in (("input", path), ("valid", valid)):
        now = fingerprint(given) if given is not None else None
        if stored.get(what) is not None and now is not None and now != stored[what]:
            raise BadInput(f"{given}: not the data the checkpoint's run started on (it has changed, or it is "
                           f"another file); resume with that data")
    started = resume.training.get("rows")
    if rows is not None and rows != started:
        count = f"{started:,}" if isinstance(started, int) else repr(started)
        raise BadInput(f"{path}: {rows:,} training rows, but the checkpoint's run started on {count}; "
                       "resume with that data")


def check_warm_start(model: Model, cfg: TrainConfig, hashing: HashSpec | None, name: str) -> None:
    """A model to continue from must agree with the options given now."""
    if hashing is not None and hashing != model.hashing:
        raise BadOptions(f"{name} hashes with bits={model.hashing.bits} seed={model.hashing.seed}; "
                         f"--bits {hashing.bits} --hash-seed {hashing.seed} conflict with it")
    if cfg.dim != model.weights.dim:
        raise BadOptions(f"{name} has --dim {model.weights.dim}; --dim {cfg.dim} conflicts with it")
    if model.optimizer is not None and model.optimizer["kind"] != cfg.optimizer:
        raise BadOptions(f"{name} was trained with --optimizer {model.optimizer['kind']}; --optimizer {cfg.optimizer} conflicts with it")


@dataclass
class CheckpointPlan:
    """Where and when a training run writes checkpoints (see fmctr.training.checkpoints)."""

    path: Target | None  # None: a stop request writes no checkpoint
    every: float | None = None  # seconds
    should_stop: Callable[[], bool] | None = None  # asked between blocks


@dataclass
class TrainingData:
    """A training run's rows, hashed (and --min-count mapped) into datasets."""

    data: Input
    rows: DatasetRows
    valid: DatasetRows | None
    rare: RareMap | None
    every_row: DatasetRows | None = None  # with rows held out to choose on: every row, those too


def _check_train_options(path: str, cfg: TrainConfig, valid: str | None, valid_fraction: float | None,
                         min_count: int | None, base: Model | None, hashing: HashSpec | None, resume: Model | None):
    if valid is not None and valid_fraction is not None:
        raise BadOptions("--valid and --valid-fraction both choose validation data: give one of them")
    for data in (path, valid):  # before hours of hashing and training, not after
        if data is not None and data != "-" and not any(ch in data for ch in "*?[") and not Path(data).exists():
            raise BadInput(f"{data}: no such file")
    if valid_fraction is not None and not 0 < valid_fraction < 1:
        raise BadOptions(f"--valid-fraction must be between 0 and 1, got {valid_fraction}")
    cfg.check()
    if min_count is not None and min_count < 1:
        raise BadOptions(f"--min-count must be at least 1, got {min_count}")
    if hashing is not None and base is None:  # before hashing the data (training checks again in any case)
        validation = valid is not None or valid_fraction is not None
        chooses = selection.chooses_epochs(cfg, validation)
        check_memory(hashing.bits, cfg.dim, cfg.optimizer, validation or chooses,
                     kept=selection.copies_held(cfg) if chooses and cfg.refit else 0)
    if base is not None:
        check_warm_start(base, cfg, hashing, "the model" if resume is None else "the checkpoint")
        if min_count is not None and (base.rare is None or base.rare.min_count != min_count):
            raise BadOptions(f"--min-count {min_count} conflicts with the model's "
                             + (f"--min-count {base.rare.min_count}" if base.rare else "(it has none)"))
    if resume is not None:
        _check_resumed_data(resume, path, valid, None)


def _training_data(path: str, tmp: Path, *, spec, schema, hashing, valid, valid_fraction, base, min_count,
                   log: Log, valid_block: int = 0) -> TrainingData:
    """Open the training (and validation) data, hash it into datasets under `tmp`,
    split off --valid-fraction (the valid_block-th such share from the end: tune's
    checks) and map rare values."""
    # (training learns from the columns there are: a warm start on other columns is warned of, not refused)
    data = open_input(path, spec=spec, schema=schema, hashing=hashing, require_label=True, log=log, allow_missing=True)
    if min_count:
        from fmctr.hashing.rare import check_schema

        check_schema(data.schema)  # before the data is hashed
    ds = data.shards or _as_dataset(data, tmp / "train")
    rows = DatasetRows(ds)
    valid_rows = valid_data = None
    if valid is not None:
        valid_data = open_input(valid, schema=data.schema, hashing=data.hashing, require_label=True, log=log)
        valid_ds = valid_data.shards or _as_dataset(valid_data, tmp / "valid")
        valid_rows = DatasetRows(valid_ds)
    elif valid_fraction is not None:
        rows, valid_rows = rows.split_block(valid_fraction, valid_block)
        if rows.rows == 0 or valid_rows.rows == 0:
            raise BadOptions(f"--valid-fraction {valid_fraction} leaves no training or no validation rows")
    _warn_id_columns(data, rows, log)
    rare, data_is_mapped = _training_rare_map(data, rows, base, min_count)
    if rare is not None and not data_is_mapped:
        rows = DatasetRows(_remapped(data.shards or [ds], rare, tmp / "train-rare"))
        if valid_fraction is not None:
            rows, valid_rows = rows.split_block(valid_fraction, valid_block)
    if rare is not None and valid is not None:
        valid_rows = DatasetRows(_remapped(valid_data.shards or [valid_ds], rare, tmp / "valid-rare"))
    return TrainingData(data, rows, valid_rows, rare)


ID_SAMPLE = 5_000  # rows looked at for columns with a new value in (almost) every row


def _warn_id_columns(data: Input, rows: DatasetRows, log: Log) -> None:
    """A categorical column whose value differs in almost every row (an id) teaches
    nothing and fills the hash space: say so, and how to leave it out."""
    first = next(iter(rows.blocks()), None)
    singles = [f for f in data.schema.fields if f.kind == "categorical"]
    if first is None or len(first) < 1000 or not singles:
        return
    n = min(len(first), ID_SAMPLE)
    offsets = first.offsets[:n]
    positions = {f.name: j for j, f in enumerate(f for f in data.schema.fields if f.kind != "multi")}
    for f in singles:
        distinct = len(np.unique(first.indices[offsets + positions[f.name]]))
        if distinct >= 0.95 * n:
            log(f"warning: {data.name}: column {f.name!r} has a different value in {distinct / n:.0%} of the first "
                f"{n:,} rows (an id?); it cannot generalise - leave it out with --ignore {f.name}")


def train_model(
    path: str,
    *,
    spec: SchemaSpec | None,
    hashing: HashSpec | None,
    cfg: TrainConfig,
    valid: str | None = None,
    valid_fraction: float | None = None,
    valid_block: int = 0,
    progress=None,
    log: Log = _silent,
    start: Model | None = None,
    resume: Model | None = None,
    checkpoints: CheckpointPlan | None = None,
    output: str | None = None,
    sync: ReplicaSync | None = None,
    on_epoch=None,
    min_count: int | None = None,
) -> tuple[Model, TrainResult]:
    """Read (and hash) the training data, train, and return the model with its history.

    Raw data is hashed once into a temporary dataset (under $TMPDIR) that every epoch
    streams, so memory does not grow with the rows. `start` warm-starts from a model
    (schema, hashing, weights, optimizer state); `resume` continues a run from its
    checkpoint; `checkpoints` says where and when to write them. With `sync` this is
    one rank of a data-parallel run, on its share of the rows. `min_count` maps rarer
    values to their field's rare token (fmctr.hashing.rare), a map kept in the model.
    `valid_fraction` holds out the last share of rows (`valid_block` k: the k-th share
    before it); with neither, held-out rows choose the epochs and rivals of the
    defaults (training.selection)."""
    base = resume or start
    _check_train_options(path, cfg, valid, valid_fraction, min_count, base, hashing, resume)
    schema = None
    if base is not None:
        spec, schema, hashing = None, base.schema, base.hashing
    started = time.time()
    with scratch_dir() as tmp:
        td = _training_data(path, tmp, spec=spec, schema=schema, hashing=hashing, valid=valid,
                            valid_fraction=valid_fraction, base=base, min_count=min_count, log=log,
                            valid_block=valid_block)
        td, cfg = _hold_out(td, cfg, valid is not None or valid_fraction is not None, progress, start is not None)
        job_of = partial(Job.of_run, path, valid, valid_fraction, output)
        run_on = partial(_runner, path, progress=progress, start=start, checkpoints=checkpoints, sync=sync,
                         on_epoch=on_epoch)  # (data -> its run)
        run = run_on(td)
        result, positives = run(td.rows, cfg, valid=td.valid, resume=resume, job=job_of(cfg))
        chose, held_out, tried = result, (td.valid if valid is None and valid_fraction is None else None), None
        if held_out is not None and cfg.epochs is None and cfg.holdout and cfg.refit:
            if resume is None and start is None:  # tried: the rivals of the defaults tried and kept (a warm start: none)
                td, run, chose, cfg, tried = _rivals(path, tmp, td, run_on, cfg, result, job_of, progress, sync)
            result, positives = _refit(run, td, selection.refit_config(cfg, chose), job_of, progress)
            td = replace(td, rows=td.every_row, valid=None)
    training = _training_record(td, result, positives, sync, started)
    if chose is not result:
        training["selection"] = selection_record(chose, held_out.rows, result.config, tried)
    if start is not None:
        training["warm_start"] = start.training.get("input")
    model = Model(result.weights, td.data.schema, td.data.hashing, training, result.optimizer, rare=td.rare,
                  kind=result.config.kind)
    return model, result


def _rivals(path: str, tmp: Path, td: TrainingData, run_on, cfg: TrainConfig, result: TrainResult, job_of, progress,
            sync):
    """The rivals of the defaults, those of the configuration then that of the data
    (_exact_rival): (the data kept, its run, its held-out run, its configuration,
    the rivals tried and kept)."""
    chose, cfg, tried, losses = _rival_runs(run_on(td), td, cfg, result, job_of, progress, sync)
    td, run, chose, tried = _exact_rival(path, tmp / "exact", td, run_on, cfg, (chose, losses), tried, job_of,
                                         progress, sync)
    return td, run, chose, cfg, tried


def _runner(path: str, data: TrainingData, **options):
    """A training run on `data`'s rows (_train_rows), the rows and configuration to come."""
    return partial(_train_rows, data, path, **options)


def _rival_runs(run, td: TrainingData, cfg: TrainConfig, result: TrainResult, job_of, progress, sync):
    """The held-out run again for each rival of the defaults the user left open
    (fmctr.training.selection.rival_names), each kept only where the held-out rows
    choose it over the run kept so far: (the held-out run kept, its configuration,
    {"tried": names, "kept": the rivals kept} or None when no rival ran, and each
    held-out row's loss under the run kept or None). On few rows
    each is scored on several blocks of held-out rows (selection.folds). Data-parallel
    ranks hold out the same rows and end with the same weights, so they choose alike;
    `sync.any` makes sure of it."""
    names = selection.rival_names(cfg)
    folds = selection.folds(td.every_row.rows, cfg.holdout)
    if names and folds > 1:
        _note(progress, f"few rows: the rivals of the defaults are scored on {folds} blocks of held-out rows, "
                        f"each held out from a run of its own")
    blocks = _blocks(td, cfg.holdout, folds) if names else []
    kept_names, kept_losses = [], _held_losses(run, td, cfg, result, blocks, job_of) if names else None
    for name in names:
        other_cfg = selection.rival(name, cfg, result)
        _note(progress, f"training again on the same rows {selection.RIVAL_NOTES[name]}; the held-out rows choose")
        other, _ = run(td.rows, other_cfg, valid=td.valid, resume=None, job=job_of(other_cfg))
        other_losses = _held_losses(run, td, other_cfg, other, blocks, job_of)  # (the kept run's: once)
        wins = selection.rival_wins(kept_losses, other_losses)
        if sync.any(wins) if sync is not None else wins:
            result, cfg, kept_losses = other, other_cfg, other_losses
            kept_names.append(name)
    return result, cfg, ({"tried": names, "kept": kept_names} if names else None), kept_losses


def _exact_rival(path: str, tmp: Path, td: TrainingData, run_on, cfg: TrainConfig, kept: tuple, tried: dict | None,
                 job_of, progress, sync):
    """The held-out run kept (`kept`: it and its held-out rows' losses, or None) against
    one on the data hashed again with the values of each whole-number column as tokens
    of their own (selection.exact_fields; raw data only): (the data kept, its run, its
    held-out run, the rivals tried and kept)."""
    fields = selection.exact_fields(td.data.schema, cfg)
    result, losses = kept
    if not fields or td.data.shards is not None or td.rare is not None or not os.path.isfile(path):
        return td, run_on(td), result, tried  # (stdin or a pipe cannot be read again)
    folds = selection.folds(td.every_row.rows, cfg.holdout)
    if losses is None:
        losses = _held_losses(run_on(td), td, cfg, result, _blocks(td, cfg.holdout, folds), job_of)
    _note(progress, f"training again on the same rows with the values of {', '.join(fields)} also as tokens "
                    f"of their own (--numeric-mode exact); the held-out rows choose")
    data, every = hashed_exact(path, td.data.schema, fields, td.data.hashing, tmp)
    if every.rows != td.every_row.rows:  # (the file changed while training: its rows are not the ones held out)
        _note(progress, f"{data.name} changed while training ({every.rows:,} rows, not {td.every_row.rows:,}): "
                        f"the buckets are kept")
        return td, run_on(td), result, tried
    fit, held = every.split_tail(cfg.holdout)
    other_td = TrainingData(data, fit, held, None, every_row=every)
    other, _ = run_on(other_td)(fit, cfg, valid=held, resume=None, job=job_of(cfg))
    other_losses = _held_losses(run_on(other_td), other_td, cfg, other, _blocks(other_td, cfg.holdout, folds), job_of)
    wins = selection.rival_wins(losses, other_losses)
    wins = sync.any(wins) if sync is not None else wins
    tried = {"tried": [*(tried or {}).get("tried", []), "exact"],
             "kept": [*(tried or {}).get("kept", []), *(["exact"] if wins else [])]}
    return (other_td, run_on(other_td), other, tried) if wins else (td, run_on(td), result, tried)


def hashed_exact(path: str, schema, fields: list[str], hashing: HashSpec, tmp: Path) -> tuple[Input, DatasetRows]:
    """The raw data at `path` hashed again into `tmp` with `fields` as `exact`
    (selection.with_exact; the standardised values and row norm fitted again), for a
    rival of the data: the input and its rows (which the caller checks against the
    rows hashed before: the file may have changed meanwhile)."""
    data = open_input(path, schema=selection.with_exact(schema, fields), hashing=hashing, require_label=True,
                      allow_missing=True, refit=True)
    return data, DatasetRows(_as_dataset(data, tmp))


def _blocks(td: TrainingData, fraction: float, folds: int) -> list:
    """(rows to train on, held-out rows) of each block before td's held-out rows that
    rivals are also scored on (selection.folds), made once for every rival; a block of
    one class is left out."""
    parts = [td.every_row.split_block(fraction, block) for block in range(1, folds)]
    return [(fit, held) for fit, held in parts if selection.usable(held.labels())]


def _held_losses(run, td: TrainingData, cfg: TrainConfig, first: TrainResult, blocks: list, job_of) -> np.ndarray:
    """Each held-out row's logloss under cfg: those of td's held-out rows under its run
    `first`, then those of each of `blocks` (_blocks), held out from a run of its own
    that trains as the refit would (the epochs and rates `first` chose), so that no
    block chooses the epochs it is scored on."""
    losses = [selection.held_losses(first, td.valid)]
    as_chosen = selection.refit_config(cfg, first).with_options(refits=1)
    for fit, held in blocks:
        result, _ = run(fit, as_chosen, valid=None, resume=None, job=job_of(as_chosen))
        losses.append(selection.held_losses(result, held))
    return np.concatenate(losses)


def _refit(run, td: TrainingData, refit: TrainConfig, job_of, progress):
    """The refits on every row for the epochs the held-out rows chose, merged into one
    model (selection.merged): (result, positives)."""
    times = f", {refit.refits} times with seeds of their own, merged" if refit.refits > 1 else ""
    _note(progress, f"{refit.epochs} epoch(s) chosen on {td.valid.rows:,} held-out rows; "
                    f"training again on all {td.every_row.rows:,} rows{times}")
    return selection.refitted(refit, lambda cfg: run(td.every_row, cfg, valid=None, resume=None, job=job_of(cfg)))


def selection_record(chose, held_out_rows: int, refit: TrainConfig, rivals: dict | None = None) -> dict:
    """How the held-out rows chose the epochs of a refit (`chose`: the TrainResult there;
    `refit`: the refit's configuration), which rivals ran when they did (selection.RIVALS:
    {"tried": [...], "kept": [...]}), and the refits merged (selection.refits_record)."""
    record = {"holdout_rows": held_out_rows, "best_epoch": chose.best_epoch, "epochs": refit.epochs,
              "valid_metrics": chose.history[chose.best_epoch - 1].valid, "history": [asdict(e) for e in chose.history]}
    if rivals is not None:
        record["rivals"] = rivals
    refits = selection.refits_record(refit)
    if refits is not None:
        record["refits"] = refits
    return record


def _hold_out(td: TrainingData, cfg: TrainConfig, validation: bool, progress,
              warm: bool) -> tuple[TrainingData, TrainConfig]:
    """Without validation data or --epochs: hold out the last rows to choose the epochs
    on (fmctr.training.selection), or, when they cannot choose, the fixed budget. A warm
    start refits once (merged refits of it would double its dim again)."""
    if not selection.chooses_epochs(cfg, validation):
        return td, cfg
    fraction = selection.holdout_fraction(cfg, td.rows.rows)
    parts = selection.split(td.rows, fraction)
    if parts is None:
        _note(progress, f"the last {fraction:.0%} of the rows cannot choose the epochs (none, or one class only): "
                        f"training {DEFAULT_EPOCHS} epochs on every row")
        return td, selection.fixed(cfg)
    return (replace(td, rows=parts[0], valid=parts[1], every_row=td.rows),
            cfg.with_options(holdout=fraction, refits=1 if warm else cfg.refits))


def _note(progress, message: str) -> None:
    if progress is not None:
        progress.note(message)


def _train_rows(td: TrainingData, path: str, rows: DatasetRows, cfg: TrainConfig, *, valid, resume, job, progress, start,
                checkpoints, sync, on_epoch) -> tuple[TrainResult, float]:
    """One training run on rows (this rank's share of them under `sync`), and the
    number of positive training rows."""
    if resume is not None:
        _check_resumed_data(resume, path, None, rows.rows)
    if sync is not None:
        rows = rows.shard(sync.replicas.rank, sync.replicas.world)
        checkpoints = None
    result = train(
        rows, cfg, bits=td.data.hashing.bits, valid=valid, progress=progress,
        start=Start(start.weights, start.optimizer) if start is not None else None,
        resume=_resume_state(resume), checkpoints=_checkpoints(checkpoints, td, rows, job),
        sync=sync, on_epoch=on_epoch,
    )
    positives = sum(float(block.labels.sum()) for block in rows.blocks())
    if sync is not None:
        [positives] = sync.total([positives])
    return result, positives


def _resume_state(resume: Model | None) -> Resume | None:
    if resume is None:
        return None
    if resume.checkpoint is None or resume.optimizer is None:
        raise BadOptions("--resume needs a checkpoint written by an interrupted `fmctr train`, not a model file")
    return Resume.from_parts(resume.weights, resume.optimizer, resume.best, resume.checkpoint)


def _checkpoints(plan: CheckpointPlan | None, td: TrainingData, rows: DatasetRows, job: Job) -> Checkpoints | None:
    if plan is None:
        return None

    def write(state: Resume) -> None:
        partial = {"input": td.data.name, "rows": rows.rows, "fmctr_version": __version__, "resume": job.to_dict()}
        save(Model(state.weights, td.data.schema, td.data.hashing, partial, state.optimizer, state.progress(),
                   state.best, td.rare), plan.path)

    return Checkpoints(write if plan.path is not None else None, should_stop=plan.should_stop, every=plan.every)


def _training_record(td: TrainingData, result: TrainResult, positives: float, sync, started: float) -> dict:
    """The model file's training metadata."""
    best = result.history[result.best_epoch - 1]
    training = {
        "input": td.data.name,
        "rows": result.rows,
        "positive_rate": positives / result.rows,
        "ranks": sync.replicas.world if sync is not None else 1,
        "valid_rows": td.valid.rows if td.valid is not None else 0,
        "epochs_run": len(result.history),
        "best_epoch": result.best_epoch,
        "valid_metrics": best.valid,
        "train_logloss": best.train_logloss,
        "history": [asdict(e) for e in result.history],
        "config": asdict(result.config),
        "engine": result.engine,
        "device": result.device,
        "seconds": round(time.time() - started, 3),
        "fmctr_version": __version__,
    }
    if td.rare is not None:
        training["min_count"] = td.rare.min_count
        training["frequent_features"] = int(td.rare.frequent.sum())
    return training


def _training_rare_map(data: Input, rows: DatasetRows, base: Model | None,
                       min_count: int | None) -> tuple[RareMap | None, bool]:
    """The --min-count map a training run uses - the model's (warm start, resume), the
    one `fmctr preprocess --min-count` stored with the data, or counted from the
    training rows now (every rank of a distributed run counts them all) - and whether
    the data is mapped with it already."""
    mapped = data.shards[0].min_count if data.shards else None
    if mapped is not None:
        if base is not None and (base.rare is None or base.rare.min_count != mapped):
            raise BadOptions(f"{data.name} was preprocessed with --min-count {mapped}, which the model does not have")
        if min_count is not None and min_count != mapped:
            raise BadOptions(f"{data.name} was preprocessed with --min-count {mapped}; --min-count {min_count} conflicts with it")
    if base is not None and base.rare is not None:
        return base.rare, False  # (mapping again with the model's map is harmless: it is idempotent)
    if mapped is not None:
        return RareMap.from_packed(mapped, data.shards[0].frequent(), data.hashing.size, data.schema, data.hashing), True
    if min_count:
        return RareMap.count(rows, min_count, data.schema, data.hashing), False
    return None, False


def _remapped(shards: list[dataset.HashedDataset], rare: RareMap, path: Path) -> dataset.HashedDataset:
    """A copy of hashed data with rare values mapped to their field's rare token."""
    first = shards[0]
    return dataset.write((rare.apply(rows) for shard in shards for rows in shard.iter_parts()), path,
                         first.schema, first.hashing, (rare.min_count, rare.packed()))
