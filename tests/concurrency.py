"""N requests at the same moment, for the races a reviewer tries: through the ASGI app (one TestClient
used from N threads; the app serves them on its own thread pool) or through a real `custody serve`
on loopback (`Served`), whose processes race for the database as in production."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Callable, TypeVar

import httpx

from .support import stop, wait_healthy

T = TypeVar("T")


def at_once(n: int, call: Callable[[int], T]) -> list[T]:
    """Run call(0) … call(n-1) in n threads released together; their results in that order. An
    exception in any of them is raised here, after all have finished."""
    start, results, errors = threading.Barrier(n), [None] * n, []

    def run(i: int) -> None:
        start.wait()
        try:
            results[i] = call(i)
        except BaseException as e:        # noqa: BLE001 - re-raised below, in the test's thread
            errors.append(e)
    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


class Served:
    """`custody serve` as its own processes on a free loopback port, on `db_url` and `node`."""

    def __init__(self, db_url: str, node, tmp_path: Path, *, workers: int = 2, sync_interval: float = 0):
        from regtest.launcher import free_port
        self.port, self.logs = free_port(), (tmp_path / "serve.out", tmp_path / "serve.err")
        self.base = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "CUSTODY_NODE_COOKIE": str(node.cookie_file)}
        with open(self.logs[0], "w") as out, open(self.logs[1], "w") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "coordinator.cli.main", "serve", "--db", db_url, "--node", node.url,
                 "--port", str(self.port), "--workers", str(workers), "--sync-interval", str(sync_interval)],
                env=env, stdout=out, stderr=err)

    def __enter__(self) -> "Served":
        wait_healthy(self.base, self.process, self.logs)
        return self

    def __exit__(self, *exc) -> None:
        stop(self.process)

    def request(self, method: str, path: str, token: str | None = None, **kw) -> httpx.Response:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        with httpx.Client(base_url=self.base, timeout=120) as client:
            return client.request(method, path, headers=headers, **kw)
