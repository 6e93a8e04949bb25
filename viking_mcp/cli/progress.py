"""The progress indicator `commit --wait` shows on stderr while Phase 2 runs.

On a terminal: a spinner with the elapsed seconds and the task's latest status, redrawn
in place and erased at the end. Elsewhere (a pipe, a log file): one line, once.
"""

from __future__ import annotations

import threading
import time
from types import TracebackType
from typing import TextIO

_FRAMES_UNICODE = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
_FRAMES_ASCII = "|/-\\"


class Progress:
    def __init__(self, stream: TextIO, label: str, interval: float = 0.1) -> None:
        self.stream = stream
        self.label = label
        self.interval = interval
        self.status = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = 0.0
        encoding = (getattr(stream, "encoding", None) or "").lower()
        self._frames = _FRAMES_UNICODE if "utf" in encoding else _FRAMES_ASCII
        try:
            self._live = stream.isatty()
        except (AttributeError, ValueError):
            self._live = False

    def update(self, elapsed: float, timeout: float, message: str) -> None:
        """The engine's progress callback: what Phase 2 is doing now."""
        self.status = message

    def __enter__(self) -> Progress:
        self._started = time.monotonic()
        if self._live:
            self._thread = threading.Thread(target=self._spin, name="viking-progress", daemon=True)
            self._thread.start()
        else:
            self._write(f"viking-mcp: {self.label}...\n")
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._write("\r\x1b[K")

    def _spin(self) -> None:
        frame = 0
        while True:
            elapsed = time.monotonic() - self._started
            status = f" ({self.status})" if self.status else ""
            self._write(f"\r\x1b[K{self._frames[frame % len(self._frames)]} {self.label}{status} {elapsed:.0f}s")
            frame += 1
            if self._stop.wait(self.interval):
                return

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # the terminal went away: the work goes on regardless
            pass
