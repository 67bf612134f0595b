"""Every file fmctr writes appears whole or not at all: write a temp file beside the
target, then rename it over the target. A failure removes the temp file."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fmctr.errors import BadOptions


def _temp_beside(path: Path, *, directory: bool) -> Path:
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise BadOptions(f"{path}: cannot write: directory {parent} does not exist")
    try:
        if directory:
            return Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent))
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
        os.close(fd)
        return Path(name)
    except OSError as e:
        raise BadOptions(f"{path}: cannot write: {e.strerror}") from None


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
def atomic_file(path: Path | str) -> Iterator[Path]:
    """Yield a temp path to write; on success it replaces `path`."""
    path = Path(path)
    if path.is_dir():
        raise BadOptions(f"{path}: is a directory; give a file name to write")
    tmp = _temp_beside(path, directory=False)
    try:
        yield tmp
        _publish(tmp, path, 0o666)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_dir(path: Path | str) -> Iterator[Path]:
    """Yield a temp directory to fill; on success it replaces `path`."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise BadOptions(f"{path}: exists and is not a directory")
    tmp = _temp_beside(path, directory=True)
    try:
        yield tmp
        for file in tmp.iterdir():
            os.chmod(file, 0o666 & ~_umask())
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            _publish(tmp, path, 0o777)
            shutil.rmtree(old, ignore_errors=True)
        else:
            _publish(tmp, path, 0o777)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_bytes(path: Path | str, data: bytes) -> None:
    with atomic_file(path) as tmp:
        try:
            tmp.write_bytes(data)
        except OSError as e:
            raise BadOptions(f"{path}: cannot write: {e.strerror}") from None
