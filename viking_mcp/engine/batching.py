"""Writes for async callers: on one thread of their own, many to a transaction.

A server appends for many clients at once. Run on the event loop, an append would hold
every other client behind it (and behind SQLite's lock, when another process writes);
run each on a worker thread of a pool, sixteen HTTP clients put sixteen threads in a
queue for the one write lock, handing the GIL and the lock round between them: the
server's CPU per message doubled. Here one thread takes what is queued, up to
`MAX_BATCH` writes, prepares each outside the transaction (validating, counting tokens),
then writes them all in one `store.write_batch()` (a group commit): one lock, one commit,
one hand-back to each event loop. Each write still succeeds or fails on its own, and none
is answered before the batch has committed.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from viking_mcp.errors import Unavailable

if TYPE_CHECKING:
    from viking_mcp.store import Store

logger = logging.getLogger(__name__)

P = TypeVar("P")
R = TypeVar("R")
# How many writes share a transaction, at most: enough for a busy server's concurrent
# clients, few enough that one batch holds the write lock for milliseconds, not more.
MAX_BATCH = 64


@dataclass
class _Job(Generic[P, R]):
    prepare: Callable[[], P]
    write: Callable[[P], R]
    future: asyncio.Future[R]
    loop: asyncio.AbstractEventLoop
    prepared: Any = None
    outcome: tuple[bool, Any] = field(default=(False, None))  # (succeeded, result or exception)


class WriteBatcher:
    """One thread that runs writes for async callers, many to a transaction."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._queue: queue.SimpleQueue[_Job[Any, Any] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False

    async def run(self, prepare: Callable[[], P], write: Callable[[P], R]) -> R:
        """`write(prepare())` on the batch thread: `prepare` outside the transaction, `write`
        inside the batch's. Answers once the batch has committed; raises what either raised."""
        loop = asyncio.get_running_loop()
        job: _Job[P, R] = _Job(prepare, write, loop.create_future(), loop)
        with self._lock:
            if self._closed:
                raise Unavailable("the server is stopping; retry in a moment")
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="viking-writes", daemon=True)
                self._thread.start()
            self._queue.put(job)
        return await job.future

    def close(self, timeout: float = 10.0) -> None:
        """Finish what is queued, then stop the thread."""
        with self._lock:
            self._closed = True
            thread = self._thread
            if thread is not None:
                self._queue.put(None)
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            jobs = [first]
            while len(jobs) < MAX_BATCH:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is None:  # closing: finish these, then stop
                    self._queue.put(None)
                    break
                jobs.append(job)
            self._write_all(jobs)
            self._answer(jobs)

    def _write_all(self, jobs: list[_Job[Any, Any]]) -> None:
        ready = []
        for job in jobs:
            try:
                job.prepared = job.prepare()
                ready.append(job)
            except Exception as exc:
                job.outcome = (False, exc)
        if not ready:
            return
        try:
            with self._store.write_batch():
                for job in ready:
                    try:
                        job.outcome = (True, job.write(job.prepared))
                    except Exception as exc:
                        job.outcome = (False, exc)
        except Exception as exc:  # the batch did not commit: none of its writes happened
            for job in ready:
                job.outcome = (False, exc)

    @staticmethod
    def _answer(jobs: list[_Job[Any, Any]]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[_Job[Any, Any]]] = defaultdict(list)
        for job in jobs:
            by_loop[job.loop].append(job)
        for loop, answered in by_loop.items():
            try:
                loop.call_soon_threadsafe(_settle, answered)
            except RuntimeError:  # the loop has closed: nobody is waiting
                logger.debug("%d writes finished after their event loop closed", len(answered))


def _settle(jobs: list[_Job[Any, Any]]) -> None:
    for job in jobs:
        if job.future.done():  # cancelled: the caller went away (the write itself stands)
            continue
        succeeded, value = job.outcome
        if succeeded:
            job.future.set_result(value)
        else:
            job.future.set_exception(value)
