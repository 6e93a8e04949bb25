"""The progress indicator `commit --wait` shows on stderr while Phase 2 runs.

On a terminal: a spinner with the elapsed seconds and the task's latest status, redrawn
in place and erased at the end. Elsewhere (a pipe, a log file): one line, once.
"""

from __future__ import annotations

import itertools
import threading
import time
from typing import TextIO

_FRAMES_UNICODE = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
_FRAMES_ASCII = "|/-\\"
REDRAW_SECONDS = 0.1


class Progress:
    def __init__(self, stream: TextIO, label: str) -> None:
        self.stream = stream
        self.label = label
        self.status = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
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
        if self._live:
            self._thread = threading.Thread(
                target=self._spin, args=(time.monotonic(),), name="viking-progress", daemon=True
            )
            self._thread.start()
        else:
            self._write(f"viking-mcp: {self.label}...\n")
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._write("\r\x1b[K")

    def _spin(self, started: float) -> None:
        for frame in itertools.cycle(self._frames):
            status = f" ({self.status})" if self.status else ""
            self._write(f"\r\x1b[K{frame} {self.label}{status} {time.monotonic() - started:.0f}s")
            if self._stop.wait(REDRAW_SECONDS):
                return

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # the terminal went away: the work goes on regardless
            pass
