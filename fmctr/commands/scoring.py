"""The scoring jobs as plain functions: evaluate and predict.

Kept apart from the training jobs (fmctr.commands.jobs) so that a short `fmctr predict`
or `fmctr eval` loads nothing of training. Each takes paths and options, returns
values, and prints nothing; warnings go to an optional `log` callable.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl

from fmctr.atomic import Kind, Target, check_output, writing
from fmctr.datasets.inputs import Input, Log, open_input
from fmctr.datasets.inputs import silent as _silent
from fmctr.errors import BadOptions
from fmctr.metrics import evaluate_with_calibration
from fmctr.models.kinds import scorer
from fmctr.models.modelfile import Model, load
from fmctr.models.scores import SMALL_ROWS


SHORT_INPUT_BYTES = 1 << 20


def load_for_scoring(model: Path | str, input: str) -> Model:
    """The model, without training state, to score `input`: with the weight tables in
    small pages when the input is a short file (fmctr.tables.sparse_zeros), which
    loads a sparse model several times faster; stdin and longer inputs get huge pages,
    which score millions of rows faster."""
    try:
        found = os.stat(input) if input != "-" else None
    except OSError:
        found = None
    short = found is not None and stat.S_ISREG(found.st_mode) and found.st_size <= SHORT_INPUT_BYTES
    return load(model, training_state=False, small_pages=short)


def evaluate_model(path: str, model: Model, *, log: Log = _silent, device: str = "auto", bins: int = 10,
                   plot: Target | None = None, allow_missing: bool = False, format: str | None = None) -> dict:
    """AUC, logloss and friends of the model on labelled data, with the reliability
    table in `bins` bins; `plot` also writes the ROC and calibration curves (PNG, PDF or SVG)."""
    if bins < 1:
        raise BadOptions(f"--bins must be at least 1, got {bins}")
    if plot is not None:
        from fmctr.commands.plot import PLOT, pyplot

        plot = check_output(plot, PLOT, inputs=[path])
        pyplot(plot)  # fail before scoring if it cannot be drawn
    data = open_input(path, schema=model.schema, hashing=model.hashing, require_label=True, log=log, rare=model.rare,
                      allow_missing=allow_missing, format=format)
    score = scorer(model.weights, kind=model.kind, device=device)
    labels, probs = [], []
    for rows, _ in data.parts:
        labels.append(rows.labels)
        probs.append(score(rows))
    labels, probs = np.concatenate(labels), np.concatenate(probs)
    _warn_if_one_score(len(probs), probs.min(initial=np.inf), probs.max(initial=-np.inf), log)
    metrics = evaluate_with_calibration(labels, probs, bins)
    if np.isnan(metrics["auc"]):
        log(f"warning: {data.name}: every row has label {int(labels[0]) if len(labels) else 0}; "
            f"AUC is undefined (printed as NaN, null in JSON)")
    if plot is not None:
        from fmctr.commands.plot import write_plot

        write_plot(plot, labels, probs, metrics, data.name)
    return metrics


PROBABILITY = "probability"


def _looks_like_predictions(path: Path) -> bool:
    with open(path, "rb") as f:
        header = f.readline(1 << 16)
    return header.rstrip(b"\r\n").split(b",")[-1] == PROBABILITY.encode()


PREDICTIONS = Kind("a predictions CSV (its header ends in 'probability')", _looks_like_predictions)


def predict(path: str, model: Model, output: Target, *, keep: Sequence[str] = (), log: Log = _silent,
            device: str = "auto", allow_missing: bool = False, precision: int | None = None,
            format: str | None = None, explain: int | None = None) -> int:
    """Write one CSV line per input row, in input order: the --keep columns, then the
    click probability. `output` "-" is stdout; a file appears only when complete.
    `explain` N adds each row's N largest logit terms (fmctr.commands.explain)."""
    if PROBABILITY in keep:
        raise BadOptions(f"--keep {PROBABILITY}: that name is the output column")
    output = check_output(output, PREDICTIONS, inputs=[path])
    if explain is not None:
        from fmctr.commands.explain import write_explained

        if precision is not None and not 1 <= precision <= 17:
            raise BadOptions(f"--precision must be from 1 to 17 decimal places, got {precision}")
        with writing(output) as out:
            return write_explained(path, model, out, n=explain, keep=keep, log=log, allow_missing=allow_missing,
                                   precision=precision, format=format)
    data = open_input(path, schema=model.schema, hashing=model.hashing, require_label=False, keep=keep, log=log,
                      rare=model.rare, allow_missing=allow_missing, format=format)
    if precision is not None and not 1 <= precision <= 17:
        raise BadOptions(f"--precision must be from 1 to 17 decimal places, got {precision}")
    score = scorer(model.weights, kind=model.kind, device=device)
    with writing(output) as out:
        return _write_predictions(data, score, out, log, precision)


def _write_predictions(data: Input, score, out, log: Log, precision: int | None = None) -> int:
    written, lowest, highest = 0, np.inf, -np.inf
    for rows, kept in data.parts:
        probs = score(rows)
        frame = _probability_column(probs).to_frame()
        if kept is not None:
            frame = pl.concat([kept, frame], how="horizontal")
        out.write(frame.write_csv(include_header=written == 0, float_precision=precision).encode())
        written += len(rows)
        lowest, highest = min(lowest, probs.min(initial=np.inf)), max(highest, probs.max(initial=-np.inf))
    out.flush()
    _warn_if_one_score(written, lowest, highest, log)
    return written


def _probability_column(probs: np.ndarray) -> pl.Series:
    """A few rows' probabilities go to polars as a list, the same float64 values: polars
    reads a numpy array through numpy.ma, whose import (about 20 ms) is a tenth of a
    short predict's time."""
    if len(probs) <= SMALL_ROWS and probs.dtype == np.float64:
        return pl.Series(PROBABILITY, probs.tolist(), dtype=pl.Float64)
    return pl.Series(PROBABILITY, probs)


def _warn_if_one_score(rows: int, lowest: float, highest: float, log: Log) -> None:
    """Every row scored the same is surely not what was wanted: say so."""
    if rows > 1 and lowest == highest:
        log(f"warning: every one of the {rows:,} rows has the same probability, {lowest:.6g}: the model knows "
            f"none of their features (other data? other columns?), or it learned nothing")
