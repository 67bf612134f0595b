"""The model file: one safetensors file, weights plus a JSON header with everything
needed to score raw data (schema, hashing spec, options, format version, training
metadata). Loading parses the header and the raw tensor bytes; nothing is unpickled.

Only rows that training touched are stored (`rows` lists their indices); every other
row of the hash space is zero. A SHA-256 of the tensor bytes guards against corruption.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from fmctr import __version__
from fmctr.atomic import Kind, Target, write_bytes
from fmctr.errors import BadModel
from fmctr.hashing.tokens import HashSpec
from fmctr.hashing.rare import RareMap
from fmctr.reading.schema import BUCKETS_CHANGED_AFTER, Schema, old_buckets
from fmctr.models.kinds import kind_of
from fmctr.models.weights import FMWeights

FORMAT = "fmctr-model"
FORMAT_VERSION = 2  # 2: numeric buckets keep values up to 2 apart (fmctr.schema.old_buckets)
METADATA_KEY = "fmctr"


@dataclass
class Model:
    """A model file's content. `optimizer` (arrays over all rows: bias (2,),
    linear1, linear2, factors1, factors2, seen; plus kind and step) lets training
    continue where it stopped; `checkpoint` holds a checkpoint's resume state
    (JSON-able) and `best` its best-epoch weights."""

    weights: FMWeights
    schema: Schema
    hashing: HashSpec
    training: dict
    optimizer: dict | None = None
    checkpoint: dict | None = None
    best: FMWeights | None = None
    rare: RareMap | None = None  # --min-count: which indices are frequent
    kind: str = "fm"  # which fmctr.models.base.ModelKind the weights are


OPTIMIZER_ARRAYS = ("linear1", "linear2", "factors1", "factors2")


def _checksum(tensors: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(np.ascontiguousarray(tensors[name]).tobytes())
    return h.hexdigest()


def _own_array(kind: str, name: str) -> bool:
    """Whether an optimizer's state array is stored, or is the same as its "...1"
    (Adagrad keeps one accumulator; FTRL keeps z and n for the linear weights)."""
    return kind == "adam" or name.endswith("1") or (kind == "ftrl" and name == "linear2")


def _weight_tensors(kind: str, weights, rows: np.ndarray, prefix: str = "") -> dict[str, np.ndarray]:
    """A model kind's sections as tensors; its per-index ones only at `rows`."""
    model_kind = kind_of(kind)
    return {prefix + k: np.ascontiguousarray(v[rows] if k in model_kind.per_index else v, dtype=np.float32)
            for k, v in model_kind.sections(weights).items()}


def _weights(kind: str, tensors: dict[str, np.ndarray], rows: np.ndarray, n: int, dim: int, prefix: str = ""):
    """The inverse of _weight_tensors: per-index tensors spread over all n indices."""
    model_kind = kind_of(kind)
    sections = {}
    for key in model_kind.sections_names:
        values = tensors[prefix + key]
        sections[key] = _full(values, rows, n, dim if values.ndim == 2 else None) if key in model_kind.per_index \
            else values.copy()
    return model_kind.from_sections(sections)


def to_bytes(model: Model) -> bytes:
    w = model.weights
    opt = model.optimizer
    if opt is not None:
        rows = np.flatnonzero(opt["seen"]).astype(np.int64)
    else:
        rows = np.flatnonzero((w.linear != 0) | np.any(w.factors != 0, axis=1)).astype(np.int64)
    tensors = {"rows": rows, **_weight_tensors(model.kind, w, rows)}
    header = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "fmctr_version": __version__,
        "model": model.kind,
        "num_features": w.num_features,
        "dim": w.dim,
        "schema": model.schema.to_dict(),
        "hashing": model.hashing.to_dict(),
        "training": model.training,
    }
    if opt is not None:
        tensors["opt.bias"] = opt["bias"].astype(np.float32)
        for name in OPTIMIZER_ARRAYS:
            if _own_array(opt["kind"], name):
                tensors[f"opt.{name}"] = np.ascontiguousarray(opt[name][rows], dtype=np.float32)
        header["optimizer"] = {"kind": opt["kind"], "step": int(opt["step"])}
    if model.best is not None:
        tensors.update(_weight_tensors(model.kind, model.best, rows, "best."))
    if model.checkpoint is not None:
        header["checkpoint"] = model.checkpoint
    if model.rare is not None:
        tensors["rare.frequent"] = model.rare.packed()
        header["min_count"] = model.rare.min_count
    header["sha256"] = _checksum(tensors)
    return st_save(tensors, metadata={METADATA_KEY: json.dumps(header)})


def save(model: Model, path: Target) -> None:
    write_bytes(path, to_bytes(model))


def _is_model_file(path: Path) -> bool:
    """A safetensors file with an fmctr header (a model or a checkpoint)."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            (n,) = struct.unpack("<Q", head) if len(head) == 8 else (0,)
            header = json.loads(f.read(n)) if 0 < n <= 100_000_000 else {}
        return METADATA_KEY in header.get("__metadata__", {})
    except (OSError, ValueError, AttributeError, TypeError):
        return False


MODEL_FILE = Kind("an fmctr model file", _is_model_file)


def _header(data: bytes, name: str) -> dict:
    if len(data) < 8:
        raise BadModel(f"{name}: not an fmctr model file (too short)")
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8 or n > 100_000_000:
        raise BadModel(f"{name}: not an fmctr model file, or truncated (bad header length)")
    try:
        header = json.loads(data[8 : 8 + n])
        meta = json.loads(header["__metadata__"][METADATA_KEY])
    except (ValueError, KeyError, TypeError):
        raise BadModel(f"{name}: not an fmctr model file (no fmctr header)") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise BadModel(f"{name}: not an fmctr model file")
    version = meta.get("format_version")
    if old_buckets(version, meta.get("schema")):
        raise BadModel(f"{name}: made by an older fmctr, which bucketed numeric fields differently "
                       f"(values up to 2 shared tokens with larger ones); train the model again")
    if version not in (FORMAT_VERSION, BUCKETS_CHANGED_AFTER):  # (nothing else changed since version 1)
        raise BadModel(
            f"{name}: model format version {version} is not one this fmctr {__version__} reads "
            f"(it reads version {FORMAT_VERSION})"
        )
    return meta


def _full(values: np.ndarray, rows: np.ndarray, n: int, dim: int | None = None) -> np.ndarray:
    """Per-row values of the stored rows, spread over all n rows (zeros elsewhere)."""
    full = np.zeros(n if dim is None else (n, dim), np.float32)
    full[rows] = values if dim is None else values.reshape(len(rows), dim)
    return full


def from_bytes(data: bytes, name: str = "model", *, training_state: bool = True) -> Model:
    """Parse a model file. Scoring needs no optimizer state or best weights:
    `training_state=False` leaves them out (they can double the memory)."""
    meta = _header(data, name)
    try:
        tensors = st_load(data)
    except (SafetensorError, ValueError) as e:
        raise BadModel(f"{name}: corrupt or truncated model file ({str(e).splitlines()[0]})") from None
    if "rows" not in tensors or "bias" not in tensors:
        raise BadModel(f"{name}: model file has tensors {sorted(tensors)}, expected bias, rows and the weights")
    if _checksum(tensors) != meta.get("sha256"):
        raise BadModel(f"{name}: model file is corrupt (checksum mismatch)")
    try:
        n, dim = int(meta["num_features"]), int(meta["dim"])
        rows = tensors["rows"]
        if rows.size and (rows.min() < 0 or rows.max() >= n):
            raise ValueError("row index out of range")
        kind = meta.get("model", "fm")
        weights = _weights(kind, tensors, rows, n, dim)
        optimizer = None
        if "optimizer" in meta and training_state:
            opt_kind = meta["optimizer"]["kind"]
            optimizer = {"kind": opt_kind, "step": int(meta["optimizer"]["step"]), "bias": tensors["opt.bias"].copy()}
            optimizer["seen"] = np.zeros(n, np.bool_)
            optimizer["seen"][rows] = True
            for array in OPTIMIZER_ARRAYS:
                source = array if _own_array(opt_kind, array) else array[:-1] + "1"
                optimizer[array] = _full(tensors[f"opt.{source}"], rows, n, None if array.startswith("linear") else dim)
        best = None
        if "best.bias" in tensors and training_state:
            best = _weights(kind, tensors, rows, n, dim, "best.")
        hashing = HashSpec(**meta["hashing"]).check()
        schema = Schema.from_dict(meta["schema"])
    except BadModel:
        raise
    except Exception as e:  # any inconsistency in an untrusted file is the file's fault
        raise BadModel(f"{name}: inconsistent model file ({type(e).__name__}: {e})") from None
    if hashing.size != n:
        raise BadModel(f"{name}: inconsistent model file (2^bits != number of features)")
    rare = None
    if "min_count" in meta:
        if "rare.frequent" not in tensors or len(tensors["rare.frequent"]) * 8 < n:
            raise BadModel(f"{name}: model file has --min-count but no frequent set")
        rare = RareMap.from_packed(int(meta["min_count"]), tensors["rare.frequent"], n, schema, hashing)
    return Model(weights, schema, hashing, meta.get("training", {}), optimizer, meta.get("checkpoint"), best, rare, kind)


def load(path: Path | str, *, training_state: bool = True) -> Model:
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise BadModel(f"{path}: no such model file") from None
    except IsADirectoryError:
        raise BadModel(f"{path}: is a directory, not a model file") from None
    except OSError as e:
        raise BadModel(f"{path}: cannot read model file: {e.strerror}") from None
    return from_bytes(data, str(path), training_state=training_state)
