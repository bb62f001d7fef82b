"""What every command module shares: the database and node of the command line's options, input and
output files, a progress bar, and modules imported on first use (so `custody --help` stays fast)."""
from __future__ import annotations

import importlib
import sys
from pathlib import Path


class OnFirstUse:
    """A module imported when one of its attributes is first used, so a handler pays only for its own."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr):
        return getattr(importlib.import_module(self._name), attr)


def sessions(args):
    from custody.store.db import open_database
    return open_database(args.db)


def in_transaction(fn):
    """A handler running `fn(session, args)` in one transaction: committed on success, rolled back on a refusal."""
    def handler(args):
        with sessions(args).begin() as s:
            return fn(s, args)
    return handler


def client(args):
    from custody.chain.node_client import NodeClient
    return NodeClient(args.node, user=args.rpcuser, password=args.rpcpassword, cookie_file=args.node_cookie,
                      datadir=args.node_datadir, network=args.network)


def read_text(path: str) -> str:
    return sys.stdin.read() if path == "-" else Path(path).read_text()


def emit_lines(text: str, file: str):
    """JSON Lines to standard output ("-") or to a file, with a count."""
    if file == "-":
        return text
    Path(file).write_text(text)
    return {"exported": text.count("\n"), "file": file}


def progress(done: int, total: int) -> None:
    if not sys.stderr.isatty() or total < 2:
        return
    width = 30
    filled = width * done // total
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} blocks")
    if done == total:
        sys.stderr.write("\n")
    sys.stderr.flush()
