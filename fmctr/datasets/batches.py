"""Row sources for training and scoring: rows in memory, or a hashed dataset streamed
part by part, so memory stays flat however many rows there are.

A source yields blocks. For training each epoch shuffles: the parts' order, then the
rows within a shuffle buffer of consecutive parts (at least SHUFFLE_ROWS rows).
A dataset smaller than the buffer is shuffled as a whole, exactly like rows in memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numba
import numpy as np

from fmctr.datasets.hashed import HashedDataset
from fmctr.hashing.tokens import Rows
from fmctr.reading.read import prefetch
from fmctr.tables import read_only, sparse_zeros

SHUFFLE_ROWS = 1 << 18
BLOCK_ROWS = 1 << 16  # rows handed to an engine at a time (the progress bar's step)
# The counting pass keeps a table of counts per thread (_count), up to this many bytes
# in all: up to 8 tables (threads) at bits 22, 2 at bits 24, one from bits 25 up.
COUNT_TABLES_BYTES = 1 << 28


@dataclass
class Span:
    """Rows [start, stop) of part `part` of dataset `dataset` (an index into a list)."""

    dataset: int
    part: int
    start: int
    stop: int


@numba.njit(cache=True, nogil=True, parallel=True)
def _count(indices, counts):
    """counts[t, i] += 1 for each i in table t's share of indices, in place: a row of
    counts per thread (COUNT_TABLES_BYTES caps them), summed by the caller (the increments land at random, so each
    thread keeps its own table; np.bincount per block allocated, zeroed and added a
    table-sized array each time: 0.4-0.6 s per 1M Criteo-like rows at bits 22, against
    0.26-0.35 s for one thread here)."""
    threads, n = counts.shape[0], len(indices)
    for t in numba.prange(threads):
        mine = counts[t]
        for p in range(n * t // threads, n * (t + 1) // threads):
            mine[indices[p]] += 1


class RowSource:
    rows: int
    method = "train"  # the engine's method that trains on this source's pieces

    def nonzeros(self) -> int | None:
        """How many indices the rows hold (None: not known without drawing them)."""
        return None

    def few_features(self, size: int) -> tuple[np.ndarray, np.ndarray | None] | None:
        """Where the rows hold few indices (under size / 8), their distinct features
        (sorted) and how many times each occurs (None: not counted), found by sorting them: a pass over
        table-sized arrays costs 0.1-0.3 s at bits 22 here, however few the rows -
        most of a short training run. None otherwise."""
        nonzeros = self.nonzeros()
        if nonzeros is None or nonzeros >= size // 8:
            return None
        if getattr(self, "_few", None) is None:  # (a source's rows never change)
            indices = np.concatenate([block.indices for block in self.blocks()] or [np.zeros(0, np.int32)])
            self._few = np.unique(indices, return_counts=True)
        return self._few

    def feature_counts(self, size: int) -> np.ndarray:
        """How many times each feature index occurs in these rows (one pass); for few
        rows, a table whose pages are touched only where a count lands
        (few_features, fmctr.tables.sparse_zeros)."""
        few = self.few_features(size)
        if few is not None and few[1] is not None:
            table = sparse_zeros((size,), len(few[0]), np.int64)
            table[few[0]] = few[1]
            return table
        # (int32 where no count can reach 2^31: half the bytes for the random increments)
        nonzeros = self.nonzeros()
        dtype = np.int32 if nonzeros is not None and nonzeros < 2**31 else np.int64
        tables = max(1, min(numba.get_num_threads(), COUNT_TABLES_BYTES // (np.dtype(dtype).itemsize * size)))
        counts = np.zeros((tables, size), dtype)
        for block in self.blocks():
            _count(read_only(block.indices), counts)
        return counts.sum(axis=0, dtype=np.int64) if len(counts) > 1 else counts[0].astype(np.int64, copy=False)

    def blocks(self) -> Iterator[Rows]:
        """Every row once, in order, in blocks."""
        raise NotImplementedError

    def shuffled(self, rng: np.random.Generator) -> Iterator[tuple[Rows, np.ndarray]]:
        """(rows, order) pairs covering every row once; `order` indexes into `rows`."""
        raise NotImplementedError

    def labels(self) -> np.ndarray:
        return np.concatenate([b.labels for b in self.blocks()])


class MemoryRows(RowSource):
    def __init__(self, rows: Rows):
        self.data = rows
        self.rows = len(rows)

    def nonzeros(self) -> int:
        return int(self.data.indices.size)

    def blocks(self) -> Iterator[Rows]:
        for lo in range(0, self.rows, BLOCK_ROWS):
            yield self.data.slice(lo, min(lo + BLOCK_ROWS, self.rows))

    def shuffled(self, rng: np.random.Generator) -> Iterator[tuple[Rows, np.ndarray]]:
        order = rng.permutation(self.rows).astype(np.int64)
        for lo in range(0, self.rows, BLOCK_ROWS):
            yield self.data, order[lo : lo + BLOCK_ROWS]


class DatasetRows(RowSource):
    """Some or all rows of one or more hashed datasets (shards), read part by part
    (memory-mapped)."""

    def __init__(self, datasets: HashedDataset | list[HashedDataset], spans: list[Span] | None = None):
        self.datasets = datasets if isinstance(datasets, list) else [datasets]
        if spans is None:
            spans = [Span(d, i, 0, p["rows"]) for d, ds in enumerate(self.datasets) for i, p in enumerate(ds.parts)]
        self.spans = spans
        self.rows = sum(s.stop - s.start for s in self.spans)
        self._nonzeros: int | None = None  # (nonzeros)

    def _read(self, span: Span) -> Rows:
        return self.datasets[span.dataset].read_part(span.part).slice(span.start, span.stop)

    def shard(self, rank: int, world: int) -> DatasetRows:
        """This rank's share for data-parallel training: the rank-th of `world`
        contiguous, equal row ranges (every row in exactly one share)."""
        return self._range(self.rows * rank // world, self.rows * (rank + 1) // world)

    def _range(self, lo: int, hi: int) -> DatasetRows:
        """Rows [lo, hi) of this source, as spans."""
        spans: list[Span] = []
        seen = 0
        for s in self.spans:
            n = s.stop - s.start
            a, b = max(lo - seen, 0), min(hi - seen, n)
            if a < b:
                spans.append(Span(s.dataset, s.part, s.start + a, s.start + b))
            seen += n
        return DatasetRows(self.datasets, spans)

    def nonzeros(self) -> int:
        """From the manifests where a span is a whole part (reading a part checks its
        count: check_part), from the offsets otherwise; once (a source's rows never
        change). Reading every part for it, twice per training, cost 0.38 s of a
        10M-row run."""
        if self._nonzeros is None:
            self._nonzeros = sum(self._span_nonzeros(span) for span in self.spans)
        return self._nonzeros

    def _span_nonzeros(self, span: Span) -> int:
        part = self.datasets[span.dataset].parts[span.part]
        if "nnz" in part and span.start == 0 and span.stop == part["rows"]:
            return int(part["nnz"])
        return int(self._read(span).offsets[-1])

    def blocks(self) -> Iterator[Rows]:
        for span in self.spans:
            yield self._read(span)

    def shuffled(self, rng: np.random.Generator) -> Iterator[tuple[Rows, np.ndarray]]:
        # The next shuffle group is read (pages faulted in, parts joined, order drawn)
        # in a background thread while the engine trains on this one; the engines
        # release the GIL. The RNG is drawn from that thread only, in the same order.
        for rows, order in prefetch(self._groups(rng), depth=1):
            for lo in range(0, len(rows), BLOCK_ROWS):
                yield rows, order[lo : lo + BLOCK_ROWS]

    def _groups(self, rng: np.random.Generator) -> Iterator[tuple[Rows, np.ndarray]]:
        spans = [self.spans[i] for i in rng.permutation(len(self.spans))] if len(self.spans) > 1 else self.spans
        group: list[Span] = []
        size = 0
        for position, span in enumerate(spans):
            group.append(span)
            size += span.stop - span.start
            if size >= SHUFFLE_ROWS or position == len(spans) - 1:
                rows = Rows.concat([self._read(s) for s in group])
                yield rows, rng.permutation(len(rows)).astype(np.int64)
                group, size = [], 0

    def split_tail(self, fraction: float) -> tuple[DatasetRows, DatasetRows]:
        """The first rows and the last `fraction` of rows (file order)."""
        return self.split_block(fraction, 0)

    def split_block(self, fraction: float, block: int) -> tuple[DatasetRows, DatasetRows]:
        """(every other row, the block-th share of `fraction` of the rows counted from
        the end): block 0 is the last rows (split_tail), block 1 the share before them."""
        size = int(round(self.rows * fraction))
        hi = max(self.rows - block * size, 0)
        lo = max(hi - size, 0)
        return DatasetRows(self.datasets, self._range(0, lo).spans + self._range(hi, self.rows).spans), self._range(lo, hi)
