"""The model file's header, read alone: the safetensors JSON header with fmctr's
metadata (schema, hashing, training record) and the table of tensors (dtype, shape,
byte offsets). No tensor is read and nothing heavier than json is imported, so that
`fmctr info` answers at once on a model of any size.
"""

from __future__ import annotations

import json
import os
import stat
import struct
from dataclasses import dataclass

from fmctr import __version__
from fmctr.errors import BadModel
from fmctr.reading.schema import BUCKETS_CHANGED_AFTER, stored_problem

FORMAT = "fmctr-model"
FORMAT_VERSION = 3  # 3: the checksum covers the header, dtypes and shapes too
TENSORS_ONLY_CHECKSUM = 2  # versions up to 2 (2: numeric buckets keep values up to 2 apart, fmctr.schema.old_buckets)
METADATA_KEY = "fmctr"
MAX_HEADER_BYTES = 100_000_000


def parse_header(data: bytes, name: str) -> dict:
    """fmctr's metadata from the first bytes of a model file (at least the header)."""
    return _meta(_safetensors_header(data, name, len(data)), name)


def _safetensors_header(data: bytes, name: str, size: int) -> dict:
    if len(data) < 8:
        raise BadModel(f"{name}: not an fmctr model file (too short)")
    (n,) = struct.unpack("<Q", data[:8])
    if n > size - 8 or n > MAX_HEADER_BYTES or n > len(data) - 8:
        raise BadModel(f"{name}: not an fmctr model file, or truncated (bad header length)")
    try:
        header = json.loads(data[8 : 8 + n])
        if not isinstance(header, dict):
            raise ValueError
        return header
    except (ValueError, RecursionError):
        raise BadModel(f"{name}: not an fmctr model file (no fmctr header)") from None


def _meta(header: dict, name: str) -> dict:
    try:
        meta = json.loads(header["__metadata__"][METADATA_KEY])
    except (ValueError, KeyError, TypeError, RecursionError):
        raise BadModel(f"{name}: not an fmctr model file (no fmctr header)") from None
    problem = stored_problem(meta, FORMAT, (FORMAT_VERSION, TENSORS_ONLY_CHECKSUM, BUCKETS_CHANGED_AFTER))
    if problem is not None:
        raise BadModel(f"{name}: " + {
            "format": "not an fmctr model file",
            "buckets": "made by an older fmctr, which bucketed numeric fields differently (values up to 2 shared "
                       "tokens with larger ones); train the model again",
            "version": f"model format version {meta.get('format_version')} is not one this fmctr {__version__} "
                       f"reads (it reads versions 1 to {FORMAT_VERSION})",
        }[problem])
    return meta


@dataclass
class Header:
    """What a model file says about itself without its tensors being read."""

    meta: dict  # fmctr's metadata
    tensors: dict  # name -> {"dtype", "shape", "data_offsets"}, as safetensors lists them
    header_bytes: int
    file_bytes: int


def read_header(path: str) -> Header:
    """The header of the model file at `path`: only its first 8 + n bytes are read."""
    name = str(path)
    try:
        mode = os.stat(path).st_mode
        if stat.S_ISDIR(mode):
            raise BadModel(f"{name}: is a directory, not a model file")
        if not stat.S_ISREG(mode):
            raise BadModel(f"{name}: not a regular file; a model is a file written by `fmctr train`")
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            n = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
            data = head + f.read(min(n, MAX_HEADER_BYTES))
    except FileNotFoundError:
        raise BadModel(f"{name}: no such model file") from None
    except OSError as e:
        raise BadModel(f"{name}: cannot read model file: {e.strerror}") from None
    header = _safetensors_header(data, name, size)
    meta = _meta(header, name)
    tensors = {k: v for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)}
    return Header(meta, tensors, 8 + n, size)
