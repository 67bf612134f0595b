"""The one output layer: every file and directory fmctr writes goes through here.

- A file or directory appears whole or not at all: a temp beside the target is
  renamed over it when complete; a failure or a signal removes the temp.
- `-` (stdout), FIFOs and character devices (/dev/null) are written through as
  streams: they cannot be renamed over, and must not be replaced by a regular file.
- A symlink stays a link: its target is replaced (the temp is made beside the target).
- `check_output`, called before any data is read, refuses to replace what fmctr did
  not write (a directory that is not a hashed dataset, a data file where a model
  goes) unless forced, and never writes over an input of the same command.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import stat
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Union

from fmctr.errors import BadOptions

STDOUT = "-"


@dataclass(frozen=True)
class Kind:
    """What an output is: an existing path is replaced only if `recognise` says it is
    one of these (or it is empty), unless forced."""

    noun: str  # "an fmctr model file"
    recognise: Callable[[Path], bool]
    directory: bool = False


@dataclass(frozen=True)
class Output:
    """Where one output goes, decided before any data is read."""

    name: str  # as given, for messages
    path: Path | None  # the file or directory to replace (a symlink's target); the device or FIFO of a stream
    stream: bool = False  # written through: stdout, a FIFO, a character device


Target = Union[Output, str, Path]


def _cannot(name: str, e: OSError) -> BadOptions:
    return BadOptions(f"{name}: cannot write: {e.strerror or e}")


def resolve(target: Target, *, directory: bool = False) -> Output:
    """Classify an output path: a stream, or a file/directory (symlinks followed) to
    replace through a temp beside it. Checks that its directory exists and is writable."""
    if isinstance(target, Output):
        return target
    name = str(target)
    what = "a hashed dataset is a directory" if directory else ""
    if name == STDOUT:
        if directory:
            raise BadOptions(f"-o -: {what}; it cannot go to stdout")
        return Output(name, None, stream=True)
    path = Path(target)
    try:
        mode = os.stat(path).st_mode  # follows symlinks
    except FileNotFoundError:
        mode = None
    except OSError as e:
        raise _cannot(name, e) from None
    if mode is not None and (stat.S_ISCHR(mode) or stat.S_ISFIFO(mode)):
        if directory:
            raise BadOptions(f"{name}: exists and is not a directory")
        return Output(name, path, stream=True)
    if mode is not None and stat.S_ISDIR(mode) and not directory:
        raise BadOptions(f"{name}: is a directory; give a file name to write")
    if mode is not None and not stat.S_ISDIR(mode) and directory:
        raise BadOptions(f"{name}: exists and is not a directory")
    if mode is not None and not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
        raise BadOptions(f"{name}: is neither a file nor a directory; refusing to write to it")
    real = Path(os.path.realpath(path)) if path.is_symlink() else path
    _check_parent(name, real)
    return Output(name, real)


def _check_parent(name: str, path: Path) -> None:
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise BadOptions(f"{name}: cannot write: directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise BadOptions(f"{name}: cannot write: no permission to write in directory {parent}")


def check_output(target: Target, kind: Kind, *, inputs: Sequence[object] = (), force: bool = False) -> Output:
    """`target` resolved and checked, before any data is read: never one of `inputs`
    (the command's data, validation data, model), and, unless `force`, an existing
    path only if it is empty or `kind` recognises it. An Output passes unchanged
    (it was checked when it was made)."""
    if isinstance(target, Output):
        return target
    out = resolve(target, directory=kind.directory)
    if out.stream:
        return out
    for given in inputs:
        if given is not None and str(given) != "-" and _overlaps(out.path, str(given), kind.directory):
            raise BadOptions(f"{out.name}: is also an input of this command ({given}); give another output")
    if not force and out.path.exists() and not _empty(out.path) and not kind.recognise(out.path):
        raise BadOptions(f"{out.name}: exists and is not {kind.noun}; refusing to replace it (--force replaces it)")
    return out


def _overlaps(path: Path, given: str, directory: bool) -> bool:
    """The same file (hard and symbolic links included); for a directory output, one
    inside the other too."""
    dest = os.path.realpath(path)
    for match in glob.glob(given) or [given]:
        try:
            if os.path.samefile(path, match):
                return True
        except OSError:
            pass
        src = os.path.realpath(match)
        if src == dest or (directory and (src.startswith(dest + os.sep) or dest.startswith(src + os.sep))):
            return True
    return False


def _empty(path: Path) -> bool:
    return not any(path.iterdir()) if path.is_dir() else path.stat().st_size == 0


def _temp_beside(out: Output, *, directory: bool) -> Path:
    path = out.path
    try:
        if directory:
            return Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        return Path(name)
    except OSError as e:
        raise _cannot(out.name, e) from None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _publish(tmp: Path, path: Path, mode: int) -> None:
    """Give the temp file the permissions a plainly created file would have (mkstemp
    makes it private), then rename it into place."""
    os.chmod(tmp, mode & ~_umask())
    os.replace(tmp, path)


@contextmanager
def _signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM wait while an output is put in place, so that a signal
    finds the old output or the new one, never neither or a leftover."""
    held = {signal.SIGINT, signal.SIGTERM}
    try:
        before = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    except (AttributeError, ValueError, OSError):  # no such call here
        yield
        return
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def _swap_dir(tmp: Path, path: Path) -> None:
    """The new directory in place of the old one, which is then removed."""
    if not path.exists():
        _publish(tmp, path, 0o777)
        return
    old = path.with_name(f".{path.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(path, old)
    try:
        _publish(tmp, path, 0o777)
    except BaseException:
        os.replace(old, path)
        raise
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def _write_errors(name: str) -> Iterator[None]:
    """A failing write (a full disk, /dev/full, a closed stream) is one error naming the
    output; a reader that went away (`| head`) is left to the CLI, which stops quietly."""
    try:
        yield
    except BrokenPipeError:
        raise
    except OSError as e:
        raise _cannot(name, e) from None


@contextmanager
def _stream(out: Output) -> Iterator[BinaryIO]:
    if out.path is None:
        if sys.stdout is None:
            raise BadOptions("stdout: cannot write: it is closed")
        with _write_errors("stdout"):
            sys.stdout.flush()
            yield sys.stdout.buffer
            sys.stdout.buffer.flush()
        return
    with _write_errors(out.name), open(out.path, "wb") as f:
        yield f


@contextmanager
def writing(target: Target) -> Iterator[BinaryIO]:
    """A binary file to write `target` through: a temp file renamed over it on
    success, or the stream itself."""
    out = resolve(target)
    if out.stream:
        with _stream(out) as f:
            yield f
        return
    tmp = None
    try:
        with _signals_held():  # a signal now would find the temp and not its name
            tmp = _temp_beside(out, directory=False)
        with _write_errors(out.name), open(tmp, "wb") as f:
            yield f
        with _signals_held():
            _publish(tmp, out.path, 0o666)
    except BaseException:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_dir(target: Target) -> Iterator[Path]:
    """Yield a temp directory to fill; on success it replaces the target directory."""
    out = resolve(target, directory=True)
    path = out.path
    tmp = None
    try:
        with _signals_held():
            tmp = _temp_beside(out, directory=True)
        yield tmp
        for file in tmp.iterdir():
            os.chmod(file, 0o666 & ~_umask())
        with _signals_held():
            _swap_dir(tmp, path)
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextmanager
def scratch_dir(prefix: str = "fmctr-") -> Iterator[Path]:
    """A private temporary directory (under $TMPDIR), removed on the way out, on an
    error or a signal too."""
    tmp = None
    try:
        with _signals_held():
            try:
                tmp = Path(tempfile.mkdtemp(prefix=prefix))
            except OSError as e:
                raise _cannot(f"temporary directory {tempfile.gettempdir()}", e) from None
        yield tmp
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def write_bytes(target: Target, data: bytes) -> None:
    with writing(target) as f:
        f.write(data)
