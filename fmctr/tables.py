"""Arrays laid out for the compiled kernels: tables indexed by hashed feature (zeros
with rows on cache-line boundaries, and pages touched only where rows are written
when few will be), and read-only views of what the kernels only read. A leaf:
training, scoring, model files and row sources all use them."""

from __future__ import annotations

import math
import mmap

import numpy as np

ALIGN = 128  # two cache lines: a row of 8, 16 or 32 factors never straddles one more


def aligned_zeros(shape: tuple[int, ...]) -> np.ndarray:
    """float32 zeros starting on an ALIGN-byte boundary. numpy's large arrays start 16
    bytes into a page, so a row of 8 factors straddled two cache lines every other row,
    and a row of 16 every row: one more miss per feature read at random (scoring 1M
    rows at dim 8: 1.45-1.6x faster aligned; training's table, 1.4x)."""
    size = math.prod(shape) * 4
    buffer = np.zeros(size + ALIGN, np.uint8)
    skip = -buffer.ctypes.data % ALIGN
    return buffer[skip : skip + size].view(np.float32).reshape(shape)


def sparse_zeros(shape: tuple[int, ...], rows: int, dtype=np.float32) -> np.ndarray:
    """Zeros (float32 unless told) of which about `rows` rows will be written, at
    random; the pages no row is written to are never touched. numpy asks for huge pages for big arrays, which
    a long job wants (fewer TLB misses over millions of rows), but then a few rows spread
    over a hashed table touch every 2 MiB page and each is zeroed whole: 20-190 ms for a
    2^22 x 8 table here (most of a short predict's loading; a copy of a small model's
    weights while it trains). Where the rows are fewer than an eighth of the table's 4 KiB
    pages, the table is mapped anonymously instead, without asking for huge pages: 4 KiB
    pages, zeroed where a row lands (about 4 us each here, against 0.3-2.6 ms to zero a
    huge page, which moves with the machine's load)."""
    size = math.prod(shape) * np.dtype(dtype).itemsize
    if size == 0 or rows >= size // 4096 / 8:
        return aligned_zeros(shape) if dtype == np.float32 else np.zeros(shape, dtype)
    return np.frombuffer(mmap.mmap(-1, size), dtype).reshape(shape)


def read_only(a: np.ndarray) -> np.ndarray:
    """A read-only view: numba compiles a kernel once per writeable/read-only mix of its
    arguments (seconds for each), and rows come both ways (memory-mapped parts,
    joined or freshly hashed copies)."""
    view = a.view(np.ndarray)
    view.flags.writeable = False
    return view
