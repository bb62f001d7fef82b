"""Start a regtest node for tests, benchmarks and demos: the embedded one, or real `bitcoind`.

With `BITCOIND=/path/to/bitcoind` set, the same callers get Bitcoin Core itself, so one test suite
and one chain client run against both.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RunningNode:
    kind: str                 # "embedded" or "bitcoind"
    datadir: Path
    port: int
    process: subprocess.Popen
    log_path: Path
    fixed_credentials: tuple[str, str] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def cookie_file(self) -> Path:
        return self.datadir / "regtest" / ".cookie"

    def credentials(self) -> tuple[str, str]:
        if self.fixed_credentials:
            return self.fixed_credentials
        user, _, password = self.cookie_file.read_text().strip().partition(":")
        return user, password

    def stop(self, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def start_node(datadir: Path, *, port: int | None = None, bitcoind: str | None = None,
               extra_args: list[str] = (), credentials: tuple[str, str] | None = None,
               timeout: float = 60) -> RunningNode:
    """Start a node in DATADIR and wait until its RPC answers. `bitcoind` defaults to $BITCOIND."""
    datadir = Path(datadir)
    datadir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    bitcoind = bitcoind if bitcoind is not None else os.environ.get("BITCOIND")
    log_path = datadir / "node.log"
    if bitcoind:
        kind = "bitcoind"
        cmd = [bitcoind, "-regtest", f"-datadir={datadir}", f"-rpcport={port}", "-rpcbind=127.0.0.1",
               "-rpcallowip=127.0.0.1", "-listen=0", "-txindex=1", "-server=1", "-fallbackfee=0.0001",
               "-disablewallet=0", "-printtoconsole=0", f"-port={free_port()}", *extra_args]
    else:
        kind = "embedded"
        exe = shutil.which("custody-regtest", path=str(Path(sys.executable).parent)) or shutil.which("custody-regtest")
        prefix = [exe] if exe else [sys.executable, "-m", "regtest.cli"]
        cmd = prefix + [f"-datadir={datadir}", f"-rpcport={port}", "-txindex=1", *extra_args]
    log = open(log_path, "ab")
    process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    node = RunningNode(kind, datadir, port, process, log_path, credentials)
    _wait_ready(node, timeout)
    return node


def _wait_ready(node: RunningNode, timeout: float) -> None:
    import base64
    import http.client
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if node.process.poll() is not None:
            raise RuntimeError(f"{node.kind} node exited with code {node.process.returncode}: "
                               f"{node.log_path.read_text(errors='replace')[-2000:]}")
        if node.fixed_credentials or node.cookie_file.exists():
            try:
                user, password = node.credentials()
                conn = http.client.HTTPConnection("127.0.0.1", node.port, timeout=5)
                auth = base64.b64encode(f"{user}:{password}".encode()).decode()
                conn.request("POST", "/", b'{"method":"getblockcount","params":[],"id":0}',
                             {"Authorization": f"Basic {auth}"})
                status = conn.getresponse().status
                conn.close()
                if status == 200:
                    return
            except (OSError, http.client.HTTPException):
                pass
        time.sleep(0.005)         # fine-grained: start-up is a benchmark figure
    node.kill()
    raise RuntimeError(f"{node.kind} node did not answer RPC within {timeout}s")
