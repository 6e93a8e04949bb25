"""The engine against a reference model: random sequences of operations must agree with it.

Hypothesis drives a real `Engine` (SQLite in a temporary directory, Phase 2 run by hand,
as the `engine` fixture does) through random create / add / commit / Phase 2 / retry /
skip / get_context / expand / delete steps, and a few dozen lines of plain Python model
what each step must do: which messages are live and which archive holds the rest, how
archives are numbered, which Phase 2 runs next, what get_context returns for a budget.
A summariser that can be switched to failing makes archives fail, so that the failed,
retried and skipped paths are walked too.

The run is bounded (a few seconds to a minute on a busy machine); for a longer hunt:

    VIKING_HYPOTHESIS_EXAMPLES=500 VIKING_HYPOTHESIS_STEPS=80 pytest tests/test_model_based.py
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from viking_mcp.config import Settings
from viking_mcp.engine import Engine
from viking_mcp.errors import ErrorCode, VikingError
from viking_mcp.models import archive_id
from viking_mcp.summarize.base import ArchiveInput, ArchiveSummary
from viking_mcp.summarize.extractive import ExtractiveSummariser
from viking_mcp.tokens import MESSAGE_OVERHEAD_TOKENS, TokenCounter

EXAMPLES = int(os.environ.get("VIKING_HYPOTHESIS_EXAMPLES", "40"))
STEPS = int(os.environ.get("VIKING_HYPOTHESIS_STEPS", "60"))

# Mostly one session, so it grows several archives; sometimes another, so they must not mix.
SESSIONS = st.sampled_from(["s1", "s1", "s1", "s2"])
MESSAGE_IDS = st.none() | st.sampled_from(["m1", "m2", "m3", "m4"])
PROSE = (
    "Ada flies to Lisbon on Monday . The hotel is booked near the river , budget 300 euros ; "
    "she prefers aisle seats and vegetarian food ! Grace asked about the train to Porto ?"
)
WORDS = st.sampled_from(PROSE.split())
TEXTS = st.lists(WORDS, min_size=1, max_size=40).map(" ".join)
BUDGETS = st.sampled_from([0, 1, 20, 60, 150, 400, 1500, 1_000_000]) | st.integers(0, 3000)
# Archive numbers to ask for: existing ones and a few that are not there (0 is not an id).
NUMBERS = st.integers(1, 8)


class SwitchableSummariser(ExtractiveSummariser):
    """The offline summariser, failing while `broken` is set: Phase 2 then fails the archive."""

    broken = False

    def summarise(self, archive: ArchiveInput) -> ArchiveSummary:
        if self.broken:
            raise RuntimeError("the summariser is switched off by the test")
        return super().summarise(archive)


@dataclass
class ModelMessage:
    id: str
    tokens: int


@dataclass
class ModelArchive:
    number: int
    messages: list[ModelMessage]
    status: str = "pending"  # pending, completed, failed, skipped
    # The agent passed abstract and overview: Phase 2 needs no summariser and cannot fail.
    supplied: bool = False


@dataclass
class ModelSession:
    live: list[ModelMessage] = field(default_factory=list)
    archives: list[ModelArchive] = field(default_factory=list)
    ids: set[str] = field(default_factory=set)

    def latest_completed(self) -> int:
        return max((a.number for a in self.archives if a.status == "completed"), default=0)

    def runnable(self, archive: ModelArchive) -> bool:
        """Phase 2 of an archive runs only after every earlier archive is done."""
        earlier = self.archives[: archive.number - 1]
        return archive.status == "pending" and all(a.status in ("completed", "skipped") for a in earlier)

    def context_messages(self) -> list[str]:
        """get_context's messages: archives after the latest completed one (not skipped), then live."""
        latest = self.latest_completed()
        ids = [m.id for a in self.archives if a.number > latest and a.status != "skipped" for m in a.messages]
        return ids + [m.id for m in self.live]

    def context_tokens(self) -> int:
        latest = self.latest_completed()
        archived = sum(
            m.tokens for a in self.archives if a.number > latest and a.status != "skipped" for m in a.messages
        )
        return archived + sum(m.tokens for m in self.live)


def expect_error(code: ErrorCode, fn: Any, *args: Any, **kwargs: Any) -> None:
    with pytest.raises(VikingError) as info:
        fn(*args, **kwargs)
    assert info.value.code == code, f"expected {code.value}, got {info.value}"


class EngineAgainstModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.home = Path(tempfile.mkdtemp(prefix="viking-model-"))
        self.summariser = SwitchableSummariser(TokenCounter())
        self.engine = Engine(Settings(home=self.home / "home"), summariser=self.summariser)
        self.sessions: dict[str, ModelSession] = {}
        # Phase 2 tasks in the order they were queued: (session, archive number).
        self.queue: list[tuple[str, int]] = []
        self.counter = 0

    def teardown(self) -> None:
        self.engine.close()
        shutil.rmtree(self.home, ignore_errors=True)

    @initialize()
    def start_working(self) -> None:
        self.summariser.broken = False

    # --- model steps --------------------------------------------------------------------------

    def _complete(self, session_id: str, archive: ModelArchive) -> None:
        archive.status = "failed" if self.summariser.broken and not archive.supplied else "completed"
        self.queue.remove((session_id, archive.number))

    def _next_runnable(self) -> tuple[str, ModelArchive] | None:
        for session_id, number in self.queue:
            archive = self.sessions[session_id].archives[number - 1]
            if self.sessions[session_id].runnable(archive):
                return session_id, archive
        return None

    # --- rules ---------------------------------------------------------------------------------

    # Three rules that add messages, so that sessions grow long enough to hold several archives
    # (Hypothesis picks among rules evenly, and favours those that take no arguments).
    @rule(session_id=SESSIONS, messages=st.lists(st.tuples(TEXTS, MESSAGE_IDS), min_size=1, max_size=4))
    def add_messages(self, session_id: str, messages: list[tuple[str, str | None]]) -> None:
        for index, (text, message_id) in enumerate(messages):
            self.add_message(session_id, "user" if index % 2 == 0 else "assistant", text, message_id)

    @rule(session_id=SESSIONS, texts=st.lists(TEXTS, min_size=1, max_size=6))
    def add_conversation(self, session_id: str, texts: list[str]) -> None:
        for index, text in enumerate(texts):
            self.add_message(session_id, "user" if index % 2 == 0 else "assistant", text, None)

    @rule(session_id=SESSIONS, text=TEXTS, message_id=MESSAGE_IDS)
    def add_one(self, session_id: str, text: str, message_id: str | None) -> None:
        self.add_message(session_id, "user", text, message_id)

    def add_message(self, session_id: str, role: str, text: str, message_id: str | None) -> None:
        added = self.engine.add_message(session_id, role, text, message_id=message_id)
        session = self.sessions.get(session_id)
        assert added.session_created == (session is None)
        if session is None:
            session = self.sessions[session_id] = ModelSession()
        if message_id is not None and message_id in session.ids:
            assert added.duplicate and added.message_id == message_id
        else:
            assert not added.duplicate
            assert message_id is None or added.message_id == message_id
            assert added.message_id not in session.ids
            tokens = self.engine.tokens.count(text) + MESSAGE_OVERHEAD_TOKENS
            session.live.append(ModelMessage(added.message_id, tokens))
            session.ids.add(added.message_id)
        assert added.message_count == len(session.live)

    @rule(session_id=SESSIONS)
    def create_session(self, session_id: str) -> None:
        if session_id in self.sessions:
            expect_error(ErrorCode.ALREADY_EXISTS, self.engine.create_session, session_id)
            return
        created = self.engine.create_session(session_id)
        assert created.session_id == session_id
        self.sessions[session_id] = ModelSession()

    @precondition(lambda self: self.sessions)
    @rule(session_id=SESSIONS, keep=st.sampled_from([0, 0, 0, 1, 2, 5]), supplied=st.booleans())
    def commit(self, session_id: str, keep: int, supplied: bool) -> None:
        summaries = {"abstract": "Agent abstract.", "overview": "# Agent overview\n\n- kept"} if supplied else {}
        session = self.sessions.get(session_id)
        if session is None:
            expect_error(ErrorCode.NOT_FOUND, self.engine.commit, session_id, keep_recent_count=keep, **summaries)
            return
        if any(a.status == "failed" for a in session.archives):
            expect_error(ErrorCode.FAILED_PRECONDITION, self.engine.commit, session_id, keep_recent_count=keep)
            return
        result = self.engine.commit(session_id, keep_recent_count=keep, **summaries)
        moving = len(session.live) - keep
        if moving <= 0:
            assert result.status == "skipped" and result.archive_id is None and result.task_id is None
            return
        number = len(session.archives) + 1
        assert result.status == "accepted" and result.archived and result.archived_messages == moving
        assert result.archive_id == archive_id(number) == f"archive_{number:03d}"
        assert result.archive_uri == f"viking://session/{session_id}/history/archive_{number:03d}"
        session.archives.append(ModelArchive(number, session.live[:moving], supplied=supplied))
        session.live = session.live[moving:]
        self.queue.append((session_id, number))

    @precondition(lambda self: self.queue)
    @rule()
    def run_phase2_once(self) -> None:
        expected = self._next_runnable()
        ran = self.engine.run_phase2_once()
        assert ran == (expected is not None)
        if expected is not None:
            self._complete(*expected)

    @precondition(lambda self: self.queue)
    @rule()
    def run_all_phase2(self) -> None:
        count = 0
        while (expected := self._next_runnable()) is not None:
            self._complete(*expected)
            count += 1
        assert self.engine.run_pending_phase2() == count

    @rule(broken=st.booleans())
    def switch_summariser(self, broken: bool) -> None:
        self.summariser.broken = broken

    @precondition(lambda self: any(a.status == "failed" for s in self.sessions.values() for a in s.archives))
    @rule(session_id=SESSIONS, number=NUMBERS, skip=st.booleans())
    def retry_or_skip(self, session_id: str, number: int, skip: bool) -> None:
        action = "skip" if skip else "retry"
        session = self.sessions.get(session_id)
        name = archive_id(number)
        if session is None or number > len(session.archives):
            expect_error(ErrorCode.NOT_FOUND, self.engine.retry_archive, session_id, name, action=action)
            return
        archive = session.archives[number - 1]
        if archive.status != "failed":
            expect_error(ErrorCode.FAILED_PRECONDITION, self.engine.retry_archive, session_id, name, action=action)
            return
        result = self.engine.retry_archive(session_id, name, action=action)
        if skip:
            assert result.status == "skipped" and result.task_id is None
            archive.status = "skipped"
        else:
            assert result.status == "pending" and result.task_id
            archive.status = "pending"
            self.queue.append((session_id, number))

    @rule(session_id=SESSIONS, roll=st.integers(0, 3))
    def delete_session(self, session_id: str, roll: int) -> None:
        """One roll in four: a deletion wipes what the other rules built up."""
        if roll != 0:
            return
        if session_id not in self.sessions:
            expect_error(ErrorCode.NOT_FOUND, self.engine.delete_session, session_id)
            return
        assert self.engine.delete_session(session_id).session_id == session_id
        del self.sessions[session_id]
        self.queue = [(s, n) for s, n in self.queue if s != session_id]
        expect_error(ErrorCode.NOT_FOUND, self.engine.get_session, session_id)
        expect_error(ErrorCode.NOT_FOUND, self.engine.get_context, session_id, 100)
        expect_error(ErrorCode.NOT_FOUND, self.engine.expand_archive, session_id, "archive_001")
        expect_error(ErrorCode.NOT_FOUND, self.engine.commit, session_id)
        expect_error(ErrorCode.NOT_FOUND, self.engine.delete_session, session_id)

    @precondition(lambda self: self.sessions)
    @rule(session_id=SESSIONS, budget=BUDGETS)
    def get_context(self, session_id: str, budget: int) -> None:
        session = self.sessions.get(session_id)
        if session is None:
            expect_error(ErrorCode.NOT_FOUND, self.engine.get_context, session_id, budget)
            return
        context = self.engine.get_context(session_id, budget)
        stats = context.stats
        # Every live message, and those of archives not summarised yet, always, oldest first.
        assert [m.id for m in context.messages] == session.context_messages()
        assert stats.activeTokens == session.context_tokens()
        assert context.estimatedTokens == stats.activeTokens + stats.archiveTokens
        # The archive payload never goes over what the budget leaves after the messages.
        assert stats.archiveTokens <= max(0, budget - stats.activeTokens)
        if budget <= stats.activeTokens:
            assert context.estimatedTokens == stats.activeTokens
        else:
            assert context.estimatedTokens <= budget
        latest = session.latest_completed()
        assert context.latest_archive_id == (archive_id(latest) if latest else None)
        done = [a for a in session.archives if a.status in ("completed", "skipped")]
        failed = [a for a in session.archives if a.status == "failed"]
        assert stats.totalArchives == len(done) + len(failed)
        assert stats.failedArchives == len(failed)
        # Abstracts, newest first, as the seed has them: the latest archive's own, then the
        # earlier ones, the oldest dropped first.
        completed = [archive_id(a.number) for a in reversed(session.archives) if a.status == "completed"]
        overview_in = bool(context.latest_archive_overview)
        candidates = completed
        abstracts = [a.archive_id for a in context.pre_archive_abstracts]
        assert abstracts == candidates[: len(abstracts)], (abstracts, candidates)
        assert all(a.abstract for a in context.pre_archive_abstracts)
        assert stats.includedArchives == len(abstracts)
        # an overview of ours shows the archives it has sections for; another, its own
        shown = set(re.findall(r"^## (archive_\d+)(?: · .*)?$", context.latest_archive_overview, re.MULTILINE))
        shown = (shown or {completed[0]}) if overview_in else set()
        assert stats.droppedArchives == len(done) - len(shown | set(abstracts))
        if budget == 0 or not latest:
            assert not overview_in and not abstracts and stats.archiveTokens == 0
        if budget >= stats.activeTokens + 100_000:
            assert overview_in == bool(latest) and abstracts == candidates

    @precondition(lambda self: self.sessions)
    @rule(session_id=SESSIONS, number=NUMBERS)
    def expand_archive(self, session_id: str, number: int) -> None:
        session = self.sessions.get(session_id)
        name = archive_id(number)
        if session is None or number > len(session.archives):
            expect_error(ErrorCode.NOT_FOUND, self.engine.expand_archive, session_id, name)
            return
        archive = session.archives[number - 1]
        detail = self.engine.expand_archive(session_id, name)
        assert detail.archive_id == name and detail.status == archive.status
        assert detail.message_count == len(archive.messages)
        assert [m.id for m in detail.messages] == [m.id for m in archive.messages]
        assert bool(detail.abstract) == bool(detail.overview) == (archive.status == "completed")
        assert (detail.error is not None) == (archive.status == "failed")

    # --- invariants ----------------------------------------------------------------------------

    @invariant()
    def sessions_agree(self) -> None:
        listed = self.engine.list_sessions(500)
        assert {s.session_id for s in listed.sessions} == set(self.sessions)
        for session_id, session in self.sessions.items():
            info = self.engine.get_session(session_id)
            assert info.message_count == len(session.live)
            assert info.total_message_count == len(session.live) + sum(len(a.messages) for a in session.archives)
            assert info.commit_count == len(session.archives)
            assert info.pending_tokens == sum(m.tokens for m in session.live)
            assert info.total_message_count == len(session.ids)

    @invariant()
    def tasks_agree(self) -> None:
        queued = self.engine.list_tasks(status="pending", limit=500).tasks
        assert len(queued) == len(self.queue)
        assert {t.resource_id for t in queued} == {s for s, _ in self.queue}


EngineAgainstModel.TestCase.settings = settings(
    max_examples=EXAMPLES,
    stateful_step_count=STEPS,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestEngineAgainstModel = EngineAgainstModel.TestCase
