"""The kernel's block files (`blocks/blkNNNNN.dat`) read directly, as Core's -reindex reads them.

Each record is the network magic, a 4-byte length and the block; since Core 28 every byte is XORed
with the 8-byte key in `blocks/xor.dat`, at the byte's file offset. libbitcoinkernel writes (and
closes) a block's record before `process_block` returns, but writes the block index that points at it
only when it flushes: periodically, when its cache is full, and on a clean shutdown. So after a kill
the files hold blocks the index has never heard of, and this module is how start-up finds them.
"""
from __future__ import annotations

import mmap
import struct
from pathlib import Path
from typing import Callable, Iterator

from .mempool_persist import xor_at
from .serialize import sha256d

REGTEST_MAGIC = bytes.fromhex("fabfb5da")
HEADER_SIZE = 80


def xor_key(blocks_dir: Path) -> bytes:
    try:
        key = (blocks_dir / "xor.dat").read_bytes()
    except FileNotFoundError:
        return bytes(8)            # block files written before Core 28 are not obfuscated
    return key[:8] if len(key) >= 8 else bytes(8)


def block_files(blocks_dir: Path) -> list[Path]:
    files, n = [], 0
    while (path := blocks_dir / f"blk{n:05d}.dat").exists():
        files.append(path)
        n += 1
    return files


def scan(blocks_dir: Path) -> Iterator[tuple[bytes, Callable[[], bytes]]]:
    """(block hash, function returning the block's bytes) for every whole record, in file order (the order
    the kernel accepted them, so a parent always comes before its children). A file is read up to its
    first byte that does not start a whole record: the kernel's pre-allocated, still unwritten space, or
    the torn end of a block that was being written when the process died. A record's function reads the
    mapped file, so call it before asking for the next record."""
    blocks_dir = Path(blocks_dir)
    key = xor_key(blocks_dir)
    for path in block_files(blocks_dir):
        with open(path, "rb") as f:
            try:
                data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            except ValueError:     # an empty file
                continue
        with data:
            size = len(data)
            pos = 0
            while pos + 8 + HEADER_SIZE <= size:
                record = xor_at(data[pos:pos + 8], key, pos)
                length = struct.unpack("<I", record[4:])[0]
                start = pos + 8
                if record[:4] != REGTEST_MAGIC or length < HEADER_SIZE or start + length > size:
                    break
                block_hash = sha256d(xor_at(data[start:start + HEADER_SIZE], key, start))
                yield block_hash, (lambda s=start, n=length: xor_at(data[s:s + n], key, s))
                pos = start + length
