"""The hashed dataset on disk: a directory of CSR parts plus a manifest.

    train.hashed/
      manifest.json              format, version, schema, hashing spec, parts, row counts
      part-00000.indices.npy     int32 feature indices
      part-00000.values.npy      float32 feature values (absent when all are 1)
      part-00000.offsets.npy     int64 row offsets (rows + 1)
      part-00000.labels.npy      float32 0/1 labels
      ...
      frequent.npy               with --min-count: the frequent set, one bit per index

Parts are plain .npy files, memory-mapped on read, so reading a part costs no copy
and a dataset larger than memory can be streamed part by part.
"""

from __future__ import annotations

import glob
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fmctr.atomic import Kind, Output, Target, atomic_dir
from fmctr.errors import BadInput, BadOptions
from fmctr.hashing.tokens import HashSpec, Rows, is_ones, ones
from fmctr.reading.schema import BUCKETS_CHANGED_AFTER, Schema, old_buckets

FORMAT = "fmctr-hashed"
FORMAT_VERSION = 2  # 2: numeric buckets keep values up to 2 apart (fmctr.schema.old_buckets)
MANIFEST = "manifest.json"
SHARDS = "shards.json"  # in a directory of shards: which input made which shard
ARRAYS = ("indices", "values", "offsets", "labels")
FREQUENT = "frequent.npy"


@dataclass
class HashedDataset:
    path: Path
    schema: Schema
    hashing: HashSpec
    parts: list[dict]
    min_count: int | None = None  # rare values were mapped to their field's rare token

    @property
    def rows(self) -> int:
        return sum(p["rows"] for p in self.parts)

    def read_part(self, number: int) -> Rows:
        """One part, memory-mapped: reading it costs no copy."""
        part = self.parts[number]
        arrays = {}
        for name in ARRAYS:
            if name == "values" and not part.get("values", True):
                continue
            file = self.path / f"{part['name']}.{name}.npy"
            try:
                arrays[name] = np.load(file, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as e:
                raise BadInput(f"{file}: unreadable part of the hashed dataset ({e})") from None
        if len(arrays["offsets"]) != part["rows"] + 1 or len(arrays["labels"]) != part["rows"]:
            raise BadInput(f"{self.path}: part {part['name']} does not match the manifest")
        if "values" not in arrays:
            arrays["values"] = ones(len(arrays["indices"]))
        return Rows(arrays["indices"], arrays["values"], arrays["offsets"], arrays["labels"])

    def frequent(self) -> np.ndarray:
        """The packed frequent set of a dataset written with --min-count."""
        try:
            return np.load(self.path / FREQUENT, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise BadInput(f"{self.path / FREQUENT}: unreadable frequent set ({e})") from None

    def iter_parts(self) -> Iterator[Rows]:
        for number in range(len(self.parts)):
            yield self.read_part(number)


def hashed_paths(path: str | Path) -> list[Path] | None:
    """The hashed datasets that `path` names: itself, the datasets directly inside it
    (shards, e.g. from `fmctr preprocess a.tsv b.tsv -o dir`), or a glob's matches.
    None when it names none (it is raw data, or nothing)."""
    if str(path) == "-":
        return None
    p = Path(path)
    if (p / MANIFEST).is_file():
        return [p]
    if p.is_dir():
        return sorted(d for d in p.iterdir() if (d / MANIFEST).is_file()) or None
    if any(ch in str(path) for ch in "*?["):
        return sorted(Path(m) for m in glob.glob(str(path)) if (Path(m) / MANIFEST).is_file()) or None
    return None


def is_hashed(path: str | Path) -> bool:
    return hashed_paths(path) is not None


def open_many(path: str | Path) -> list[HashedDataset]:
    """Every hashed dataset `path` names; they must share schema and hashing."""
    paths = hashed_paths(path)
    if paths is None:
        raise BadInput(f"{path}: no hashed dataset there")
    datasets = [open_hashed(p) for p in paths]
    first = datasets[0]
    for other in datasets[1:]:
        if other.hashing != first.hashing or other.schema.fields != first.schema.fields:
            raise BadInput(f"{other.path}: hashed with other options or schema than {first.path}; shards must agree")
        if other.min_count != first.min_count or (first.min_count and not np.array_equal(other.frequent(), first.frequent())):
            raise BadInput(f"{other.path}: mapped rare values (--min-count) differently from {first.path}; shards must agree")
    return datasets


PART_ROWS = 1 << 16


def _coalesce(chunks: Iterable[Rows], rows: int) -> Iterator[Rows]:
    """Merge small chunks into parts of at least `rows` rows (the last may be smaller)."""
    pending: list[Rows] = []
    size = 0
    for chunk in chunks:
        pending.append(chunk)
        size += len(chunk)
        if size >= rows:
            yield Rows.concat(pending)
            pending, size = [], 0
    if pending:
        yield Rows.concat(pending)


def _save(path: Path, array: np.ndarray) -> None:
    """An .npy file written through Python's file object, which raises on a full disk
    (numpy's own tofile can leave a short file without an error)."""
    array = np.ascontiguousarray(array)
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, np.lib.format.header_data_from_array_1_0(array))
    try:
        with open(path, "wb") as f:
            f.write(header.getvalue())
            f.write(memoryview(array).cast("B"))
    except OSError as e:
        raise BadOptions(f"{path}: cannot write: {e.strerror}") from None


def write(chunks: Iterable[Rows], path: Target, schema: Schema, hashing: HashSpec,
          rare: tuple[int, np.ndarray] | None = None) -> HashedDataset:
    """Write hashed rows to `path` in parts of PART_ROWS rows (atomically: the
    directory appears complete or not at all). `rare` (min count, packed frequent
    set) records that the rows were mapped by --min-count."""
    target, path = path, Path(path.name if isinstance(path, Output) else path)
    records = []
    with atomic_dir(target) as tmp:
        # Chunks of at least half a part are written as they come: merging costs a copy.
        for number, rows in enumerate(_coalesce(chunks, PART_ROWS // 2)):
            if rows.labels is None:
                raise BadInput("a hashed dataset needs labels")
            name = f"part-{number:05d}"
            one_hot = is_ones(rows.values) or bool(np.all(rows.values == 1))  # then the values are not stored
            for array in ARRAYS:
                if not (array == "values" and one_hot):
                    _save(tmp / f"{name}.{array}.npy", getattr(rows, array))
            records.append({"name": name, "rows": len(rows), "nnz": int(rows.offsets[-1]),
                            "positives": int(rows.labels.sum()), "values": not one_hot})
        if not records or sum(r["rows"] for r in records) == 0:
            raise BadInput("no data rows to write")
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "schema": schema.to_dict(),
            "hashing": hashing.to_dict(),
            "rows": sum(r["rows"] for r in records),
            "parts": records,
        }
        if rare is not None:
            manifest["min_count"] = rare[0]
            _save(tmp / FREQUENT, rare[1])
        try:
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        except OSError as e:
            raise BadOptions(f"{tmp / MANIFEST}: cannot write: {e.strerror}") from None
    return HashedDataset(path, schema, hashing, records, None if rare is None else rare[0])


def _made_by_fmctr(path: Path) -> bool:
    """A hashed dataset, or a directory of shards, as `fmctr preprocess` writes them."""
    try:
        return json.loads((path / MANIFEST).read_text()).get("format") == FORMAT or (path / SHARDS).is_file()
    except (OSError, ValueError, AttributeError):
        return (path / SHARDS).is_file()


DATASET = Kind("an fmctr hashed dataset", _made_by_fmctr, directory=True)


def open_hashed(path: str | Path) -> HashedDataset:
    path = Path(path)
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError) as e:
        raise BadInput(f"{path}: not a readable hashed dataset ({e})") from None
    if manifest.get("format") != FORMAT:
        raise BadInput(f"{path}: not an fmctr hashed dataset")
    version = manifest.get("format_version")
    if old_buckets(version, manifest.get("schema")):
        raise BadInput(f"{path}: hashed by an older fmctr, which bucketed numeric fields differently "
                       f"(values up to 2 shared tokens with larger ones); run fmctr preprocess again")
    if version not in (FORMAT_VERSION, BUCKETS_CHANGED_AFTER):
        raise BadInput(f"{path}: hashed dataset version {version} is not one this fmctr reads ({FORMAT_VERSION})")
    return HashedDataset(path, Schema.from_dict(manifest["schema"]), HashSpec(**manifest["hashing"]).check(), manifest["parts"],
                         manifest.get("min_count"))
