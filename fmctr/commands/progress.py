"""What a person watches on stderr: a progress bar while training, and tables."""

from __future__ import annotations

import math

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from fmctr.training.loop import NullProgress
from fmctr.training.state import Epoch



def _stderr() -> Console:
    console = Console(stderr=True)
    if not console.is_terminal:
        # A log file or CI: one line per event, never wrapped at 80 columns, and
        # tables as wide as their cells.
        console = Console(stderr=True, soft_wrap=True, width=100_000)
    return console


stderr = _stderr()


class TrainProgress(NullProgress):
    """A rich progress bar per epoch: rows/s, running loss, ETA."""

    def __init__(self, console: Console = stderr, *, loss: str = "logloss", rated: bool = True):
        """`loss`: what the training loss is called; `rated`: whether a learning rate
        steps it (implicit ALS solves each feature's weights: no rate to print)."""
        self.console = console
        self.loss_name, self.rated = loss, rated
        self.progress = Progress(
            TextColumn("epoch {task.fields[epoch]}"),
            BarColumn(),
            TextColumn("{task.completed:,.0f}/{task.total:,.0f} rows"),
            TextColumn("{task.fields[speed]} rows/s"),
            TextColumn("loss {task.fields[loss]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
            disable=not console.is_terminal,  # no bar in a log file: the epoch lines tell it
        )
        self.task = None
        self.loss_sum = 0.0
        self.seen = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        # Started only by the first epoch, so an error while reading prints nothing extra.
        if self.task is not None:
            self.progress.stop()

    def note(self, message: str) -> None:
        self.console.print(message, highlight=False)

    def start_epoch(self, epoch: int, epochs: int, rows: int) -> None:
        if self.task is None:
            self.progress.start()
        else:
            self.progress.remove_task(self.task)
        self.loss_sum, self.seen = 0.0, 0
        self.task = self.progress.add_task("train", total=rows, epoch=f"{epoch}/{epochs}", speed="-", loss="-")

    def advance(self, rows: int, loss: float) -> None:
        self.loss_sum += loss * rows
        self.seen += rows
        task = self.progress.tasks[-1]
        speed = task.speed or 0
        self.progress.update(self.task, advance=rows, speed=f"{speed:,.0f}", loss=f"{self.loss_sum / self.seen:.4f}")

    def validated(self, metrics: dict, within_epoch: bool) -> None:
        if within_epoch:  # (an epoch's own check is on its end_epoch line)
            self.console.print(
                f"epoch {metrics['epoch']} at {metrics['rows']:,} rows: valid {_metrics(metrics)}"
                f"{' (best)' if metrics['best'] else ''}; lr {metrics['lr']:.3g}",
                highlight=False)

    def end_epoch(self, record: Epoch) -> None:
        line = f"epoch {record.epoch}: train {self.loss_name} {record.train_logloss:.4f}, {record.rows_per_s:,.0f} rows/s"
        if record.valid:
            line += "; valid " + _metrics(record.valid)
        if record.lr is not None and self.rated:
            line += f"; lr {record.lr:.3g}"
        self.console.print(line, highlight=False)


def _metrics(valid: dict) -> str:
    """A check's metrics: AUC and logloss, or the ranking check's (training from positives)."""
    if "auc" not in valid:
        return ", ".join(f"{name} {valid[name]:.4f}" for name in valid if "@" in name)
    return f"AUC {valid['auc']:.4f}, logloss {valid['logloss']:.4f}"


def _fmt(value) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def history_table(history: list[Epoch], best_epoch: int) -> Table:
    table = Table(title="training", title_justify="left")
    table.add_column("epoch", justify="right")
    table.add_column("train logloss", justify="right")
    has_valid = any(e.valid for e in history)
    if has_valid:
        table.add_column("valid AUC", justify="right")
        table.add_column("valid logloss", justify="right")
    table.add_column("lr", justify="right")
    table.add_column("rows/s", justify="right")
    for e in history:
        cells = [f"{e.epoch}{' *' if e.epoch == best_epoch and has_valid else ''}", _fmt(e.train_logloss)]
        if has_valid:
            cells += [_fmt(e.valid["auc"]), _fmt(e.valid["logloss"])] if e.valid else ["", ""]
        cells.append(f"{e.lr:.3g}" if e.lr is not None else "")
        cells.append(f"{e.rows_per_s:,.0f}")
        table.add_row(*cells)
    return table


def trials_table(trials, best: int) -> Table:
    """`fmctr tune`'s trials: settings that differ from the defaults, validation scores."""
    table = Table(title="trials", title_justify="left")
    for name, justify in [("trial", "right"), ("train options", "left"), ("valid AUC", "right"),
                          ("valid logloss", "right"), ("epochs", "right"), ("seconds", "right")]:
        table.add_column(name, justify=justify)
    for t in trials:
        flags = t.flags + (f" (held-out block {t.block})" if t.block else "")
        table.add_row(f"{t.number}{' *' if t.number == best else ''}", flags, _fmt(t.valid["auc"]),
                      _fmt(t.valid["logloss"]), str(t.epochs), f"{t.seconds:.0f}")
    return table


METRIC_LABELS = {
    "rows": "rows",
    "auc": "AUC",
    "logloss": "logloss",
    "normalized_entropy": "normalized entropy",
    "calibration": "calibration (mean pred / rate)",
    "calibration_error": "expected calibration error",
    "positive_rate": "positive rate",
    "mean_prediction": "mean prediction",
}


def reliability_table(bins: list[dict]) -> Table:
    table = Table(title="calibration (equal-count bins by prediction)", title_justify="left")
    for name in ("bin", "rows", "predictions", "mean prediction", "observed rate", "observed / predicted"):
        table.add_column(name, justify="right")
    for number, b in enumerate(bins, 1):
        ratio = b["observed_rate"] / b["mean_prediction"] if b["mean_prediction"] > 0 else float("nan")
        table.add_row(str(number), f"{b['rows']:,}", f"{b['min_prediction']:.4f}-{b['max_prediction']:.4f}",
                      f"{b['mean_prediction']:.4f}", f"{b['observed_rate']:.4f}", _fmt(ratio))
    return table


def metrics_table(metrics: dict, title: str = "evaluation") -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, label in METRIC_LABELS.items():
        if key in metrics:
            table.add_row(label, _fmt(metrics[key]))
    return table
