"""Crash safety: processes killed with SIGKILL at random moments, hundreds of times.

Two kinds of kill, counted apart:
- engine processes: children of tests/crash_driver.py that open the Engine and run a
  Phase 2 worker as the server does, then stream add_message, commit, retry_archive and
  get_context (everything but the MCP layer). Forking them costs milliseconds, so the
  test reaches hundreds of kills: at start-up, mid-add, mid-commit, mid-Phase 2, idle.
- the real MCP server (`python -m viking_mcp` over stdio), killed during its start-up or
  while a client streams pipelined add_message and commit requests into it.

After every kill the directory is checked (tests/invariants.py): every acknowledged
message is stored exactly once, live or in exactly one archive; nothing reads back torn;
no archive is wedged; get_context works. At the end the real server is started once more
and, doing what an agent would (commit; retry_archive what FAILED_PRECONDITION names),
brings every archive to done, and the tools read it all back; the tree is exported as
files and imported into a new directory, which passes the same checks.

Knobs: VIKING_CRASH_KILLS (engine-process kills, default 300), VIKING_CRASH_SERVER_KILLS
(default 12), VIKING_CRASH_SECONDS (time budget of both kill loops, default 75; a loop
that runs out of time stops early, figures say how far it got), VIKING_CRASH_SEED.
A soak run: VIKING_CRASH_KILLS=5000 VIKING_CRASH_SERVER_KILLS=200 VIKING_CRASH_SECONDS=3600.
Run with -s to see the figures.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any

import anyio
import pytest

from tests.conftest import REPO, server_env
from tests.crash_driver import content_for
from tests.invariants import Checked, Ledger, check_store, settle_over_stdio
from viking_mcp.config import Settings
from viking_mcp.engine import Engine
from viking_mcp.engine.export_import import export_tree, import_tree

pytestmark = pytest.mark.slow

KILLS = int(os.environ.get("VIKING_CRASH_KILLS", "300"))
SERVER_KILLS = int(os.environ.get("VIKING_CRASH_SERVER_KILLS", "12"))
SECONDS = float(os.environ.get("VIKING_CRASH_SECONDS", "75"))
SEED = int(os.environ.get("VIKING_CRASH_SEED") or random.randrange(1_000_000))
# Fewer than these many kills (a machine so loaded the budget ran out) fails the test.
MIN_KILLS, MIN_SERVER_KILLS = min(KILLS, 40), min(SERVER_KILLS, 4)
SESSIONS = ["alpha", "beta", "gamma", "delta"]


def report(title: str, figures: dict[str, Any]) -> None:
    print(f"\n{title} (seed {SEED}):", flush=True)
    for name, value in figures.items():
        print(f"  {name}: {value}", flush=True)


def stderr_tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:] if log.exists() else ""


# --- engine processes ----------------------------------------------------------------------


class Driver:
    """tests/crash_driver.py: forks an engine process per command and kills it."""

    def __init__(self, home: Path, log: IO[str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.crash_driver"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, cwd=REPO, env=server_env(home),
        )  # fmt: skip
        assert self.readline() == "ready"

    def readline(self) -> str:
        assert self.proc.stdout is not None
        timer = threading.Timer(120, self.proc.kill)  # a hung driver fails the test, not the run
        timer.start()
        try:
            return self.proc.stdout.readline().strip()
        finally:
            timer.cancel()

    def run(self, command: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        line = self.readline()
        assert line, "the crash driver died"
        result: dict[str, Any] = json.loads(line)
        return result

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()


@contextmanager
def driver(tmp_path: Path) -> Iterator[tuple[Driver, Path]]:
    log_path = tmp_path / "driver.log"
    with log_path.open("w") as log:
        crash_driver = Driver(tmp_path, log)
        try:
            yield crash_driver, log_path
        finally:
            crash_driver.close()


def replay(lines: list[str], ledger: Ledger, log: Path) -> str:
    """Enter what the killed process was told into the ledger; say where the kill hit it."""
    moment = "start-up"
    for line in lines:
        kind, _, rest = line.partition(" ")
        fields = rest.split()
        if kind == "E":
            pytest.fail(f"an engine process failed:\n{json.loads(rest)}\n{stderr_tail(log)}")
        elif kind == "up":
            moment = "between calls"
        elif kind == "s":
            ledger.send(fields[0], fields[1])
            moment = "mid add_message"
        elif kind == "a":
            ledger.acknowledge(fields[0], fields[1])
            moment = "between calls"
        elif kind == "C":
            moment = "mid commit"
        elif kind == "c":
            if fields[1] != "-":
                ledger.committed(fields[0], fields[1], int(fields[2]))
            moment = "between calls"
        elif kind == "r":
            ledger.retried += 1
        elif kind == "idle":
            moment = "idle (worker only)"
    return moment


def phase2_in_flight(engine: Engine, pid: int) -> int:
    """Phase 2 tasks the killed process had claimed and not finished."""
    running = engine.store.list_tasks("session_commit", "running", None, 1_000_000)
    return sum(1 for t in running if t.owner is not None and t.owner.split("|")[1] == str(pid))


def command(
    home: Path, tag: str, rng: random.Random, sessions: list[str], resend: list[tuple[str, str]]
) -> dict[str, Any]:
    """One engine process: a tenth are killed while opening the directory (which takes a few
    hundredths of a second), most mid-stream, some after the stream while only the Phase 2
    worker is busy."""
    roll = rng.random()
    if roll < 0.1:
        after_up, delay = False, rng.uniform(0, 0.08)
    else:
        after_up, delay = True, rng.uniform(0, 0.12) if roll < 0.85 else rng.uniform(0.12, 0.4)
    return {
        "home": str(home), "tag": tag, "seed": rng.randrange(2**32), "delay": delay, "after_up": after_up,
        "sessions": sessions, "resend": [list(r) for r in resend], "ops": 100, "pause": 0.001, "fail_rate": 0.1,
    }  # fmt: skip


def test_engine_processes_killed_hundreds_of_times(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    deadline = time.monotonic() + SECONDS * 0.6
    started = time.monotonic()
    moments: Counter[str] = Counter()
    kills = in_phase2 = checks = full_checks = messages_checked = 0
    check_seconds = 0.0
    ledger = Ledger()
    home = tmp_path / "home"
    engine: Engine | None = None
    with driver(tmp_path) as (crash_driver, log):
        # A new directory, killed while the first process creates and migrates the database.
        for number in range(10):
            fresh = tmp_path / f"fresh{number}"
            opening = {"after_up": False, "delay": rng.uniform(0, 0.08)}
            result = crash_driver.run({**command(fresh, f"f{number}", rng, SESSIONS, []), **opening})
            fresh_ledger = Ledger()
            replay(result["lines"], fresh_ledger, log)
            assert result["killed"], result
            moments["new directory"] += 1
            fresh_engine = Engine(Settings(home=fresh))
            try:
                check_store(fresh_engine, fresh_ledger)
                assert fresh_engine.add_message("after", "user", "the directory still works").session_created
            finally:
                fresh_engine.close()
            kills += 1
        try:
            while kills < KILLS and time.monotonic() < deadline:
                # New sessions every 50 kills keep each check's cost flat; old ones get resends.
                sessions = [f"{name}{kills // 50}" for name in SESSIONS]
                resend = rng.sample(ledger.unacknowledged(), min(3, len(ledger.unacknowledged())))
                result = crash_driver.run(command(home, f"k{kills:05d}", rng, sessions, resend))
                moments[replay(result["lines"], ledger, log)] += 1
                assert result["killed"], f"the engine process was not killed: {result}\n{stderr_tail(log)}"
                kills += 1
                if engine is None:
                    engine = Engine(Settings(home=home))
                in_phase2 += phase2_in_flight(engine, result["pid"]) > 0
                touched = set(sessions) | {session for session, _ in resend}
                check_started = time.monotonic()
                checked = check_store(engine, ledger, only=None if kills % 25 == 0 else touched)
                check_seconds += time.monotonic() - check_started
                checks += 1
                full_checks += kills % 25 == 0
                messages_checked += checked.acknowledged
        finally:
            if engine is not None:
                engine.close()
    loop_seconds = time.monotonic() - started
    assert kills >= MIN_KILLS, f"only {kills} kills in the time budget"

    settle_started = time.monotonic()
    settled = anyio.run(settle_over_stdio, home, ledger)
    final, taken_over = final_check(home, ledger)
    settle_seconds = time.monotonic() - settle_started
    report(
        "engine processes killed",
        {
            "kills": kills,
            "where the kill hit": dict(moments.most_common()),
            "kills with a Phase 2 task in flight": in_phase2,
            "checks after a kill (in full, reading every message back)": f"{checks} ({full_checks})",
            "acknowledged messages checked, summed over checks": messages_checked,
            "messages sent / acknowledged": f"{len(ledger.sent)} / {len(ledger.acknowledged)}",
            "archives at the end": final.archives["completed"],
            "Phase 2 tasks taken over (claimed again after their process died)": taken_over,
            "failed archives retried by engine processes": ledger.retried,
            "failed archives retried at the end": settled.archives["retried"],
            "kill loop seconds (of which checking)": f"{loop_seconds:.1f} ({check_seconds:.1f})",
            "final restart, settle and check seconds": round(settle_seconds, 1),
        },
    )


def final_check(home: Path, ledger: Ledger) -> tuple[Checked, int]:
    """The full check once everything settled, and the whole viking:// tree exported as
    files and imported into a new directory (the import refuses anything inconsistent).
    Also returns how many Phase 2 tasks were claimed more than once: taken over from a
    killed process."""
    engine = Engine(Settings(home=home))
    try:
        checked = check_store(engine, ledger)
        tasks = engine.store.list_tasks("session_commit", None, None, 1_000_000)
        exported = export_tree(engine, home.parent / "export")
    finally:
        engine.close()
    assert set(checked.archives) == {"completed"}, checked.archives
    assert checked.to_take_over == 0
    assert exported.messages == checked.messages and exported.archives == checked.archives["completed"]
    copy = Engine(Settings(home=home.parent / "imported"))
    try:
        imported = import_tree(copy, home.parent / "export")
        assert imported.model_dump(exclude={"directory"}) == exported.model_dump(exclude={"directory"})
        check_store(copy, ledger)
    finally:
        copy.close()
    return checked, sum(t.attempts > 1 for t in tasks)


# --- the real server ------------------------------------------------------------------------


UNREACHABLE_LLM = {
    "VIKING_MCP_LLM_MODEL": "nobody-home",
    "VIKING_MCP_LLM_BASE_URL": "http://127.0.0.1:9/v1",  # the discard port: nothing listens
    "VIKING_MCP_LLM_API_KEY": "unused",
    "VIKING_MCP_LLM_MAX_ATTEMPTS": "1",
    "VIKING_MCP_LLM_TIMEOUT_SECONDS": "2",
}


class RawServer:
    """`python -m viking_mcp` spoken to over raw JSON-RPC, so that requests can be pipelined
    and the process killed by its pid at any moment."""

    def __init__(self, home: Path, log: IO[str], **env: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "viking_mcp"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, cwd=REPO, env=server_env(home, **env),
        )  # fmt: skip
        self.responses: dict[int, dict[str, Any]] = {}
        self.arrived = threading.Condition()
        self.closed = False
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        try:
            for line in self.proc.stdout:
                if not line.endswith(b"\n"):
                    break  # cut off by the kill
                message = json.loads(line)  # anything else on stdout is a defect
                if "id" in message:
                    with self.arrived:
                        self.responses[message["id"]] = message
                        self.arrived.notify_all()
        finally:
            with self.arrived:
                self.closed = True
                self.arrived.notify_all()

    def wait_for(self, request_id: int, timeout: float = 60) -> bool:
        """Until the request is answered (True) or the server is gone (False)."""
        with self.arrived:
            self.arrived.wait_for(lambda: request_id in self.responses or self.closed, timeout)
            return request_id in self.responses

    def send(self, message: dict[str, Any]) -> bool:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(message).encode() + b"\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError, OSError):
            return False
        return True

    def tool(self, request_id: int, name: str, arguments: dict[str, Any]) -> bool:
        params = {"name": name, "arguments": arguments}
        return self.send({"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params})

    def handshake(self, timeout: float = 60) -> None:
        client = {"name": "crash", "version": "1"}
        params = {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": client}
        self.send({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": params})
        with self.arrived:
            assert self.arrived.wait_for(lambda: 0 in self.responses, timeout), "the server did not start"
        self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)  # reaped: its pid is gone, as a host would see it
        self.reader.join(timeout=30)
        if self.proc.stdin is not None:
            with suppress(OSError):
                self.proc.stdin.close()

    def failed_archive(self, request_id: int) -> str | None:
        """The archive a commit's FAILED_PRECONDITION error says to retry, if it said that."""
        result = self.responses.get(request_id, {}).get("result", {})
        text = "".join(c.get("text", "") for c in result.get("content", [])) if result.get("isError") else ""
        found = re.search(r"FAILED_PRECONDITION.*archive_id=(archive_\d+)", text)
        return found.group(1) if found else None

    def result(self, request_id: int) -> dict[str, Any] | None:
        """The tool result, if the request was answered successfully before the kill."""
        response = self.responses.get(request_id)
        if response is None or "result" not in response or response["result"].get("isError"):
            return None
        structured: dict[str, Any] = response["result"]["structuredContent"]
        return structured


RETRY_IDS = 100_000  # request ids of retry_archive calls: the commit's id plus this


def stream(
    server: RawServer, tag: str, rng: random.Random, resend: list[tuple[str, str]], sent: dict[int, tuple[str, ...]]
) -> None:
    """Adds and commits, a few of them unanswered at a time, until the server dies; each
    request goes into `sent` before it is written."""
    window = 4
    for number in range(1, 201):
        if number > window and not server.wait_for(number - window):
            break
        session = rng.choice(SESSIONS[:2])
        if rng.random() < 0.08:  # an agent commits and reads the answer before going on
            keep = rng.choice((0, 1, 3))
            sent[number] = ("commit", session)
            alive = server.tool(number, "commit", {"session_id": session, "keep_recent_count": keep})
            if alive and server.wait_for(number) and (failed := server.failed_archive(number)):
                sent[RETRY_IDS + number] = ("retry", session, failed)  # do what FAILED_PRECONDITION says
                alive = server.tool(RETRY_IDS + number, "retry_archive", {"session_id": session, "archive_id": failed})
        else:
            if resend and rng.random() < 0.1:
                session, message_id = resend.pop()
            else:
                message_id = f"{tag}-{number:03d}"
            sent[number] = ("add", session, message_id)
            arguments = {"session_id": session, "role": "user", "content": content_for(message_id)}
            alive = server.tool(number, "add_message", {**arguments, "message_id": message_id})
        if not alive:
            break
        time.sleep(rng.random() * 0.002)


def test_the_real_server_killed_at_random_moments(tmp_path: Path) -> None:
    rng = random.Random(SEED + 1)
    deadline = time.monotonic() + SECONDS * 0.4
    started = time.monotonic()
    moments: Counter[str] = Counter()
    kills = in_phase2 = messages_checked = commits_acknowledged = servers_with_failing_llm = 0
    ledger = Ledger()
    home = tmp_path / "home"
    log_path = tmp_path / "server.log"
    engine: Engine | None = None
    with log_path.open("w") as log:
        try:
            while kills < SERVER_KILLS and time.monotonic() < deadline:
                # Every third server has an LLM endpoint that refuses connections: its Phase 2
                # fails, visibly, and the archives wait for retry_archive.
                unreachable_llm = kills % 3 == 1
                server = RawServer(home, log, **(UNREACHABLE_LLM if unreachable_llm else {}))
                servers_with_failing_llm += unreachable_llm
                sent: dict[int, tuple[str, ...]] = {}
                writer: threading.Thread | None = None
                try:
                    if kills % 6 == 5:  # during start-up: the data directory being opened
                        time.sleep(rng.uniform(0, 1.0))
                        moments["start-up"] += 1
                    else:
                        server.handshake()
                        resend = rng.sample(ledger.unacknowledged(), min(3, len(ledger.unacknowledged())))
                        delay = rng.uniform(0, 1.0)
                        arguments = (server, f"x{kills:03d}", random.Random(rng.random()), resend, sent)
                        writer = threading.Thread(target=stream, args=arguments, daemon=True)
                        writer.start()
                        server.wait_for(1)  # the first call loads the token encoding: kill after it
                        time.sleep(delay)
                        moments["during a stream of adds and commits"] += 1
                finally:
                    server.kill()
                if writer is not None:
                    writer.join(timeout=30)
                    assert not writer.is_alive(), "the client stream hung"

                kills += 1
                for request_id, what in sent.items():
                    if what[0] == "add":
                        ledger.send(what[1], what[2])
                        if server.result(request_id) is not None:
                            ledger.acknowledge(what[1], what[2])
                    elif what[0] == "retry":
                        ledger.retried += server.result(request_id) is not None
                    elif (committed := server.result(request_id)) is not None and committed["archive_id"]:
                        ledger.committed(what[1], committed["archive_id"], committed["archived_messages"])
                        commits_acknowledged += 1
                if engine is None:
                    engine = Engine(Settings(home=home))
                in_phase2 += phase2_in_flight(engine, server.proc.pid) > 0
                messages_checked += check_store(engine, ledger).acknowledged
        finally:
            if engine is not None:
                engine.close()
    loop_seconds = time.monotonic() - started
    assert kills >= MIN_SERVER_KILLS, f"only {kills} server kills in the time budget\n{stderr_tail(log_path)}"
    assert ledger.acknowledged, "no add_message was ever acknowledged: the stream never ran"

    settle_started = time.monotonic()
    settled = anyio.run(settle_over_stdio, home, ledger)
    final, taken_over = final_check(home, ledger)
    settle_seconds = time.monotonic() - settle_started
    report(
        "real stdio server killed",
        {
            "kills": kills,
            "where the kill hit": dict(moments),
            "kills with a Phase 2 task in flight": in_phase2,
            "acknowledged messages checked, summed over checks": messages_checked,
            "messages sent / acknowledged": f"{len(ledger.sent)} / {len(ledger.acknowledged)}",
            "commits acknowledged": commits_acknowledged,
            "archives at the end": final.archives["completed"],
            "Phase 2 tasks taken over (claimed again after their process died)": taken_over,
            "servers started with an unreachable LLM endpoint (their Phase 2 fails)": servers_with_failing_llm,
            "failed archives retried by the client / at the end": f"{ledger.retried} / {settled.archives['retried']}",
            "kill loop seconds": round(loop_seconds, 1),
            "final restart, settle and check seconds": round(settle_seconds, 1),
        },
    )
