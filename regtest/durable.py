"""Writing the node's own files so that a crash never leaves a torn one.

Every file is written whole to `NAME.new` (the name Bitcoin Core gives its mempool dump), fsynced,
renamed over the old file, and the directory fsynced: a kill or a power cut at any moment leaves
either the old file or the new one, never a mix. A leftover `NAME.new` is never read.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path

from . import faults

_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


def _lock_for(path: Path) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(str(path), threading.Lock())


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path | str, data: bytes, *, mode: int = 0o644) -> None:
    """Replace `path` with `data`: temporary file, fsync, rename, fsync of the directory."""
    path = Path(path)
    name = path.name
    tmp = path.with_name(name + ".new")
    with _lock_for(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        try:
            half = len(data) // 2
            _write_all(fd, data[:half])
            faults.point(f"{name}:torn-write")
            _write_all(fd, data[half:])
            faults.lose_unsynced(f"{name}:power-loss", tmp, half)
            os.fsync(fd)
        finally:
            os.close(fd)
        faults.point(f"{name}:before-rename")
        if faults.arrived(f"{name}:rename-lost"):
            _lose_rename(path, tmp)
        os.replace(tmp, path)
        faults.point(f"{name}:before-dirsync")
        fsync_dir(path.parent)


def _lose_rename(path: Path, tmp: Path) -> None:
    """Fault: rename, then undo it as a power cut before the directory's fsync can (the directory entries
    are as they were: the old file at `path`, if there was one, and the new data at NAME.new), and die."""
    keep = path.with_name(path.name + ".fault-old")
    had_old = path.exists()
    if had_old:
        os.link(path, keep)
    os.replace(tmp, path)
    os.link(path, tmp)
    if had_old:
        os.replace(keep, path)
    else:
        path.unlink()
    faults.die(f"{path.name}:rename-lost")


def remove(path: Path | str) -> bool:
    """Delete `path` durably (the directory is fsynced). Returns whether it existed."""
    path = Path(path)
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    fsync_dir(path.parent)
    return True


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
