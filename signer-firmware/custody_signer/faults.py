"""Power cuts on demand, for tests: inert unless one of its environment variables is set.

Every durable write of the signer (`durable.atomic_write`, `durable.append`) and every named step of a
firmware install passes fault points. A point is named `<file>:<stage>` for a write, where the stage is
  partly written   half the new bytes are in the temporary file
  written          all of them are, nothing fsynced yet
  synced           the file is fsynced, not yet renamed over its target (for an append: not yet the directory)
  renamed          the rename is done, the directory not yet fsynced
or a step of the flash (`verified`, `slot written`, `pending recorded`, `pending verified at boot`).

  SIGNER_FAULT=PATTERN[@N]    SIGKILL this process the N-th time (default: the first) it reaches a point
                              matching PATTERN (fnmatch: `seed.hex:synced`, `boot.json:*@2`, `*:renamed`)
  SIGNER_FAULT_TRACE=FILE     append the name of every point reached to FILE, one a line (how a test lists
                              the points of an operation, to kill it at each)
  SIGNER_FAULT_JOURNAL=FILE   record in FILE every change not yet durable; after the process is killed,
                              `drop_unsynced(FILE)` removes what a power cut could lose on ext4: the
                              data of files written but not fsynced, renames and new files whose directory
                              was not fsynced (the renamed-over file comes back from a hard link taken
                              before the rename).

A SIGKILL alone loses nothing the process wrote (the kernel's page cache survives it); the journal is what
turns it into a power cut. The module imports nothing from the rest of the project.
"""
from __future__ import annotations

import fnmatch
import json
import os
import shutil
import signal
from pathlib import Path

FAULT, TRACE, JOURNAL = "SIGNER_FAULT", "SIGNER_FAULT_TRACE", "SIGNER_FAULT_JOURNAL"
_hits: dict[str, int] = {}
_backups = 0


def reached(point: str) -> None:
    """The process is at `point`: trace it, and die here if SIGNER_FAULT names it."""
    trace = os.environ.get(TRACE)
    if trace:
        _append(trace, point + "\n")
    spec = os.environ.get(FAULT)
    if not spec:
        return
    pattern, _, nth = spec.partition("@")
    if fnmatch.fnmatchcase(point, pattern):
        _hits[spec] = _hits.get(spec, 0) + 1
        if _hits[spec] == int(nth or 1):
            os.kill(os.getpid(), signal.SIGKILL)


# -- the journal of changes not yet durable ------------------------------------------------------------
def note(op: str, **fields) -> None:
    """Journal one change (paths absolute): create, data (bytes past `size` not fsynced), fsync, rename, dirsync."""
    journal = os.environ.get(JOURNAL)
    if journal:
        paths = {k: os.path.abspath(v) for k, v in fields.items() if k in ("path", "src", "dst", "dir") and v}
        _append(journal, json.dumps({"op": op, **fields, **paths}) + "\n")


def keep_old(path: Path) -> str | None:
    """Before `path` is renamed over: a hard link to its current content, so a dropped rename can bring it
    back. None when not journaling or when there is nothing to keep."""
    global _backups
    journal = os.environ.get(JOURNAL)
    if not journal or not os.path.exists(path):
        return None
    folder = Path(journal + ".old")
    folder.mkdir(exist_ok=True)
    _backups += 1
    backup = folder / f"{os.getpid()}-{_backups}-{Path(path).name}"
    try:
        os.link(path, backup)
    except OSError:                                   # another file system: a copy will do
        shutil.copy2(path, backup)
    return str(backup)


def forget(backup: str | None) -> None:
    """The rename is durable: its backup is no longer needed."""
    if backup:
        try:
            os.unlink(backup)
        except FileNotFoundError:
            pass


def drop_unsynced(journal: Path | str, keep: float = 0.0) -> list[str]:
    """Do to the files what a power cut right now would: data written but not fsynced keeps only `keep` of
    its new bytes (0: a zero-length file, as ext4's delayed allocation leaves; 0.5: a torn write), renames
    and new directory entries not followed by an fsync of their directory are undone. Returns what was
    lost, one line per change, and empties the journal. Call it only once the process is dead."""
    journal = Path(journal)
    entries = []
    if journal.exists():
        for line in journal.read_text().splitlines():
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    unsynced: dict[str, int] = {}             # path -> size that is durable
    renames: list[tuple[str, str, str | None]] = []
    created: list[str] = []
    for entry in entries:
        op = entry["op"]
        if op == "data":
            unsynced[entry["path"]] = min(unsynced.get(entry["path"], entry["size"]), entry["size"])
        elif op == "fsync":
            unsynced.pop(entry["path"], None)
        elif op == "create":
            created.append(entry["path"])
        elif op == "rename":
            renames.append((entry["src"], entry["dst"], entry.get("backup")))
            if entry["src"] in unsynced:            # unsynced data travels with its inode
                unsynced[entry["dst"]] = unsynced.pop(entry["src"])
        elif op == "dirsync":
            renames = [r for r in renames if os.path.dirname(r[1]) != entry["dir"]]
            created = [c for c in created if os.path.dirname(c) != entry["dir"]]
    lost = []
    for path, size in unsynced.items():
        if os.path.exists(path):
            length = os.path.getsize(path)
            kept = size + int((length - size) * keep)
            os.truncate(path, kept)
            lost.append(f"data: {path} cut from {length} to {kept} bytes")
    for src, dst, backup in reversed(renames):
        if os.path.exists(dst):
            os.replace(dst, src)
            if backup and os.path.exists(backup):
                os.replace(backup, dst)
            lost.append(f"rename: {src} -> {dst} undone")
    for path in created:
        if os.path.exists(path):
            os.unlink(path)
            lost.append(f"create: {path} removed")
    shutil.rmtree(str(journal) + ".old", ignore_errors=True)
    journal.write_text("")
    return lost


def _append(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)
