"""The background Phase 2 worker: threads that drain the durable task queue.

On start it picks up whatever an earlier process left unfinished (tasks still pending,
or running for an owner that is gone), so a restart never leaves an archive without its
`.done` marker. It wakes at once when this process commits, and looks at the queue every
`idle_seconds` for work that another process on the same directory left behind.
"""

from __future__ import annotations

import logging
import threading

from viking_mcp.engine.engine import Engine

logger = logging.getLogger(__name__)


class Phase2Worker:
    def __init__(self, engine: Engine, threads: int = 1, idle_seconds: float = 2.0) -> None:
        self.engine = engine
        self.threads = threads
        self.idle_seconds = idle_seconds
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        if self.threads < 1:
            return
        self.engine.has_worker = True
        self.engine.on_task_queued = self._wake.set
        for index in range(self.threads):
            thread = threading.Thread(target=self._run, name=f"viking-phase2-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop taking work; a task in progress is finished or, past `timeout`, left to resume later."""
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout)
        self.engine.has_worker = False
        self.engine.on_task_queued = None

    def _run(self) -> None:
        while not self._stop.is_set() and not self.engine.closed:
            try:
                worked = self.engine.run_phase2_once()
            except Exception:
                logger.exception("Phase 2 worker error; retrying shortly")
                worked = False
            if not worked:
                self._wake.wait(self.idle_seconds)
                self._wake.clear()
