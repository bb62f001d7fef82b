"""`custody-regtest`: run the embedded regtest node in the foreground, like `bitcoind -regtest`."""
from __future__ import annotations

import fcntl
import logging
import secrets
import signal
import sys
import threading
from pathlib import Path

from . import durable, options
from .node import Node
from .server import RPCServer


USAGE = """Usage: custody-regtest -datadir=DIR [options]

A regtest node that validates with Bitcoin Core's own engine (libbitcoinkernel) and answers Bitcoin
Core's JSON-RPC on 127.0.0.1. Options are Bitcoin Core's, in its syntax (-name=value, -noname):
  -datadir=<dir>  -rpcport=<port> (18443)  -rpcuser=<user> -rpcpassword=<pw> (else a cookie)
  -txindex (0)  -persistmempool (1)  -acceptnonstdtxn (0)  -datacarrier (1)  -datacarriersize=<n> (83)
  -minrelaytxfee=<amt> (0.000001)  -incrementalrelayfee=<amt> (0.000001)  -mempoolexpiry=<hours> (336)
  -reindex  -reindex-chainstate  -mocktime=<t>  -testactivationheight=name@height  -debug  -regtest
  -server  -listen=0
"""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a.lstrip("-") in ("h", "help", "?") for a in argv):
        print(USAGE, end="")
        return 0
    try:
        args = options.parse(argv)
    except options.OptionError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")

    netdir = args.datadir / "regtest"
    netdir.mkdir(parents=True, exist_ok=True)
    lock_file = open(netdir / ".lock", "a")
    try:
        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        print(f"Error: Cannot obtain a lock on directory {netdir}. custody-regtest is probably already running.",
              file=sys.stderr)
        return 1

    cookie = None
    if args.rpcuser:
        credentials = (args.rpcuser, args.rpcpassword)
    else:
        credentials = ("__cookie__", secrets.token_hex(32))
        cookie = netdir / ".cookie"
        durable.write_atomic(cookie, ":".join(credentials).encode(), mode=0o600)

    try:
        node = Node(netdir, args.node)
    except Exception as e:
        print(f"Error: cannot open the chain in {netdir}: {e}", file=sys.stderr)
        return 1
    try:
        server = RPCServer(node, args.rpcport, credentials)
    except OSError as e:
        node.close()
        print(f"Error: Unable to bind to 127.0.0.1:{args.rpcport} for RPC: {e.strerror}", file=sys.stderr)
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
    node.scheduler.start()
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
