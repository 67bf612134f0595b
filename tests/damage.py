"""Tools that damage or craft the files fmctr reads: model files (the safetensors
header, the fmctr metadata, tensors) and hashed datasets (manifest, .npy parts)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
from safetensors.numpy import load as st_load

from fmctr.models import modelfile


def split(model: bytes) -> tuple[dict, bytes]:
    """A safetensors file as (its JSON header, the tensor bytes)."""
    (n,) = struct.unpack("<Q", model[:8])
    return json.loads(model[8 : 8 + n]), model[8 + n :]


def join(header: dict, body: bytes) -> bytes:
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + body


def pack(meta: dict, tensors: dict[str, list]) -> bytes:
    """A safetensors file of tensors given as name -> [dtype, shape, bytes]."""
    header, body, offset = {"__metadata__": {modelfile.METADATA_KEY: json.dumps(meta)}}, b"", 0
    for name in sorted(tensors):
        dtype, shape, raw = tensors[name]
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(raw)]}
        body, offset = body + raw, offset + len(raw)
    return join(header, body)


def craft(model: bytes, edit=None, *, version: int | None = None) -> bytes:
    """The model with `edit(meta, tensors)` applied (tensors as name -> [dtype, shape,
    bytes]) and a checksum that matches, as a forger (or an older fmctr, for versions
    up to 2) would write it: what is left to catch is the content itself."""
    header, body = split(model)
    meta = json.loads(header.pop("__metadata__")[modelfile.METADATA_KEY])
    tensors = {k: [v["dtype"], v["shape"], body[v["data_offsets"][0] : v["data_offsets"][1]]] for k, v in header.items()}
    if edit is not None:
        edit(meta, tensors)
    if version is not None:
        meta["format_version"] = version
    meta.pop("sha256", None)
    arrays = st_load(pack(meta, tensors))
    new = meta.get("format_version") == modelfile.FORMAT_VERSION
    meta["sha256"] = modelfile._checksum_v3(meta, arrays) if new else modelfile._checksum(arrays)
    return pack(meta, tensors)


def with_format_version(model: bytes, version: int) -> bytes:
    """The model file as fmctr wrote it at another format version (the old checksum
    up to version 2)."""
    return craft(model, version=version)


def part(dataset: Path, array: str, number: int = 0) -> Path:
    return dataset / f"part-{number:05d}.{array}.npy"


def edit_manifest(dataset: Path, edit) -> None:
    path = dataset / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


def edit_array(dataset: Path, array: str, edit) -> None:
    """Rewrite one .npy part through `edit(array) -> array`."""
    path = part(dataset, array)
    np.save(path, edit(np.load(path)))
