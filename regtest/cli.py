"""`custody-regtest`: run the embedded regtest node in the foreground, like `bitcoind -regtest`."""
from __future__ import annotations

import argparse
import fcntl
import logging
import os
import secrets
import signal
import sys
import threading
from pathlib import Path

from .node import Node
from .server import RPCServer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="custody-regtest",
        description="A regtest node that validates with Bitcoin Core's own engine (libbitcoinkernel) "
                    "and answers Bitcoin Core's JSON-RPC on 127.0.0.1.")
    parser.add_argument("--datadir", required=True, type=Path, help="data directory (chain in DATADIR/regtest)")
    parser.add_argument("--rpcport", type=int, default=18443)
    parser.add_argument("--rpcuser")
    parser.add_argument("--rpcpassword")
    parser.add_argument("--debug", action="store_true", help="log every RPC call")
    args = parser.parse_args(argv)
    if bool(args.rpcuser) != bool(args.rpcpassword):
        parser.error("--rpcuser and --rpcpassword go together")
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")

    netdir = args.datadir / "regtest"
    netdir.mkdir(parents=True, exist_ok=True)
    lock_file = open(netdir / ".lock", "a")
    try:
        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        print(f"custody-regtest: cannot obtain a lock on data directory {netdir}: "
              "another node is probably already running there", file=sys.stderr)
        return 1

    cookie = None
    if args.rpcuser:
        credentials = (args.rpcuser, args.rpcpassword)
    else:
        credentials = ("__cookie__", secrets.token_hex(32))
        cookie = netdir / ".cookie"
        tmp = cookie.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(":".join(credentials))
        os.replace(tmp, cookie)

    try:
        node = Node(netdir)
    except Exception as e:
        print(f"custody-regtest: cannot open the chain in {netdir}: {e}", file=sys.stderr)
        return 1
    try:
        server = RPCServer(node, args.rpcport, credentials)
    except OSError as e:
        node.close()
        print(f"custody-regtest: cannot bind RPC on 127.0.0.1:{args.rpcport}: {e.strerror}", file=sys.stderr)
        return 1

    def on_signal(signum, _frame):
        node.stopping.set()
        server.request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    logging.getLogger("regtest").info("regtest node ready: height %d, RPC on 127.0.0.1:%d, datadir %s",
                                      node.chain.height, args.rpcport, netdir)
    serve = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    serve.start()
    while serve.is_alive():
        serve.join(0.2)
    server.server_close()
    node.close()
    if cookie is not None:
        cookie.unlink(missing_ok=True)
    logging.getLogger("regtest").info("regtest node stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
