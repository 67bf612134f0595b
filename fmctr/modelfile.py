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
from fmctr.atomic import write_bytes
from fmctr.errors import BadModel
from fmctr.hashing import HashSpec
from fmctr.schema import Schema
from fmctr.weights import FMWeights

FORMAT = "fmctr-model"
FORMAT_VERSION = 1
METADATA_KEY = "fmctr"
TENSORS = ("bias", "rows", "linear", "factors")


@dataclass
class Model:
    weights: FMWeights
    schema: Schema
    hashing: HashSpec
    training: dict


def _checksum(tensors: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in TENSORS:
        h.update(np.ascontiguousarray(tensors[name]).tobytes())
    return h.hexdigest()


def to_bytes(model: Model) -> bytes:
    w = model.weights
    rows = np.flatnonzero((w.linear != 0) | np.any(w.factors != 0, axis=1)).astype(np.int64)
    tensors = {
        "bias": w.bias.astype(np.float32),
        "rows": rows,
        "linear": w.linear[rows].astype(np.float32),
        "factors": np.ascontiguousarray(w.factors[rows], dtype=np.float32),
    }
    header = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "fmctr_version": __version__,
        "num_features": w.num_features,
        "dim": w.dim,
        "schema": model.schema.to_dict(),
        "hashing": model.hashing.to_dict(),
        "training": model.training,
        "sha256": _checksum(tensors),
    }
    return st_save(tensors, metadata={METADATA_KEY: json.dumps(header)})


def save(model: Model, path: Path | str) -> None:
    write_bytes(path, to_bytes(model))


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
    if version != FORMAT_VERSION:
        raise BadModel(
            f"{name}: model format version {version} is not one this fmctr {__version__} reads "
            f"(it reads version {FORMAT_VERSION})"
        )
    return meta


def from_bytes(data: bytes, name: str = "model") -> Model:
    meta = _header(data, name)
    try:
        tensors = st_load(data)
    except (SafetensorError, ValueError) as e:
        raise BadModel(f"{name}: corrupt or truncated model file ({str(e).splitlines()[0]})") from None
    if set(tensors) != set(TENSORS):
        raise BadModel(f"{name}: model file has tensors {sorted(tensors)}, expected {list(TENSORS)}")
    if _checksum(tensors) != meta.get("sha256"):
        raise BadModel(f"{name}: model file is corrupt (checksum mismatch)")
    try:
        n, dim = int(meta["num_features"]), int(meta["dim"])
        rows = tensors["rows"]
        if rows.size and (rows.min() < 0 or rows.max() >= n):
            raise ValueError("row index out of range")
        weights = FMWeights(tensors["bias"].copy(), np.zeros(n, np.float32), np.zeros((n, dim), np.float32))
        weights.linear[rows] = tensors["linear"]
        weights.factors[rows] = tensors["factors"].reshape(len(rows), dim)
        hashing = HashSpec(**meta["hashing"]).check()
        schema = Schema.from_dict(meta["schema"])
    except BadModel:
        raise
    except Exception as e:  # any inconsistency in an untrusted file is the file's fault
        raise BadModel(f"{name}: inconsistent model file ({e})") from None
    if hashing.size != n:
        raise BadModel(f"{name}: inconsistent model file (2^bits != number of features)")
    return Model(weights, schema, hashing, meta.get("training", {}))


def load(path: Path | str) -> Model:
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise BadModel(f"{path}: no such model file") from None
    except IsADirectoryError:
        raise BadModel(f"{path}: is a directory, not a model file") from None
    except OSError as e:
        raise BadModel(f"{path}: cannot read model file: {e.strerror}") from None
    return from_bytes(data, str(path))
