"""CPU-heavy work off the event loop and out of the request threads, a few jobs per user at a time.

Parsing and verifying a 16 MB PSBT, checking one, deriving 10,000 addresses, importing 10 MB of
labels or verifying an exported log are seconds of pure Python. On the event loop such a job stopped
every request (`/health` waited 12.8 s behind one upload); in the request threads (four per process,
coordinator/app.py) four of them took every thread and, under the GIL, most of the loop (25.5 s).

- `CpuPool` runs a job in a worker process: a ProcessPoolExecutor of one worker per core, started with
  the first job, forked from a clean server process (forkserver: never from this threaded one), at a
  lower CPU priority (nice 10) than the server. The route awaits the job without holding a thread, so
  requests that are not heavy keep the threads, the loop and the CPU. A job is a module-level function
  of the domain (custody.*): it is pickled by name with its arguments, and touches no database:
  database work stays in the request's thread, before and after (`in_thread`).
- `HeavySlots` bounds such requests: PER_USER at once per user (the next is refused with 429 and
  Retry-After) and a total per process (503). The request gate (coordinator/body_limit.py) takes the
  slot before the body is read, so the bound holds for large bodies in memory too.
"""
from __future__ import annotations

import asyncio
import functools
import multiprocessing
import os
import select
import signal
import threading
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager

import anyio.to_thread
from fastapi import HTTPException, Request

PER_USER = 2                    # heavy requests one user may have running at once
RETRY_AFTER = 2                 # seconds, in the 429/503 answers
WORKER_NICENESS = 10
# Imported once by the fork server, so a new worker starts with them loaded.
PRELOAD = ["custody.ledger.service", "custody.spending.service", "custody.spending.spends", "custody.reserves.proofs",
           "custody.ledger.coins", "custody.bitcoin.signatures", "custody.bitcoin.psbt_check", "custody.eventlog.log",
           "custody.bitcoin.derive"]


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:                   # not Linux
        return os.cpu_count() or 1


def _worker_started(server_pid: int) -> None:
    """A worker yields the CPU to the server's event loop, leaves Ctrl-C to the server, and ends with it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        os.nice(WORKER_NICENESS)
    except OSError:
        pass
    threading.Thread(target=_exit_with, args=(server_pid,), name="exit-with-server", daemon=True).start()


def _exit_with(pid: int) -> None:
    """End this worker when process `pid` ends, however it ends. A worker of a server killed with SIGKILL
    would otherwise wait for work forever (it holds both ends of its job queue), and so would the fork
    server (it stays while any worker does)."""
    try:
        handle = os.pidfd_open(pid)
    except ProcessLookupError:
        os._exit(0)
    except (AttributeError, OSError):           # no pidfd (not Linux 5.3+): ask every second
        while True:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                os._exit(0)
            except PermissionError:
                pass
            time.sleep(1)
    select.select([handle], [], [])
    os._exit(0)


class CpuPool:
    """Worker processes for CPU-heavy jobs; nothing is started until the first job."""

    def __init__(self, workers: int | None = None):
        self.workers = workers or cores()
        self._executor: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()
        self._in_flight = 0
        # Submitting can wait (the first job starts the fork server and a worker: imports, a second or
        # so; submits queue behind it): on a thread of its own, not one of the request threads.
        self._submitter: ThreadPoolExecutor | None = None

    @property
    def in_flight(self) -> int:
        """Jobs submitted and not yet finished (running or waiting for a worker)."""
        return self._in_flight

    def _get(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._executor is None:
                context = multiprocessing.get_context("forkserver")
                context.set_forkserver_preload(PRELOAD)
                self._executor = ProcessPoolExecutor(self.workers, mp_context=context, initializer=_worker_started,
                                                     initargs=(os.getpid(),))
            return self._executor

    def _submit(self, fn, args, kwargs):
        executor = self._get()
        try:
            return executor, executor.submit(fn, *args, **kwargs)
        except BrokenProcessPool:            # a worker died earlier: start afresh, once
            self._discard(executor)
            executor = self._get()
            return executor, executor.submit(fn, *args, **kwargs)

    def _discard(self, executor: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._executor is executor:
                self._executor = None
        executor.shutdown(wait=False, cancel_futures=True)

    async def run(self, fn, *args, **kwargs):
        """fn(*args, **kwargs) in a worker process; its exceptions are raised here."""
        self._in_flight += 1
        try:
            with self._lock:
                if self._submitter is None:
                    self._submitter = ThreadPoolExecutor(1, thread_name_prefix="cpu-pool-submit")
                submitter = self._submitter
            executor, future = await asyncio.get_running_loop().run_in_executor(
                submitter, self._submit, fn, args, kwargs)
            try:
                return await asyncio.wrap_future(future)
            except BrokenProcessPool:
                self._discard(executor)
                raise HTTPException(503, "a worker process ended while doing this request's work (out of "
                                         "memory?); nothing was changed: try again") from None
        finally:
            self._in_flight -= 1

    def shutdown(self) -> None:
        """Stop the workers (the app's shutdown); a later job starts them again."""
        with self._lock:
            executor, self._executor = self._executor, None
            submitter, self._submitter = self._submitter, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
        if submitter is not None:
            submitter.shutdown(wait=False)


class HeavySlots:
    """How many heavy requests each user, and the whole process, may have running at once."""

    def __init__(self, per_user: int = PER_USER, total: int | None = None):
        self.per_user = per_user
        self.total = total or max(4, 4 * cores())
        self._running: dict[object, int] = {}
        self._lock = threading.Lock()

    def running(self, who: object | None = None) -> int:
        with self._lock:
            return sum(self._running.values()) if who is None else self._running.get(who, 0)

    @contextmanager
    def hold(self, who: object, name: str):
        """One slot for `who` (a user id; `name` is how the refusal names them) while the block runs."""
        with self._lock:
            mine = self._running.get(who, 0)
            if mine >= self.per_user:
                raise HTTPException(429, f"{name} already has {mine} uploads or checks in progress, the most one "
                                         f"user may have at once: retry when one has finished",
                                    headers={"Retry-After": str(RETRY_AFTER)})
            if sum(self._running.values()) >= self.total:
                raise HTTPException(503, f"the server is busy with {self.total} uploads or checks: retry shortly",
                                    headers={"Retry-After": str(RETRY_AFTER)})
            self._running[who] = mine + 1
        try:
            yield
        finally:
            with self._lock:
                left = self._running[who] - 1
                if left:
                    self._running[who] = left
                else:
                    del self._running[who]


async def offload(request: Request, fn, *args, **kwargs):
    """A CPU-heavy job of this request, in the app's worker processes."""
    return await request.app.state.cpu_pool.run(fn, *args, **kwargs)


async def in_thread(fn, *args, **kwargs):
    """Blocking work (the database, files) of an `async def` route, in a request thread."""
    return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))


# -- the two-step uploads: read in a thread, verify and merge in a worker, store in a thread ----------
MERGE_ATTEMPTS = 3


async def take_spend_signatures(request: Request, spend_id: int, data: bytes) -> dict:
    """spend_service.spend_sign with its verification off the event loop; another upload stored meanwhile
    makes it merge again from the new PSBT (up to MERGE_ATTEMPTS times)."""
    from custody.spending import service as spend_service
    from custody.spending import spends

    from coordinator.context import actor, read, write

    def stored() -> tuple[str, int]:
        with read(request) as s:
            return spend_service.spend_signing_input(s, spend_id)

    def store(merged, based_on: str) -> dict:
        with write(request) as s:
            return spend_service.spend_store_signatures(s, spend_id, merged, based_on=based_on, actor=actor(request))

    for attempt in range(MERGE_ATTEMPTS):
        psbt, threshold = await in_thread(stored)
        merged = await offload(request, spends.merge_signatures, psbt, data, threshold)
        try:
            return await in_thread(store, merged, psbt)
        except spends.SignaturesChanged:
            if attempt == MERGE_ATTEMPTS - 1:
                raise


async def take_reserve_signatures(request: Request, run_id: int, data: bytes) -> dict:
    """reserve_service.sign, as take_spend_signatures does it."""
    from custody.reserves import service as reserve_service
    from custody.reserves import proofs as reserves

    from coordinator.context import actor, read, write
    from custody.reserves.service import require_run

    def stored() -> str:
        with read(request) as s:
            require_run(s, run_id)
            return reserve_service.signing_input(s, run_id)

    def store(merged, based_on: str) -> dict:
        with write(request) as s:
            return reserve_service.store_signatures(s, run_id, merged, based_on=based_on, actor=actor(request))

    for attempt in range(MERGE_ATTEMPTS):
        psbt = await in_thread(stored)
        merged = await offload(request, reserves.merge_signatures, psbt, data)
        try:
            return await in_thread(store, merged, psbt)
        except reserves.SignaturesChanged:
            if attempt == MERGE_ATTEMPTS - 1:
                raise
