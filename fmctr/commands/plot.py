"""`fmctr eval --plot FILE`: the ROC curve and the calibration curve, as one PNG, PDF or SVG
(by the file name's extension)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from fmctr.atomic import Kind, Output, Target, write_bytes
from fmctr.errors import BadOptions
from fmctr.metrics import roc_curve


FORMATS = ("png", "pdf", "svg")


def plot_format(path: str | Path) -> str:
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in FORMATS:
        raise BadOptions(f"--plot {path}: give a file name ending in .png, .pdf or .svg")
    return suffix


def _is_plot(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(8)
    return head == b"\x89PNG\r\n\x1a\n" or head.startswith((b"%PDF", b"<?xml"))


PLOT = Kind("a PNG, PDF or SVG image", _is_plot)


def pyplot(path: Target):
    """matplotlib's pyplot, checked before any work is done."""
    path = path.name if isinstance(path, Output) else str(path)
    plot_format(path)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise BadOptions("--plot needs matplotlib: pip install 'fmctr[plot]'") from None
    return plt


def write_plot(path: Target, labels: np.ndarray, probs: np.ndarray, metrics: dict, title: str) -> None:
    """Draw both curves and write the file atomically."""
    plt = pyplot(path)
    fpr, tpr = roc_curve(labels, probs)
    table = metrics["reliability"]
    fig, (roc, cal) = plt.subplots(1, 2, figsize=(10, 4.6), dpi=100)
    roc.plot(fpr, tpr, color="C0", lw=1.5, label=f"model (AUC {metrics['auc']:.4f})")
    roc.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--", label="chance")
    roc.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC curve", xlim=(0, 1), ylim=(0, 1))
    roc.legend(loc="lower right")
    predicted = [b["mean_prediction"] for b in table]
    observed = [b["observed_rate"] for b in table]
    top = max(predicted + observed + [1e-3]) * 1.05
    cal.plot([0, top], [0, top], color="0.6", lw=1, ls="--", label="perfectly calibrated")
    cal.plot(predicted, observed, "o-", color="C1", lw=1.5,
             label=f"model ({len(table)} equal-count bins)\nexpected calibration error {metrics['calibration_error']:.4f}")
    cal.set(xlabel="mean predicted probability", ylabel="observed click rate", title="calibration",
            xlim=(0, top), ylim=(0, top))
    cal.legend(loc="upper left")
    fig.suptitle(f"{title}: {metrics['rows']:,} rows, logloss {metrics['logloss']:.4f}")
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format=plot_format(path.name if isinstance(path, Output) else path))
    plt.close(fig)
    write_bytes(path, out.getvalue())


def write_heatmap(path: Target, fields: list[str], matrix: list[list[float]], title: str) -> None:
    """`fmctr inspect --plot`: the field x field interaction strengths as a heatmap."""
    plt = pyplot(path)
    n = len(fields)
    side = min(4 + 0.3 * n, 20)
    fig, ax = plt.subplots(figsize=(side + 1.5, side), dpi=100)
    image = ax.imshow(np.asarray(matrix), cmap="viridis")
    ax.set_xticks(range(n), fields, rotation=90, fontsize=8)
    ax.set_yticks(range(n), fields, fontsize=8)
    fig.colorbar(image, ax=ax, label="mean |pair terms| between the fields, per row")
    ax.set_title(title)
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format=plot_format(path.name if isinstance(path, Output) else path))
    plt.close(fig)
    write_bytes(path, out.getvalue())
