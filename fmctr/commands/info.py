"""`fmctr info`: what a model file holds, from its header alone.

Only the safetensors header is read (fmctr.models.header), never the tensors, so the
answer takes the same few milliseconds on a model of any size; nothing here imports
numpy, polars or numba. `verify=True` also reads the tensors and checks the checksum.
"""

from __future__ import annotations

from fmctr.errors import BadModel
from fmctr.models.header import Header, read_header

DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
TRAINING_KEYS = ("input", "items", "rows", "catalogue_items", "loss", "unobserved", "negatives", "sampling", "pool",
                 "positive_rate", "valid_rows", "epochs_run", "best_epoch", "train_logloss", "valid_metrics", "engine",
                 "device", "ranks", "seconds", "fmctr_version", "warm_start", "min_count", "frequent_features")


def _tensor_table(header: Header) -> dict:
    table = {}
    for name, t in sorted(header.tensors.items()):
        offsets = t.get("data_offsets") or [0, 0]
        table[name] = {"dtype": t.get("dtype"), "shape": t.get("shape"), "bytes": int(offsets[1]) - int(offsets[0])}
    return table


def _sizes(tensors: dict) -> dict:
    """Bytes by what they are for: weights, optimizer state, best-epoch weights, the rest."""
    groups = {"weights": 0, "indices": 0, "optimizer": 0, "best": 0, "rare": 0}
    prefixes = {"opt": "optimizer", "best": "best", "rare": "rare"}
    for name, t in tensors.items():
        group = "indices" if name == "rows" else prefixes.get(name.split(".")[0], "weights")
        groups[group] += t["bytes"]
    return groups


def _history(training: dict) -> list[dict]:
    """Per epoch: train logloss, validation metrics, learning rate, speed."""
    rows = []
    for e in training.get("history") or []:
        if isinstance(e, dict):
            rows.append({k: e.get(k) for k in ("epoch", "train_logloss", "valid", "lr", "rows_per_s", "seconds")})
    return rows


def model_info(path: str, *, verify: bool = False) -> dict:
    """Everything the model file says about itself, JSON-able."""
    header = read_header(path)
    meta, training = header.meta, header.meta.get("training")
    training = training if isinstance(training, dict) else {}
    tensors = _tensor_table(header)
    rows = tensors.get("rows", {}).get("shape") or [None]
    hashing = meta.get("hashing") if isinstance(meta.get("hashing"), dict) else {}
    info = {
        "file": str(path),
        "format_version": meta.get("format_version"),
        "written_by": f"fmctr {meta.get('fmctr_version')}",
        "model": meta.get("model", "fm"),
        "dim": meta.get("dim"),
        "num_features": meta.get("num_features"),
        "hashing": hashing,
        "schema": meta.get("schema"),
        "min_count": meta.get("min_count"),
        "indices_stored": rows[0],
        "optimizer": meta.get("optimizer"),
        "checkpoint": meta.get("checkpoint") is not None,
        "sizes": {"file": header.file_bytes, "header": header.header_bytes, **_sizes(tensors)},
        "tensors": tensors,
        "sha256": meta.get("sha256"),
        "verified": None,
        "training": {k: training[k] for k in TRAINING_KEYS if k in training},
        "config": training.get("config"),
        "history": _history(training),
        "selection": _selection(training.get("selection")),
        "tune": training.get("tune"),
        "blend": training.get("blend") if isinstance(training.get("blend"), dict) else None,
    }
    if verify:
        info["verified"] = _verify(path)
    return info


def _selection(selection) -> dict | None:
    """How held-out rows chose the epochs of a refit, with their per-epoch history."""
    if not isinstance(selection, dict):
        return None
    return {**{k: v for k, v in selection.items() if k != "history"}, "history": _history(selection)}


def _verify(path: str) -> bool:
    """Read the tensors and check the checksum (and every other check a load makes)."""
    from fmctr.models.modelfile import load

    try:
        load(path, training_state=True)
    except BadModel as e:
        raise BadModel(f"{e} (--verify)") from None
    return True
