"""Waiting on what a test started (a node, `custody serve`, a sync worker, a simulated signer) without racing
a clock. Every wait has one generous bound, stops as soon as the process it waits on has exited, and fails
with what that process wrote, so a slow machine costs time, never a false failure, and a real failure says
why."""
from __future__ import annotations

import http.client
import json
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Iterable, TypeVar

READY_TIMEOUT = 120.0      # s: a server start or a background catch-up on a busy 2-core machine
STOP_TIMEOUT = 60.0        # s: a terminated process reaped before it is killed
_TAIL = 6_000              # characters of each output shown on a failure

T = TypeVar("T")


class NotReady(AssertionError):
    """What a test waited for did not happen; the message carries the process's own output."""


def _text(data) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else str(data)


def process_output(process: subprocess.Popen | None = None, logs: Iterable[Path | str] = ()) -> str:
    """What a process said: whatever its pipes hold once it has exited, and the tail of each log file."""
    parts = []
    if process is not None and process.poll() is not None and (process.stdout or process.stderr):
        try:
            out, err = process.communicate(timeout=10)
        except (subprocess.TimeoutExpired, ValueError, OSError) as e:   # a child still holds a pipe
            out, err = None, f"(could not read its pipes: {e})"
        for name, data in (("stdout", out), ("stderr", err)):
            if data:
                parts.append(f"--- its {name} ---\n{_text(data)[-_TAIL:]}")
    for log in logs:
        path = Path(log)
        if not path.exists():
            continue
        parts.append(f"--- {path} ---\n{path.read_text(errors='replace')[-_TAIL:]}")
    return "\n".join(parts) or "(it wrote nothing)"


def stop(process: subprocess.Popen | None, timeout: float = STOP_TIMEOUT) -> int | None:
    """Terminate a process this test started and reap it; kill it if it ignores SIGTERM for `timeout` s."""
    if process is None:
        return None
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)
    return process.returncode


def wait_until(ready: Callable[[], T], *, what: str, process: subprocess.Popen | None = None,
               logs: Iterable[Path | str] = (), timeout: float = READY_TIMEOUT, interval: float = 0.2,
               retry_on: tuple[type[BaseException], ...] = ()) -> T:
    """Call `ready()` until it returns something true, and return that. An exception of a `retry_on` type
    counts as "not yet". Fails (NotReady, with the process's output) as soon as `process` has exited, or
    after `timeout` s; on a timeout the process is stopped first so that its output can be read."""
    logs = tuple(logs)
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = ready()
        except retry_on as e:
            value, last = None, e
        else:
            if value:
                return value
            last = value
        if process is not None and process.poll() is not None:
            raise NotReady(f"{what}: the process exited with status {process.returncode} first "
                           f"(last answer: {last!r})\n{process_output(process, logs)}")
        if time.monotonic() >= deadline:
            stop(process)
            raise NotReady(f"{what}: not within {timeout:g} s (last answer: {last!r})\n"
                           f"{process_output(process, logs)}")
        time.sleep(interval)


def get_health(base_url: str) -> dict | None:
    """GET /health of `custody serve`: its JSON when it answers 200, None when it answers anything else."""
    try:
        with urllib.request.urlopen(base_url + "/health", timeout=30) as response:
            return json.loads(response.read()) if response.status == 200 else None
    except urllib.error.HTTPError as e:            # 503 while the database or the node is not reachable
        e.read()
        return None


def wait_healthy(base_url: str, server: subprocess.Popen, logs: Iterable[Path | str] = (),
                 timeout: float = READY_TIMEOUT) -> dict:
    """Wait for `custody serve` at `base_url` to answer /health with 200; returns that health report."""
    return wait_until(lambda: get_health(base_url), what=f"custody serve at {base_url} answering /health with 200",
                      process=server, logs=logs, timeout=timeout,
                      retry_on=(OSError, http.client.HTTPException, ValueError))


def start_node(datadir: Path | str, **kwargs):
    """regtest.launcher.start_node with the generous bound; a node that does not come up fails with its logs
    (the launcher's own node.log, and bitcoind's debug.log when it is Bitcoin Core)."""
    from regtest.launcher import start_node as launch
    kwargs.setdefault("timeout", READY_TIMEOUT)
    try:
        return launch(datadir, **kwargs)
    except RuntimeError as e:
        logs = (Path(datadir) / "node.log", Path(datadir) / "regtest" / "debug.log")
        raise NotReady(f"{e}\n{process_output(None, logs)}") from None


class served:
    """The app under uvicorn on a loopback port, in a thread, for the block; its base URL names `host`
    (a passkey's relying party is a host name: browse it as http://localhost)."""

    def __init__(self, app, host: str = "127.0.0.1"):
        import threading
        import uvicorn
        from regtest.launcher import free_port
        self.port, self.host = free_port(), host
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_config=None,
                                                    access_log=False))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        wait_until(lambda: self.server.started, what="uvicorn serving the app")
        return f"http://{self.host}:{self.port}"

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(30)
