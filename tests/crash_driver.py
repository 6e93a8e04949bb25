"""A process for the crash test to kill: it forks writers that use the Engine, kills them.

Spawning a Python server costs about a second, too much for hundreds of kills. So this
process imports viking-mcp and loads the token encoding once, then, for each command on
stdin (one JSON object a line), forks a child that opens the Engine on the data directory
and starts a Phase 2 worker exactly as `python -m viking_mcp` does, then streams
add_message, commit, retry_archive and get_context calls (everything but the MCP layer).
After the command's `delay` (from the fork, or from "up") this process SIGKILLs the child, reaps it and reports on
stdout, as one JSON line, what the child said it did:

    s SESSION ID   about to add message ID        a SESSION ID   it was acknowledged
    C SESSION      about to commit                 c SESSION ARCHIVE COUNT   committed
    r SESSION ARCHIVE   a failed archive was queued again (retry_archive)
    up             the engine is open              idle           the stream is over

Each line is one os.write of a few bytes to a pipe, so it arrives whole or not at all.
A failed archive is easy to come by: the child's summariser fails `fail_rate` of the
time (the offline summariser itself never does), as a flaky LLM endpoint would.
Run: `python -m tests.crash_driver` from the repository root.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import selectors
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from viking_mcp.config import Settings
from viking_mcp.engine import Engine, Phase2Worker
from viking_mcp.errors import FailedPrecondition, NotFound
from viking_mcp.models import archive_id
from viking_mcp.summarize.base import ArchiveInput, ArchiveSummary
from viking_mcp.summarize.extractive import ExtractiveSummariser
from viking_mcp.tokens import TokenCounter

_WORDS = (
    "Ada",
    "booked",
    "the",
    "7:40",
    "train",
    "to",
    "Porto",
    "on",
    "3",
    "May",
    "and",
    "asked",
    "for",
    "an",
    "aisle",
    "seat",
)


def content_for(message_id: str) -> str:
    """The text stored under a message id: anything else read back is torn or mixed up."""
    rng = random.Random(message_id)
    return f"{message_id}: " + " ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 60))) + "."


class FlakySummariser(ExtractiveSummariser):
    """The offline summariser, failing now and then as an LLM endpoint would."""

    def __init__(self, tokens: TokenCounter, fail_rate: float, rng: random.Random) -> None:
        super().__init__(tokens)
        self.fail_rate = fail_rate
        self.rng = rng

    def summarise(self, archive: ArchiveInput) -> ArchiveSummary:
        if self.rng.random() < self.fail_rate:
            raise RuntimeError("injected summariser failure")
        return super().summarise(archive)


def _emit(fd: int, line: str) -> None:
    os.write(fd, (line + "\n").encode())


def _stream(command: dict[str, Any], out: int) -> None:
    rng = random.Random(command["seed"])
    settings = Settings(home=Path(command["home"]))
    tokens = TokenCounter(settings.encoding)
    engine = Engine(settings, summariser=FlakySummariser(tokens, command["fail_rate"], rng))
    worker = Phase2Worker(engine, threads=1, idle_seconds=0.05)
    worker.start()
    _emit(out, "up")
    sessions: list[str] = command["sessions"]
    resend: list[list[str]] = list(command["resend"])
    for number in range(command["ops"]):
        roll = rng.random()
        if roll < 0.08 and resend:  # a client retrying an add it never saw answered
            session, message_id = resend.pop()
        elif roll < 0.9:
            session, message_id = rng.choice(sessions), f"{command['tag']}-{number:04d}"
        else:
            session = rng.choice(sessions)
            if roll < 0.97:
                _commit(engine, session, rng.choice((0, 0, 1, 3)), out)
            else:
                with contextlib.suppress(NotFound):  # a session nobody has written to yet
                    engine.get_context(session, rng.choice((0, 500, 20_000)))
            continue
        _emit(out, f"s {session} {message_id}")
        engine.add_message(session, rng.choice(("user", "assistant")), content_for(message_id), message_id=message_id)
        _emit(out, f"a {session} {message_id}")
        if command["pause"]:
            time.sleep(rng.random() * command["pause"])
    _emit(out, "idle")
    time.sleep(3600)  # Phase 2 goes on in the worker until the kill


def _commit(engine: Engine, session: str, keep_recent: int, out: int) -> None:
    _emit(out, f"C {session}")
    try:
        result = engine.commit(session, keep_recent_count=keep_recent)
    except FailedPrecondition:  # an earlier archive failed: do what the error says
        for archive in engine.store.list_archives(session):
            if archive.status == "failed":
                engine.retry_archive(session, archive_id(archive.number))
                _emit(out, f"r {session} {archive_id(archive.number)}")
        _emit(out, f"c {session} - 0")
        return
    except NotFound:  # a session nobody has written to yet
        _emit(out, f"c {session} - 0")
        return
    _emit(out, f"c {session} {result.archive_id or '-'} {result.archived_messages}")


def _child(command: dict[str, Any], out: int) -> None:
    try:
        _stream(command, out)
    except BaseException:
        _emit(out, "E " + json.dumps(traceback.format_exc()))
        os._exit(1)
    os._exit(0)


def _run(command: dict[str, Any]) -> dict[str, Any]:
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        os.close(read_end)
        _child(command, write_end)
    os.close(write_end)
    chunks: list[bytes] = []
    selector = selectors.DefaultSelector()
    selector.register(read_end, selectors.EVENT_READ)
    # The delay runs from the fork, or with `after_up` from the moment the engine is open.
    deadline = None if command["after_up"] else time.monotonic() + command["delay"]
    open_ = True
    while open_ and (deadline is None or (remaining := deadline - time.monotonic()) > 0):
        if selector.select(None if deadline is None else remaining):
            chunk = os.read(read_end, 65536)
            open_ = bool(chunk)
            chunks.append(chunk)
            if deadline is None and b"up\n" in b"".join(chunks):
                deadline = time.monotonic() + command["delay"]
    signalled = True
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        signalled = False
    _, status = os.waitpid(pid, 0)
    while chunk := os.read(read_end, 65536):
        chunks.append(chunk)
    selector.close()
    os.close(read_end)
    text = b"".join(chunks).decode()
    return {
        "pid": pid,
        "killed": signalled and os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL,
        "exit": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
        "lines": text.split("\n")[:-1],  # a last line without its newline never arrived whole
    }


def main() -> None:
    # The injected summariser failures are expected; errors (say a Phase 2 worker's) are not.
    logging.basicConfig(level=logging.ERROR)
    TokenCounter(Settings().encoding).warm_up()  # the children inherit the loaded encoding
    print("ready", flush=True)
    for line in sys.stdin:
        print(json.dumps(_run(json.loads(line))), flush=True)


if __name__ == "__main__":
    main()
