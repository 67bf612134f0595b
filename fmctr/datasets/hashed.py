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
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fmctr.atomic import Kind, Output, Target, atomic_dir
from fmctr.errors import BadInput, BadOptions, BadSchema
from fmctr.hashing.tokens import HashSpec, Rows, is_ones, ones
from fmctr.reading.schema import BUCKETS_CHANGED_AFTER, Schema, stored_problem

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
    checked: set[int] = field(default_factory=set, repr=False, compare=False)  # parts found sound

    @property
    def rows(self) -> int:
        return sum(p["rows"] for p in self.parts)

    def read_part(self, number: int) -> Rows:
        """One part, memory-mapped: reading it costs no copy. The first read of a part
        checks every array (fmctr.datasets.hashed.check_part): the kernels trust them."""
        part = self.parts[number]
        arrays = {}
        for name in ARRAYS:
            if name == "values" and not part["values"]:
                continue
            file = self.path / f"{part['name']}.{name}.npy"
            try:
                arrays[name] = np.load(file, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as e:
                raise BadInput(f"{file}: unreadable part of the hashed dataset ({e})") from None
        if number not in self.checked:
            check_part(arrays, part, self.hashing.size, self.path / part["name"])
            self.checked.add(number)
        if "values" not in arrays:
            arrays["values"] = ones(len(arrays["indices"]))
        return Rows(arrays["indices"], arrays["values"], arrays["offsets"], arrays["labels"])

    def frequent(self) -> np.ndarray:
        """The packed frequent set of a dataset written with --min-count."""
        try:
            packed = np.load(self.path / FREQUENT, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise BadInput(f"{self.path / FREQUENT}: unreadable frequent set ({e})") from None
        if packed.dtype != np.uint8 or packed.shape != ((self.hashing.size + 7) // 8,):
            raise BadInput(f"{self.path / FREQUENT}: the frequent set is not one bit per index of the hash space")
        return packed

    def iter_parts(self) -> Iterator[Rows]:
        for number in range(len(self.parts)):
            yield self.read_part(number)


DTYPES = {"indices": np.int32, "values": np.float32, "offsets": np.int64, "labels": np.float32}


def check_part(arrays: dict[str, np.ndarray], part: dict, size: int, where: Path) -> None:
    """Refuse a part whose arrays the kernels could not index safely or whose labels
    and values are not data: the dtypes and shapes written, row offsets from 0 up to
    the number of indices and never decreasing, indices within the hash space, finite
    values, 0/1 labels. Vectorised; about one pass over the part's bytes."""
    for name, array in arrays.items():
        if array.dtype != DTYPES[name] or array.ndim != 1:
            raise BadInput(f"{where}.{name}.npy: {array.dtype} array of shape {array.shape}; "
                           f"expected a 1-D {np.dtype(DTYPES[name])} array")
    indices, offsets, labels = arrays["indices"], arrays["offsets"], arrays["labels"]
    rows, nnz = part["rows"], len(indices)
    if len(offsets) != rows + 1 or len(labels) != rows or part.get("nnz", nnz) != nnz:
        raise BadInput(f"{where}: part has {len(labels):,} labels, {len(offsets):,} offsets and {nnz:,} indices; "
                       f"the manifest says {rows:,} rows" + (f" and {part['nnz']:,} indices" if "nnz" in part else ""))
    if offsets[0] != 0 or offsets[-1] != nnz or np.any(offsets[1:] < offsets[:-1]):
        raise BadInput(f"{where}.offsets.npy: row offsets must start at 0, never decrease and end at "
                       f"the number of indices ({nnz:,})")
    if nnz and (indices.min() < 0 or indices.max() >= size):
        raise BadInput(f"{where}.indices.npy: feature index {int(indices.min() if indices.min() < 0 else indices.max())} "
                       f"outside the hash space [0, {size})")
    if "values" in arrays and (len(arrays["values"]) != nnz or not np.isfinite(arrays["values"]).all()):
        raise BadInput(f"{where}.values.npy: expected {nnz:,} finite values, one per index")
    if np.any((labels != 0) & (labels != 1)):
        raise BadInput(f"{where}.labels.npy: labels must be 0 or 1")


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


def read_json(file: Path, error: type[Exception], what: str):
    """A JSON file fmctr wrote, read as untrusted: any damage is one `error` line
    (nesting deep enough to exhaust the parser's recursion too)."""
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as e:
        reason = "nested too deeply" if isinstance(e, RecursionError) else str(e)
        raise error(f"{file}: not a readable {what} ({reason})") from None


PART_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,200}")  # a file name in the dataset's directory, no path


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _parts(manifest: dict, path: Path) -> list[dict]:
    """The manifest's part records, checked: each names a file beside the manifest
    (never a path elsewhere) and counts rows and indices."""
    parts = manifest.get("parts")
    if not isinstance(parts, list) or not parts:
        raise BadInput(f"{path}: malformed manifest (no list of parts)")
    records = []
    for number, part in enumerate(parts):
        if not isinstance(part, dict) or not isinstance(part.get("name"), str) \
                or not PART_NAME.fullmatch(part["name"]) or ".." in part["name"]:
            raise BadInput(f"{path}: malformed manifest (part {number} must name a file in the dataset's directory)")
        if not _is_count(part.get("rows")) or not _is_count(part.get("nnz", 0)) \
                or not isinstance(part.get("values", True), bool):
            raise BadInput(f"{path}: malformed manifest (part {number}: rows and nnz must be counts, values true or false)")
        records.append({**part, "values": part.get("values", True)})
    return records


def _made_by_fmctr(path: Path) -> bool:
    """A hashed dataset, or a directory of shards, as `fmctr preprocess` writes them."""
    try:
        return json.loads((path / MANIFEST).read_text()).get("format") == FORMAT or (path / SHARDS).is_file()
    except (OSError, ValueError, AttributeError):
        return (path / SHARDS).is_file()


DATASET = Kind("an fmctr hashed dataset", _made_by_fmctr, directory=True)


def open_hashed(path: str | Path) -> HashedDataset:
    path = Path(path)
    manifest = read_json(path / MANIFEST, BadInput, "hashed dataset manifest")
    problem = stored_problem(manifest, FORMAT, (FORMAT_VERSION, BUCKETS_CHANGED_AFTER))
    if problem is not None:
        why = {"format": "not an fmctr hashed dataset",
               "buckets": "hashed by an older fmctr, which bucketed numeric fields differently (values up to 2 "
                          "shared tokens with larger ones); run fmctr preprocess again",
               "version": f"hashed dataset version {manifest.get('format_version')} is not one this fmctr reads "
                          f"({FORMAT_VERSION})"}
        raise BadInput(f"{path}: {why[problem]}")
    hashing, min_count = manifest.get("hashing"), manifest.get("min_count")
    if not isinstance(hashing, dict) or not isinstance(manifest.get("schema"), dict) \
            or not (min_count is None or _is_count(min_count)):
        raise BadInput(f"{path}: malformed manifest (schema, hashing or min_count)")
    try:
        spec = HashSpec(**hashing).check()
    except (TypeError, BadSchema) as e:
        raise BadInput(f"{path}: malformed manifest (hashing: {e})") from None
    return HashedDataset(path, Schema.from_dict(manifest["schema"]), spec, _parts(manifest, path), min_count)
