"""Durable writes, one way for every writer: a temporary name, fsync, rename, fsync of the folder.

A reader (or a resumed run) sees the old file or the whole new one, never a part of it.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
from pathlib import Path


def temporary(path: Path) -> Path:
    """The dot-named temporary of `path` for this process (a stale one is removed on resume)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp.{os.getpid()}")


def commit(tmp: Path | str, path: Path | str, fd: int | None = None, sync_folder: bool = True) -> None:
    """Make a written temporary `path`: fsync it (its open `fd` if given), rename, fsync the folder."""
    if fd is None:
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    else:
        os.fsync(fd)
    os.replace(tmp, path)
    if sync_folder:
        fsync_dir(Path(path).parent)


@contextlib.contextmanager
def open_durable(path: Path, sync_folder: bool = True, buffering: int = -1):
    """`with open_durable(p) as f: f.write(...)`: `p` appears whole when the block ends, or not at
    all. `sync_folder=False` for a writer that syncs the folder once after many files."""
    tmp = temporary(path)
    try:
        with open(tmp, "wb", buffering=buffering) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if sync_folder:
        fsync_dir(Path(path).parent)


def write_bytes(path: Path, data: bytes, sync_folder: bool = True) -> None:
    with open_durable(path, sync_folder) as f:
        f.write(data)


def write_json(path: Path, value, indent: int | None = 1) -> None:
    write_bytes(path, (json.dumps(value, indent=indent, sort_keys=False) + "\n").encode())


def append_line(path: Path, line: bytes) -> None:
    """Append one line and fsync it: a journal's commit point (a torn last line is ignored on read)."""
    with open(path, "ab") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync_file_range():
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):  # not Linux
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    return function


_SYNC_FILE_RANGE = _sync_file_range()


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Start writing these bytes to disk without waiting (Linux's sync_file_range), so that the
    fsync which makes a file durable later waits for little; elsewhere, nothing."""
    if _SYNC_FILE_RANGE is not None and length > 0:
        _SYNC_FILE_RANGE(fd, offset, length, 2)  # SYNC_FILE_RANGE_WRITE
