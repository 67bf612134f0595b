"""`fmctr eval --plot FILE`: the ROC curve and the calibration curve, as one PNG."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from fmctr.atomic import Kind, Output, Target, write_bytes
from fmctr.errors import BadOptions
from fmctr.metrics import roc_curve


def _is_png(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(8) == b"\x89PNG\r\n\x1a\n"


PNG = Kind("a PNG image", _is_png)


def pyplot(path: Target):
    """matplotlib's pyplot, checked before any work is done."""
    path = path.name if isinstance(path, Output) else str(path)
    if not path.lower().endswith(".png"):
        raise BadOptions(f"--plot {path}: the plot is a PNG; give a file name ending in .png")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise BadOptions("--plot needs matplotlib: pip install 'fmctr[plot]'") from None
    return plt


def write_plot(path: Target, labels: np.ndarray, probs: np.ndarray, metrics: dict, title: str) -> None:
    """Draw both curves and write the PNG atomically."""
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
    fig.savefig(out, format="png")
    plt.close(fig)
    write_bytes(path, out.getvalue())
