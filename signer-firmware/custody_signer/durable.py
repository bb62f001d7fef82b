"""The one way the signer writes its state, so that a power cut at any instant leaves the old state or the new.

`atomic_write` replaces a file whole: the bytes go to a temporary file in the same directory, which is
flushed and fsynced, renamed over the target, and then the directory is fsynced (without it the rename
itself may not survive a cut). A file present under its name is therefore always complete: a reader, a
restart or a power cut sees the old content or the new, never half, never zero bytes.
`append` adds to a log (decision log, screen): fsynced before it returns, its directory fsynced when the
file is new; a cut during an append can leave at most a torn last line, which `drop_torn_tail` removes at
the next start (the append never returned, so nothing acted on it).
`make_dirs` creates directories durably. Each step passes a fault point (see `faults`).
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from . import faults

TEMPORARY = ".tmp"              # temporary files are ".<name>.<random>.tmp" next to their target
_entries_synced: set[str] = set()  # files whose directory entry this process has made durable


def atomic_write(path: Path | str, data: bytes | str, *, mode: int = 0o600,
                 crash_at: Callable[[str], None] | None = None) -> None:
    """Replace `path` with `data`, durably (see the module). `crash_at`, if given, is called at each fault
    point too (a test's in-process power cut raises from it)."""
    path = Path(path)
    data = data.encode() if isinstance(data, str) else bytes(data)

    def point(stage: str) -> None:
        name = f"{path.name}:{stage}"
        faults.reached(name)
        if crash_at:
            crash_at(name)

    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMPORARY, dir=path.parent)
    faults.note("create", path=temporary)
    faults.note("data", path=temporary, size=0)
    try:
        with os.fdopen(fd, "wb") as f:
            if mode != 0o600:
                os.fchmod(f.fileno(), mode)
            half = len(data) // 2
            f.write(data[:half])
            f.flush()
            point("partly written")
            f.write(data[half:])
            f.flush()
            point("written")
            os.fsync(f.fileno())
        faults.note("fsync", path=temporary)
        point("synced")
        backup = faults.keep_old(path)
        os.replace(temporary, path)
    except OSError:                                   # a full disk, say: leave no temporary file behind
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise
    faults.note("rename", src=temporary, dst=str(path), backup=backup)
    point("renamed")
    sync_dir(path.parent)
    faults.note("dirsync", dir=str(path.parent))
    faults.forget(backup)
    _entries_synced.add(os.path.abspath(path))


def append(path: Path | str, data: bytes | str, *, mode: int = 0o600) -> None:
    """Append `data` to `path` (created if missing) and make it durable before returning."""
    path = Path(path)
    data = data.encode() if isinstance(data, str) else bytes(data)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, mode)
        created = True
        faults.note("create", path=str(path))
    except FileExistsError:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        created = False
    try:
        faults.note("data", path=str(path), size=os.fstat(fd).st_size)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        faults.reached(f"{path.name}:written")
        os.fsync(fd)
        faults.note("fsync", path=str(path))
    finally:
        os.close(fd)
    key = os.path.abspath(path)
    if created or key not in _entries_synced:         # new, or made by a process that may have died first
        faults.reached(f"{path.name}:synced")
        sync_dir(path.parent)
        faults.note("dirsync", dir=str(path.parent))
        _entries_synced.add(key)


def drop_torn_tail(path: Path | str) -> int:
    """Cut a log back to its last complete line (one ending in a newline); returns the bytes removed. A torn
    line is an append a power cut interrupted before it was fsynced, so before anything acted on it."""
    path = Path(path)
    try:
        with open(path, "rb+") as f:
            size = f.seek(0, os.SEEK_END)
            position = size
            while position > 0:
                step = min(4096, position)
                f.seek(position - step)
                block = f.read(step)
                newline = block.rfind(b"\n")
                if newline >= 0:
                    position = position - step + newline + 1
                    break
                position -= step
            if position == size:
                return 0
            f.truncate(position)
            f.flush()
            os.fsync(f.fileno())
            return size - position
    except FileNotFoundError:
        return 0


def make_dirs(path: Path | str, mode: int = 0o700) -> Path:
    """Create `path` and any missing parents, each made durable in its parent directory."""
    path = Path(path)
    missing = []
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, mode)
        except FileExistsError:
            pass
        sync_dir(directory.parent)
    if not missing:                      # it exists: its entry may still be unsynced if a process died early
        sync_dir(path.parent)
    return Path(missing[0]) if missing else path


def sync_dir(directory: Path | str) -> None:
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_back(path: Path | str) -> bytes:
    """A file's bytes as stored: its cached pages are dropped first (after an fsync they are clean), so the
    read comes from the disk, not from what the process just wrote into memory."""
    with open(path, "rb") as f:
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        return f.read()


def remove_temporaries(directory: Path | str) -> list[str]:
    """Delete temporary files a killed writer left behind (never renamed, so never part of the state)."""
    removed = []
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return removed
    for name in names:
        if name.startswith(".") and name.endswith(TEMPORARY):
            try:
                os.unlink(os.path.join(directory, name))
                removed.append(name)
            except FileNotFoundError:
                pass
    return removed
