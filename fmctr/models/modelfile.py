"""The model file: one safetensors file, weights plus a JSON header with everything
needed to score raw data (schema, hashing spec, options, format version, training
metadata). Loading parses the header and the raw tensor bytes; nothing is unpickled.

Only rows that training touched are stored (`rows` lists their indices); every other
row of the hash space is zero. A SHA-256 over the header (canonical JSON) and every
tensor's name, dtype, shape and bytes guards against corruption (format version 3;
versions 1-2 hashed the tensor bytes only and are still read with that check). The
file is untrusted: every tensor's dtype and shape is checked against what the model
kind expects before any kernel sees it (`_check_tensors`).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from fmctr import __version__
from fmctr.atomic import Kind, Target, write_bytes
from fmctr.errors import BadModel, FmctrError
from fmctr.hashing.tokens import HashSpec
from fmctr.hashing.rare import RareMap
from fmctr.reading.schema import Schema
from fmctr.models.header import FORMAT, FORMAT_VERSION, METADATA_KEY, parse_header
from fmctr.models.kinds import kind_of
from fmctr.models.weights import FMWeights
from fmctr.tables import aligned_zeros, sparse_zeros



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
    """Versions 1-2: the tensors' names and bytes."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(np.ascontiguousarray(tensors[name]).tobytes())
    return h.hexdigest()


def _checksum_v3(meta: dict, tensors: dict[str, np.ndarray]) -> str:
    """Version 3: everything that decides a score - the header as canonical JSON
    (without the checksum itself) and each tensor's name, dtype, shape and bytes."""
    h = hashlib.sha256()
    header = {k: v for k, v in meta.items() if k != "sha256"}
    h.update(json.dumps(header, sort_keys=True, separators=(",", ":")).encode())
    for name in sorted(tensors):
        array = tensors[name]
        h.update(json.dumps([name, array.dtype.str, list(array.shape)]).encode())
        h.update(np.ascontiguousarray(array).tobytes())
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


def _weights(kind: str, tensors: dict[str, np.ndarray], rows: np.ndarray, n: int, dim: int, prefix: str = "",
             small_pages: bool = False):
    """The inverse of _weight_tensors: per-index tensors spread over all n indices."""
    model_kind = kind_of(kind)
    sections = {}
    for key in model_kind.sections_names:
        values = tensors[prefix + key]
        sections[key] = _full(values, rows, n, dim if values.ndim == 2 else None, small_pages) \
            if key in model_kind.per_index \
            else values.copy()
    return model_kind.from_sections(sections)


def to_bytes(model: Model) -> bytes:
    w = model.weights
    opt = model.optimizer
    if opt is not None:
        rows = np.flatnonzero(opt["seen"]).astype(np.int64)
    else:
        rows = w.nonzero_rows()
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
    header = json.loads(json.dumps(header))  # as a reader will see it (tuples as lists, ...)
    header["sha256"] = _checksum_v3(header, tensors)
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
    return parse_header(data, name)


def _full(values: np.ndarray, rows: np.ndarray, n: int, dim: int | None = None, small_pages: bool = False) -> np.ndarray:
    """Per-row values of the stored rows, spread over all n rows (zeros elsewhere)."""
    shape = (n,) if dim is None else (n, dim)
    full = sparse_zeros(shape, len(rows)) if small_pages else aligned_zeros(shape)
    full[rows] = values if dim is None else values.reshape(len(rows), dim)
    return full


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_array(tensors: dict, key: str, dtype, shape: tuple, name: str) -> None:
    array = tensors.get(key)
    if array is None:
        raise BadModel(f"{name}: model file has no {key!r} tensor")
    if array.dtype != dtype or array.shape != shape:
        raise BadModel(f"{name}: model file's {key!r} tensor is {array.dtype} {list(array.shape)}, "
                       f"expected {np.dtype(dtype)} {list(shape)}")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise BadModel(f"{name}: model file's {key!r} tensor has values that are not finite")


def _check_tensors(meta: dict, tensors: dict, name: str, training_state: bool) -> tuple[int, int, str]:
    """Every tensor the model kind reads, with the dtype and shape it expects, before
    any kernel indexes it; rows unique, ascending and within the hash space. Returns
    (num_features, dim, kind)."""
    n, dim, kind = meta.get("num_features"), meta.get("dim"), meta.get("model", "fm")
    if not (_is_int(n) and _is_int(dim) and 1 <= n <= 1 << 31 and 0 <= dim <= 1 << 16 and isinstance(kind, str)):
        raise BadModel(f"{name}: inconsistent model file (num_features, dim or model kind)")
    try:
        model_kind = kind_of(kind)
    except FmctrError as e:
        raise BadModel(f"{name}: {e}") from None
    rows = tensors.get("rows")
    if rows is None or rows.dtype != np.int64 or rows.ndim != 1:
        raise BadModel(f"{name}: model file's 'rows' tensor is missing or not 1-D int64")
    if rows.size and (rows[0] < 0 or rows[-1] >= n or np.any(rows[1:] <= rows[:-1])):
        raise BadModel(f"{name}: model file's rows are not unique, ascending indices below {n}")
    shapes = model_kind.shapes(len(rows), dim)
    prefixes = ("", "best.") if training_state and "best.bias" in tensors else ("",)
    for prefix in prefixes:
        for key, shape in shapes.items():
            _check_array(tensors, prefix + key, np.float32, shape, name)
    optimizer = meta.get("optimizer")
    if training_state and optimizer is not None:
        if not isinstance(optimizer, dict) or not isinstance(optimizer.get("kind"), str) \
                or not _is_int(optimizer.get("step")) or optimizer["step"] < 0:
            raise BadModel(f"{name}: inconsistent model file (optimizer kind and step)")
        _check_array(tensors, "opt.bias", np.float32, (2,), name)
        for array in OPTIMIZER_ARRAYS:
            if _own_array(optimizer["kind"], array):
                shape = (len(rows),) if array.startswith("linear") else (len(rows), dim)
                _check_array(tensors, f"opt.{array}", np.float32, shape, name)
    if "min_count" in meta:
        if not _is_int(meta["min_count"]) or meta["min_count"] < 1:
            raise BadModel(f"{name}: inconsistent model file (min_count)")
        _check_array(tensors, "rare.frequent", np.uint8, ((n + 7) // 8,), name)
    return n, dim, kind


def _verify(meta: dict, tensors: dict, name: str) -> None:
    version = meta.get("format_version")
    expected = _checksum_v3(meta, tensors) if version == FORMAT_VERSION else _checksum(tensors)
    if expected != meta.get("sha256"):
        raise BadModel(f"{name}: model file is corrupt (checksum mismatch)")


def _optimizer(meta: dict, tensors: dict, rows: np.ndarray, n: int, dim: int) -> dict:
    opt_kind = meta["optimizer"]["kind"]
    optimizer = {"kind": opt_kind, "step": int(meta["optimizer"]["step"]), "bias": tensors["opt.bias"].copy()}
    optimizer["seen"] = np.zeros(n, np.bool_)
    optimizer["seen"][rows] = True
    for array in OPTIMIZER_ARRAYS:
        source = array if _own_array(opt_kind, array) else array[:-1] + "1"
        optimizer[array] = _full(tensors[f"opt.{source}"], rows, n, None if array.startswith("linear") else dim)
    return optimizer


def _stored_specs(meta: dict, name: str) -> tuple[HashSpec, Schema]:
    try:
        if not isinstance(meta.get("hashing"), dict) or not isinstance(meta.get("schema"), dict):
            raise ValueError("no hashing spec or schema")
        return HashSpec(**meta["hashing"]).check(), Schema.from_dict(meta["schema"])
    except (FmctrError, ValueError, TypeError) as e:
        raise BadModel(f"{name}: inconsistent model file ({e})") from None


def _check_finite(tensors: dict[str, np.ndarray], name: str) -> None:
    """A model whose weights hold NaN or infinity scores every row as NaN: refuse it."""
    for key, values in tensors.items():
        if values.dtype.kind == "f" and not key.startswith("opt.") and not np.isfinite(values).all():
            raise BadModel(f"{name}: the model's weights are not finite (NaN or infinity: its training diverged); "
                           f"train it again")


def from_bytes(data: bytes, name: str = "model", *, training_state: bool = True, small_pages: bool = False) -> Model:
    """Parse a model file. Scoring needs no optimizer state or best weights:
    `training_state=False` leaves them out (they can double the memory).
    `small_pages`: the weight tables in small pages, for a short job (fmctr.models.weights.sparse_zeros)."""
    meta = _header(data, name)
    try:
        tensors = st_load(data)
    except (SafetensorError, ValueError) as e:
        raise BadModel(f"{name}: corrupt or truncated model file ({str(e).splitlines()[0]})") from None
    if "rows" not in tensors or "bias" not in tensors:
        raise BadModel(f"{name}: model file has tensors {sorted(tensors)}, expected bias, rows and the weights")
    _verify(meta, tensors, name)
    _check_finite(tensors, name)
    n, dim, kind = _check_tensors(meta, tensors, name, training_state)
    hashing, schema = _stored_specs(meta, name)
    if hashing.size != n:
        raise BadModel(f"{name}: inconsistent model file (2^bits != number of features)")
    rows = tensors["rows"]
    weights = _weights(kind, tensors, rows, n, dim, small_pages=small_pages)
    optimizer = _optimizer(meta, tensors, rows, n, dim) if "optimizer" in meta and training_state else None
    best = _weights(kind, tensors, rows, n, dim, "best.") if "best.bias" in tensors and training_state else None
    rare = None
    if "min_count" in meta:
        rare = RareMap.from_packed(meta["min_count"], tensors["rare.frequent"], n, schema, hashing)
    training, checkpoint = meta.get("training", {}), meta.get("checkpoint")
    if not isinstance(training, dict) or not (checkpoint is None or isinstance(checkpoint, dict)):
        raise BadModel(f"{name}: inconsistent model file (training record)")
    return Model(weights, schema, hashing, training, optimizer, checkpoint, best, rare, kind)


def load(path: Path | str, *, training_state: bool = True, small_pages: bool = False) -> Model:
    return from_bytes(_read(Path(path), str(path)), str(path), training_state=training_state, small_pages=small_pages)


def _read(p: Path, name: str) -> bytes:
    """The file's bytes, read only from a regular file and never past the size it had
    when opened (a device such as /dev/zero, or a pipe, would be read without end)."""
    try:
        mode = os.stat(p).st_mode  # before opening: opening a pipe would wait for a writer
        if stat.S_ISDIR(mode):
            raise BadModel(f"{name}: is a directory, not a model file")
        if not stat.S_ISREG(mode):
            raise BadModel(f"{name}: not a regular file; a model is a file written by `fmctr train`")
        with open(p, "rb", buffering=0) as f:
            return _read_up_to(f, os.fstat(f.fileno()).st_size)
    except FileNotFoundError:
        raise BadModel(f"{name}: no such model file") from None
    except OSError as e:
        raise BadModel(f"{name}: cannot read model file: {e.strerror}") from None


def _read_up_to(f, size: int) -> bytes:
    data = bytearray(size)
    view, got = memoryview(data), 0
    while got < size:
        n = f.readinto(view[got:])
        if not n:
            break
        got += n
    return bytes(data[:got]) if got < size else bytes(data)


def is_model_file(path: Path | str) -> bool:
    """Whether the file at `path` starts as an fmctr model file (header only)."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            n = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
            _header(head + f.read(min(n, 100_000_000)), str(path))
        return True
    except (OSError, BadModel):
        return False
