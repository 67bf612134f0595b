"""Raw rows in, string columns out: every input format becomes a stream of `Chunk`s.

Text formats are parsed by pyarrow's streaming CSV reader (constant memory, exact line
numbers for malformed rows) and handed on as polars frames whose columns are all
strings; the hashing stage decides what each column means. gzip is detected from
the data, not the file name, so `zcat`-less pipelines and `.gz` files both work.
"""

from __future__ import annotations

import csv
import io
import os
import queue
import re
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.csv as pacsv

from fmctr.errors import BadInput, BadOptions
from fmctr.reading import quotes
from fmctr.reading.schema import FORMATS, SPARSE_FORMATS

GZIP_MAGIC = b"\x1f\x8b"
PARQUET_MAGIC = b"PAR1"
BLOCK_BYTES = 1 << 22  # ~16k Criteo rows a chunk; pyarrow parses these twice as fast as 16 MiB blocks
RAW_BLOCK_BYTES = 1 << 24  # ~65k Criteo rows: the one-pass kernel likes them big
PEEK_BYTES = 1 << 16
MAX_LINE_BYTES = 1 << 26  # 64 MiB: one line is held whole in memory; FMCTR_MAX_LINE_BYTES raises it
MAX_LINE_ENV = "FMCTR_MAX_LINE_BYTES"
LINE_COLUMN = "line"
_SPARSE_LINE = re.compile(r"^\s*[-+]?[0-9.eE+-]+(\s+[^\s:]+(:[^\s:]+){1,2})*\s*$")


@dataclass
class Chunk:
    """Consecutive rows of one input. `first_line` is the 1-based line number of the
    chunk's first row in the file (None for Parquet, which has no lines)."""

    frame: pl.DataFrame
    first_line: int | None


@dataclass
class RawChunk:
    """Whole lines of unquoted delimited text, as bytes; `first_line` as in Chunk."""

    data: bytes
    first_line: int

    def parse(self, name: str, columns: list[str], separator: str, quoted: bool = False) -> Iterator[Chunk]:
        """The same lines as string columns (pyarrow), with the file's line numbers."""
        self.check_utf8(name, separator)
        if quoted:
            check_quotes(self.data, name, self.first_line)
        try:
            yield from _csv_chunks(io.BytesIO(self.data), name, columns, separator, 0, quoted, self.first_line - 1)
        except _Straddling:
            # A line longer than pyarrow's block: parse the chunk as one block.
            yield from _csv_chunks(io.BytesIO(self.data), name, columns, separator, 0, quoted, self.first_line - 1,
                                   block=len(self.data) + 1)


    def check_utf8(self, name: str, separator: str) -> None:
        """Invalid UTF-8 is an error naming its line and column."""
        try:
            self.data.decode("utf-8")
        except UnicodeDecodeError as e:
            line_start = self.data.rfind(b"\n", 0, e.start) + 1
            line = self.first_line + self.data.count(b"\n", 0, e.start)
            column = self.data.count(separator.encode(), line_start, e.start) + 1
            raise BadInput(f"{name}:{line}:{column}: not valid UTF-8 text") from None


def check_quotes(data: bytes, name: str, first_line: int) -> None:
    """A quoted field must close on its line: refuse an unterminated quote, which would
    swallow the rows after it, and a line break inside quotes, which fmctr does not read
    (so line numbers stay the file's)."""
    if b'"' not in data:
        return
    if len(data) < quotes.QUOTE_KERNEL_MIN_BYTES:
        start = quotes.open_quote_line(data)
    else:
        start = quotes.compiled()(np.frombuffer(data, np.uint8))
    if start >= 0:
        line = first_line + data.count(b"\n", 0, start)
        raise BadInput(f"{name}:{line}: a quoted field is not closed on its line (an unterminated quote, "
                       f"or a line break inside quotes, which fmctr does not read)")


@dataclass
class Source:
    """An opened input: its display name, format, column names and chunk stream.
    Text comes as RawChunks, to be split on `separator` (with `"` quoting if `quoted`)."""

    name: str
    format: str
    columns: list[str]
    chunks: Iterator[Chunk] | Iterator[RawChunk]
    separator: str | None = None
    quoted: bool = False


class _Prefixed(io.RawIOBase):
    """A read-only stream that replays bytes already peeked, then reads on."""

    def __init__(self, prefix: bytes, rest):
        self._prefix = memoryview(prefix)
        self._rest = rest

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        """Straight from the underlying stream once the prefix is used up (RawIOBase's
        own read would copy every block twice more)."""
        if not self._prefix:
            return self._rest.read(size)
        return super().read(size)

    def readinto(self, buffer) -> int:
        if self._prefix:
            n = min(len(buffer), len(self._prefix))
            buffer[:n] = self._prefix[:n]
            self._prefix = self._prefix[n:]
            return n
        data = self._rest.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def prefetch(items: Iterator, depth: int = 2) -> Iterator:
    """Run an iterator in a background thread, `depth` items ahead, so reading (which
    releases the GIL in pyarrow and polars) overlaps the consumer's work. Errors
    arrive in order; a consumer that stops early stops the thread."""
    done = object()
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def run() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        slots.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            slots.put((done, None))
        except BaseException as e:  # handed to the consumer, raised there
            slots.put((None, e))

    worker = threading.Thread(target=run, daemon=True, name="fmctr-prefetch")
    worker.start()
    try:
        while True:
            item, error = slots.get()
            if error is not None:
                raise error
            if item is done:
                return
            yield item
    finally:
        stop.set()


def display_name(path: str) -> str:
    return "<stdin>" if path == "-" else str(path)


def _open_bytes(path: str):
    if path == "-":
        if sys.stdin is None:
            raise BadInput("<stdin>: cannot read: it is closed")
        if sys.stdin.isatty():  # nothing piped in: a person would wait for ever
            raise BadInput("no input: give a data file, or pipe data in (stdin is a terminal)")
        # A reader of our own on fd 0, not sys.stdin.buffer: when a signal or an error
        # ends the run while the prefetch thread waits in a read, the interpreter's
        # shutdown would close sys.stdin and abort on the lock that read holds.
        try:
            return open(sys.stdin.fileno(), "rb", closefd=False)
        except (OSError, ValueError):  # no descriptor (a test runner's stdin)
            return sys.stdin.buffer
    p = Path(path)
    if p.is_dir():
        raise BadInput(f"{path}: is a directory, not a data file (a hashed dataset needs its manifest.json)")
    try:
        return open(p, "rb")
    except FileNotFoundError:
        raise BadInput(f"{path}: no such file") from None
    except OSError as e:
        raise BadInput(f"{path}: cannot open: {e.strerror}") from None


def _read_up_to(stream, n: int) -> bytes:
    parts, got = [], 0
    while got < n:
        data = stream.read(n - got)
        if not data:
            break
        parts.append(data)
        got += len(data)
    return b"".join(parts)


class _Gunzip(io.RawIOBase):
    """pyarrow's gzip decoder as a Python stream, with corruption reported as BadInput."""

    def __init__(self, raw, name: str):
        self._stream = pa.CompressedInputStream(pa.PythonFile(raw, mode="r"), "gzip")
        self._name = name

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        try:
            data = self._stream.read(len(buffer))
        except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as e:
            raise BadInput(f"{self._name}: corrupt or truncated gzip data ({_first_line(e)})") from None
        buffer[: len(data)] = data
        return len(data)


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def open_text(path: str) -> tuple[io.RawIOBase, bytes]:
    """Open `path` ("-" is stdin), undo gzip if the data is gzipped, and peek at the
    start. Returns a stream that still yields every byte, and the peeked bytes."""
    name = display_name(path)
    raw = _open_bytes(path)
    head = _read_up_to(raw, 2)
    stream = _Prefixed(head, raw)
    if head == GZIP_MAGIC:
        stream = _Gunzip(stream, name)
    peek = _read_up_to(stream, PEEK_BYTES)
    if len(peek) == PEEK_BYTES and b"\n" not in peek and not peek.startswith(PARQUET_MAGIC) and b"\x00" not in peek:
        peek = _whole_first_line(stream, peek, name)
    return _Prefixed(peek, stream), peek


def max_line_bytes() -> int:
    """The longest line fmctr reads (FMCTR_MAX_LINE_BYTES, or 64 MiB)."""
    text = os.environ.get(MAX_LINE_ENV)
    if text is None:
        return MAX_LINE_BYTES
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        value = 0
    if value < 1:
        raise BadOptions(f"{MAX_LINE_ENV} must be a number of bytes of at least 1, got {text!r}")
    return value


def _line_too_long(name: str, line: int, limit: int) -> BadInput:
    return BadInput(f"{name}:{line}: line longer than {limit:,} bytes; set {MAX_LINE_ENV} to read longer lines")


def _whole_first_line(stream, peek: bytes, name: str) -> bytes:
    """A header longer than the peek: read on to its end (the header names every column)."""
    limit = max_line_bytes()
    parts, size = [peek], len(peek)
    while size <= limit:
        more = _read_up_to(stream, size)  # doubling: few reads for a long line
        parts.append(more)
        size += len(more)
        if not more or b"\n" in more:
            break
    data = b"".join(parts)
    end = data.find(b"\n")
    if (end if end >= 0 else len(data)) > limit:
        raise _line_too_long(name, 1, limit)
    return data


def sniff_format(peek: bytes, hint: str | None) -> str:
    """Choose a format from the first bytes when the user or preset gave none."""
    if peek.startswith(PARQUET_MAGIC) and hint in (None, "csv", "tsv"):
        return "parquet"  # (a model trained on CSV scores the same columns in Parquet)
    if hint is not None:
        return hint
    first = peek.split(b"\n", 1)[0].decode("utf-8", errors="replace").rstrip("\r")
    if _SPARSE_LINE.match(first) and ":" in first:
        return "libffm" if re.search(r"\s[^\s:]+:[^\s:]+:[^\s:]+", first) else "libsvm"
    if "\t" in first:
        return "tsv"
    return "csv"


def _check_text(peek: bytes, name: str) -> None:
    """Refuse binary data up front, with the line of the first undecodable byte."""
    nul = peek.find(b"\x00")
    if nul >= 0:
        line = peek[:nul].count(b"\n") + 1
        raise BadInput(f"{name}:{line}: binary data (a NUL byte), not text")
    try:
        peek.decode("utf-8")
    except UnicodeDecodeError as e:
        if not (e.reason == "unexpected end of data" and len(peek) >= PEEK_BYTES):  # a character cut by the peek is fine
            line = peek[: e.start].count(b"\n") + 1
            raise BadInput(f"{name}:{line}: not valid UTF-8 text") from None


def open_source(path: str, *, format: str | None = None, column_names: tuple[str, ...] | None = None) -> Source:
    """Open any supported input as a stream of chunks: RawChunks of whole lines for
    text formats, string-column Chunks for Parquet."""
    name = display_name(path)
    if format is not None and format not in FORMATS:
        raise BadInput(f"unknown format {format!r} (choose from {', '.join(FORMATS)})")
    stream, peek = open_text(path)
    if not peek:
        raise BadInput(f"{name}: empty file")
    fmt = sniff_format(peek, format)
    if fmt == "parquet":
        return _open_parquet(stream if path == "-" else path, name)
    _check_text(peek, name)
    if fmt in SPARSE_FORMATS:
        return Source(name, fmt, [LINE_COLUMN], _raw_chunks(stream, 0, name), "\x1f")
    first, newline, _ = peek.partition(b"\n")
    first = first.rstrip(b"\r")
    if fmt == "criteo":
        names = list(column_names or ())
        n_fields = first.count(b"\t") + 1
        if n_fields == len(names) - 1:
            names = names[1:]  # Criteo test files carry no label column
        elif n_fields != len(names) and newline:
            raise BadInput(
                f"{name}:1: the criteo format has {len(names)} tab-separated columns "
                f"(or {len(names) - 1} without the label), found {n_fields}"
            )
        return Source(name, fmt, names, _raw_chunks(stream, 0, name), "\t")
    separator = "\t" if fmt == "tsv" else _csv_delimiter(peek)
    if fmt == "csv":
        check_quotes(first, name, 1)
    header_text = first.decode("utf-8", errors="replace").lstrip("\ufeff")
    try:
        names = next(csv.reader([header_text], delimiter=separator))
    except csv.Error as e:
        what = "a carriage return inside it" if "\r" in header_text else str(e)
        raise BadInput(f"{name}:1: unreadable header line ({what})") from None
    if not names or names == [""]:
        raise BadInput(f"{name}:1: the header line is empty")
    if _looks_like_data(names):
        raise BadInput(f"{name}:1: the first line looks like data, not a header ({', '.join(names[:4])}, ...); "
                       f"for Criteo's raw format give --preset criteo, otherwise add a header line "
                       f"or name the columns in a schema file (column_names)")
    _check_names(names, f"{name}:1")
    return Source(name, fmt, names, _raw_chunks(stream, 1, name), separator, quoted=fmt == "csv")


def _check_names(names: list[str], where: str, header: str = " in the header") -> None:
    """Every column needs a name of its own."""
    if "" in names:
        raise BadInput(f"{where}: column {names.index('') + 1} has no name{header} (pandas writes its index "
                       f"so: save with index=False, or name the column)")
    counts: dict[str, int] = {}
    for n in names:
        counts[n] = counts.get(n, 0) + 1
    dupes = sorted(n for n, c in counts.items() if c > 1)
    if dupes:
        raise BadInput(f"{where}: duplicate column name(s){header}: {', '.join(dupes)}")


def _csv_delimiter(peek: bytes) -> str:
    """',' unless the first lines have no comma but the same number of ';' (a
    European-style CSV) or of '|' on each line."""
    lines = peek.split(b"\n")[:2] if b"\n" in peek else [peek]
    if b"," not in lines[0]:
        for candidate in (b";", b"|"):
            counts = {line.rstrip(b"\r").count(candidate) for line in lines if line.strip()}
            if len(counts) == 1 and counts.pop() > 0:
                return candidate.decode()
    return ","


def _looks_like_data(names: list[str]) -> bool:
    """A header line of numbers and empty fields, starting with a 0/1 label: data
    without a header, such as Criteo's raw format read as TSV."""
    numeric = sum(1 for n in names if n == "" or n.lstrip("-").isdigit())
    return len(names) > 2 and names[0] in ("0", "1") and numeric >= max(2, len(names) / 4)


def _raw_chunks(stream, header_lines: int, name: str) -> Iterator[RawChunk]:
    """Blocks of whole lines, about RAW_BLOCK_BYTES each, after `header_lines` lines.
    A line longer than max_line_bytes() is an error (it would be held whole)."""
    limit = max_line_bytes()
    rest = b""
    line = 1
    skip = header_lines
    while True:
        block = stream.read(RAW_BLOCK_BYTES)
        if not block and not rest:
            return
        cut = block.rfind(b"\n") + 1 if block else len(block)
        if len(rest) + (block.find(b"\n") if cut else len(block)) > limit:
            raise _line_too_long(name, line, limit)  # the carried-over line, before it grows further
        if block and cut == 0:  # no line end yet: read on
            rest += block
            continue
        # One copy: the partial line carried over, then this block up to its last line end.
        lines = b"".join([rest, memoryview(block)[:cut]]) if block else rest
        rest = block[cut:]
        if limit < RAW_BLOCK_BYTES:  # (the default limit is above any line inside one block)
            _check_line_lengths(lines, name, line, limit)
        while skip and lines:
            end = lines.find(b"\n")
            lines = lines[end + 1 :] if end >= 0 else b""
            line += 1
            skip -= 1
        if lines:
            yield RawChunk(lines, line)
            line += lines.count(b"\n")
        if not block:
            return


def _check_line_lengths(lines: bytes, name: str, first_line: int, limit: int) -> None:
    data = np.frombuffer(lines, np.uint8)
    ends = np.concatenate([[-1], np.flatnonzero(data == 10), [len(data)]])
    lengths = np.diff(ends) - 1
    if lengths.max(initial=0) > limit:
        raise _line_too_long(name, first_line + int(np.argmax(lengths > limit)), limit)


class _Straddling(Exception):
    pass


def _csv_chunks(stream, name: str, names: list[str], separator: str, header_lines: int, quoted: bool,
                lines_before: int = 0, block: int = BLOCK_BYTES) -> Iterator[Chunk]:
    """Parse delimited text with pyarrow. `lines_before` counts lines of the file
    that precede `stream` (when it is a piece of a file), for line numbers."""
    bad: list = []

    def on_bad_row(row) -> str:
        bad.append(row)
        return "skip"

    try:
        reader = pacsv.open_csv(
            pa.PythonFile(stream, mode="r"),
            read_options=pacsv.ReadOptions(
                column_names=names, skip_rows=header_lines, use_threads=False, block_size=block
            ),
            parse_options=pacsv.ParseOptions(
                delimiter=separator,
                quote_char='"' if quoted else False,
                ignore_empty_lines=False,
                invalid_row_handler=on_bad_row,
            ),
            convert_options=pacsv.ConvertOptions(
                column_types={n: pa.string() for n in names}, strings_can_be_null=False
            ),
        )
    except pa.ArrowInvalid as e:
        if "Empty CSV file" in str(e):
            return iter(())
        if "straddling" in str(e):
            raise _Straddling() from None
        raise BadInput(_arrow_error(name, e)) from None
    return _batches(reader, name, header_lines, lines_before, bad)


def _batches(reader, name: str, header_lines: int, lines_before: int, bad: list) -> Iterator[Chunk]:
    line = lines_before + header_lines + 1
    while True:
        try:
            batch = reader.read_next_batch()
        except StopIteration:
            break
        except (pa.ArrowInvalid, pa.ArrowIOError) as e:
            if "straddling" in str(e):
                raise _Straddling() from None
            raise BadInput(_arrow_error(name, e)) from None
        if bad:
            row = bad[0]
            where = f"{name}:{row.number + lines_before}" if row.number is not None else name
            raise BadInput(f"{where}: expected {row.expected_columns} columns, found {row.actual_columns}")
        frame = pl.from_arrow(batch)
        assert isinstance(frame, pl.DataFrame)
        yield Chunk(frame, line)
        line += frame.height


_ARROW_PREFIX = re.compile(r"^(In CSV column #\d+: )?(CSV parse error: )?(Row #\d+: )?")


def _arrow_error(name: str, e: Exception) -> str:
    """pyarrow's CSV errors say 'In CSV column #C: Row #L: ...'; say file:line:column."""
    text = _first_line(e)
    row = re.search(r"Row #(\d+)", text)
    column = re.search(r"column #(\d+)", text)
    where = name + (f":{row.group(1)}" if row else "") + (f":{int(column.group(1)) + 1}" if row and column else "")
    if "invalid UTF8" in text:
        return f"{where}: not valid UTF-8 text"
    return f"{where}: {_ARROW_PREFIX.sub('', text)}"


def _open_parquet(source, name: str) -> Source:
    """A path is read row group by row group; stdin has to be read whole first."""
    import pyarrow.parquet as pq

    if not isinstance(source, str):
        source = pa.BufferReader(source.read())
    try:
        parquet = pq.ParquetFile(source)
        names = parquet.schema_arrow.names
    except (pa.ArrowInvalid, OSError) as e:
        raise BadInput(f"{name}: not a readable Parquet file ({_first_line(e)})") from None
    except UnicodeDecodeError:
        raise BadInput(f"{name}: a column name in the Parquet schema is not valid UTF-8") from None
    _check_names(names, name, "")

    def chunks() -> Iterator[Chunk]:
        try:
            for batch in parquet.iter_batches(batch_size=65536):
                frame = pl.from_arrow(batch)
                assert isinstance(frame, pl.DataFrame)
                yield Chunk(_as_strings(frame, name), None)
        except (pa.ArrowInvalid, OSError) as e:
            raise BadInput(f"{name}: corrupt Parquet data ({_first_line(e)})") from None

    return Source(name, "parquet", names, chunks())


def _as_strings(frame: pl.DataFrame, name: str) -> pl.DataFrame:
    """Parquet columns arrive typed; features are hashed from their text."""
    nested = [c for c, t in frame.schema.items() if t.is_nested()]
    if nested:
        raise BadInput(f"{name}: column {nested[0]!r} has nested type {frame.schema[nested[0]]}; fmctr reads flat columns")
    return frame.with_columns(pl.all().cast(pl.String).fill_null(""))
