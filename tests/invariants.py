"""What must hold of a data directory after crashes and concurrent writers.

A `Ledger` is what clients were told: which message ids they sent, which were
acknowledged (a successful response came back), which archives commits returned.
`check_store` reads the directory back and asserts the product's promises against it:
every acknowledged message is stored exactly once (live or in exactly one archive), no
message appears that nobody sent, nothing reads back torn, archive numbers run 1..n over
disjoint, complete ranges, no archive is wedged (a pending archive has a live task), and
get_context works for every session.
"""

from __future__ import annotations

import itertools
import re
import sqlite3
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

import anyio
from mcp import Client

from tests.conftest import listed_ids, message_ids, stdio_params
from tests.crash_driver import content_for
from tests.test_stdio_server import call
from viking_mcp.engine import Engine
from viking_mcp.models import archive_id, message_text

# Everything the store may leave in the data directory: the database, its WAL and index.
DATABASE_FILES = {"viking.db", "viking.db-wal", "viking.db-shm", "viking.db-journal"}


@dataclass
class Ledger:
    """What the clients were told, across every restart."""

    sent: dict[str, str] = field(default_factory=dict)  # message id -> session
    acknowledged: set[str] = field(default_factory=set)
    # (session, archive id) -> messages it archived, as each successful commit said
    archives: dict[tuple[str, str], int] = field(default_factory=dict)
    retried: int = 0  # failed archives queued again with retry_archive

    def send(self, session: str, message_id: str) -> None:
        assert self.sent.setdefault(message_id, session) == session, f"{message_id} reused across sessions"

    def acknowledge(self, session: str, message_id: str) -> None:
        assert self.sent.get(message_id) == session, f"{message_id} acknowledged but never sent"
        self.acknowledged.add(message_id)

    def committed(self, session: str, archive: str, archived: int) -> None:
        key = (session, archive)
        assert key not in self.archives, f"{archive} of {session} was returned by two commits"
        self.archives[key] = archived

    def unacknowledged(self) -> list[tuple[str, str]]:
        """(session, id) of every message sent whose add was never answered."""
        return sorted((s, m) for m, s in self.sent.items() if m not in self.acknowledged)


@dataclass
class Checked:
    sessions: int = 0
    messages: int = 0
    acknowledged: int = 0
    archives: Counter[str] = field(default_factory=Counter)
    to_take_over: int = 0  # Phase 2 tasks left running (by a process that is gone)


def check_store(engine: Engine, ledger: Ledger, *, only: Collection[str] | None = None) -> Checked:
    """Assert every invariant on the engine's directory; no other process may write meanwhile.

    Every message of every session is counted. Sessions are checked in depth (archives,
    statuses, get_context, every message body read back through expand_archive) and the
    database gets a full integrity_check, unless `only` names the sessions to check in
    depth, without re-reading bodies, and a quick_check does: a cheaper check to run after
    each of hundreds of kills.
    """
    home = engine.settings.home
    stray = {p.name for p in home.iterdir()} - DATABASE_FILES
    assert not stray, f"unexpected files in the data directory: {sorted(stray)}"
    conn = sqlite3.connect(engine.settings.database_path, isolation_level=None)
    try:
        # quick_check: every page and b-tree, but not whether each index matches its table.
        check = "integrity_check" if only is None else "quick_check"
        assert conn.execute(f"PRAGMA {check}").fetchone()[0] == "ok"
        stored = conn.execute("SELECT session_id, message_id FROM messages ORDER BY session_id, seq").fetchall()
    finally:
        conn.close()
    seen = Counter(message_id for _, message_id in stored)
    twice = [m for m, n in seen.items() if n > 1]
    assert not twice, f"{len(twice)} messages stored twice, e.g. {twice[:5]}"
    strangers = [m for s, m in stored if ledger.sent.get(m) != s]
    assert not strangers, f"messages nobody sent to their session: {strangers[:5]}"
    missing = sorted(ledger.acknowledged - set(seen))
    assert not missing, f"{len(missing)} acknowledged messages lost, e.g. {missing[:5]}"

    by_session: dict[str, list[str]] = {}
    for session, message_id in stored:
        by_session.setdefault(session, []).append(message_id)

    checked = Checked(messages=len(stored), acknowledged=len(ledger.acknowledged))
    for row in engine.store.list_sessions(1_000_000, None):
        checked.sessions += 1
        if only is None or row.session_id in only:
            ids = by_session.get(row.session_id, [])
            _check_session(engine, ledger, row.session_id, ids, checked, bodies=only is None)
    checked.to_take_over = len(engine.store.list_tasks("session_commit", "running", None, 1_000_000))
    return checked


def _check_session(
    engine: Engine, ledger: Ledger, session: str, stored_ids: list[str], checked: Checked, *, bodies: bool
) -> None:
    """One session in depth; `stored_ids` are its message ids in order, as the database has them."""
    info = engine.get_session(session)
    archives = engine.store.list_archives(session)
    assert [a.number for a in archives] == list(range(1, info.commit_count + 1)), "archive numbers have gaps"
    through = 0
    for archive in archives:
        name = f"{session}/{archive_id(archive.number)}"
        assert archive.first_seq == through + 1, f"{name} does not start where the one before ended"
        assert archive.message_count == archive.last_seq - archive.first_seq + 1 > 0, name
        through = archive.last_seq
        said = ledger.archives.get((session, archive_id(archive.number)))
        assert said in (None, archive.message_count), f"{name} holds {archive.message_count}, commit said {said}"
        checked.archives[archive.status] += 1
        _check_archive_state(engine, name, archive.status, archive.task_id, archive.abstract, archive.error)
    names = {archive_id(a.number) for a in archives}
    lost = [name for owner, name in ledger.archives if owner == session and name not in names]
    assert not lost, f"acknowledged archives of {session} are gone: {lost}"
    for earlier, later in itertools.pairwise(archives):
        if later.status == "completed":
            assert earlier.status in ("completed", "skipped"), f"{session}: Phase 2 finished out of order"

    if bodies:
        archived = [
            m.id for a in archives for m in engine.expand_archive(session, archive_id(a.number), limit=None).messages
        ]
        live = [m.message for m in engine.store.live_messages(session)]
        for stored in engine.store.read_messages(session, 0, None, 0, None):
            assert message_text(stored.message) == content_for(stored.message.id), f"{stored.message.id} is torn"
        ids = archived + [m.id for m in live]
        assert ids == stored_ids, f"{session}: archives and live messages are not the stored messages"
    else:
        ids = stored_ids
    assert len(ids) == info.total_message_count, f"{session}: counts disagree with the messages"
    assert through + info.message_count == info.total_message_count, f"{session}: live count is off"

    context = engine.get_context(session, 20_000)
    latest = max((a.number for a in archives if a.status == "completed"), default=0)
    after = archives[latest - 1].last_seq if latest else 0
    assert [m.id for m in context.messages] == ids[after:], f"{session}: get_context lost or repeated messages"
    assert context.stats.failedArchives == sum(a.status == "failed" for a in archives)
    engine.get_context(session, 0)


def _check_archive_state(
    engine: Engine, name: str, status: str, task_id: str | None, abstract: str, error: str | None
) -> None:
    """A pending archive has a task that will run; done and failed ones say so visibly."""
    task = engine.store.get_task(task_id) if task_id else None
    assert task is not None, f"{name} has no task"
    if status == "pending":
        assert task.status in ("pending", "running"), f"{name} is pending but its task is {task.status}: wedged"
    elif status == "completed":
        assert task.status == "completed" and abstract, f"{name} is done without its summary or task"
    elif status == "failed":
        assert task.status == "failed" and error and task.error, f"{name} failed without saying why"
    else:
        assert status == "skipped", f"{name} has status {status}"


async def settle_over_stdio(home: Path, ledger: Ledger, timeout: float = 600.0) -> Checked:
    """Start the real server on `home` and do what an agent would until every archive is done:
    commit each session, and when that says FAILED_PRECONDITION, retry the archive it names.
    Then read everything back through the tools and check it against the ledger."""
    checked = Checked()
    async with Client(stdio_params(home)) as client:
        sessions: list[str] = []
        cursor = None
        while True:
            page = await call(client, "list_sessions", limit=500, **({"cursor": cursor} if cursor else {}))
            sessions += listed_ids(page["sessions"])
            if not (cursor := page["next_cursor"]):
                break
        with anyio.fail_after(timeout):
            while True:
                for session in sessions:
                    while True:
                        result = await client.call_tool("commit", {"session_id": session})
                        text = result.content[0].text if result.content else ""  # type: ignore[union-attr]
                        if not result.is_error:
                            committed = result.structured_content or {}
                            if committed.get("archive_id"):
                                ledger.committed(session, committed["archive_id"], committed["archived_messages"])
                            break
                        found = re.search(r"archive_id=(archive_\d+)", text)
                        assert "FAILED_PRECONDITION" in text and found, text
                        await call(client, "retry_archive", session_id=session, archive_id=found.group(1))
                        checked.archives["retried"] += 1
                busy = [
                    t
                    for status in ("pending", "running")
                    for t in listed_ids((await call(client, "list_tasks", status=status, limit=1))["tasks"])
                ]
                if not busy:
                    break
                await anyio.sleep(0.2)

        seen: Counter[str] = Counter()
        for session in sessions:
            info = await call(client, "get_session", session_id=session)
            # The tools show messages as text for a model; their ids are read from the
            # session's files (resources), which hold every message whole.
            ids: list[str] = []
            for number in range(1, info["commit_count"] + 1):
                name = archive_id(number)
                archive = await call(client, "expand_archive", session_id=session, archive_id=name, limit=1)
                heading = archive["archive"].splitlines()[0]
                assert heading.startswith(f"{name} of session {session} ") and ": completed, " in heading, heading
                ids += await message_ids(client, f"viking://session/{session}/history/{name}/messages.jsonl")
                checked.archives["completed"] += 1
            context = (await call(client, "get_context", session_id=session, token_budget=20_000))["context"]
            assert "failed: retry_archive" not in context
            ids += await message_ids(client, f"viking://session/{session}/messages.jsonl")
            assert len(ids) == info["total_message_count"]
            assert all(ledger.sent.get(m) == session for m in ids), f"{session} holds a message nobody sent there"
            seen.update(ids)
        checked.sessions = len(sessions)
        checked.messages = sum(seen.values())
    twice = [m for m, n in seen.items() if n > 1]
    assert not twice, f"{len(twice)} messages stored twice, e.g. {twice[:5]}"
    missing = sorted(ledger.acknowledged - set(seen))
    assert not missing, f"{len(missing)} acknowledged messages lost, e.g. {missing[:5]}"
    checked.acknowledged = len(ledger.acknowledged)
    return checked
