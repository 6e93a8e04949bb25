"""Hostile data (issue 15: B8, B12 and the export case), on real processes: the stdio server,
the HTTP server and the CLI, each started the way a person or a host starts it.

- B8: every whole number a caller gives (tool arguments, query and body fields, CLI options,
  the counts in an export's files) is bounded where it is declared; past the bound the call
  answers INVALID_ARGUMENT saying the range, never an uncoded OverflowError.
- B12: import refuses what it would not import (a linked session folder, a stray file),
  loudly, importing nothing; and it parses the export before it takes the store's write
  lock, so that a live server on the same data keeps answering through a large import.
- Export case: ids that differ only in case (`Trip`, `trip`) are written to names a
  case-insensitive filesystem keeps apart, and import restores both.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import string
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from tests.conftest import server_env, stdio_params
from tests.test_http_api import NO_KEY, Server, http_server
from viking_mcp.config import Settings
from viking_mcp.engine import Engine
from viking_mcp.engine.export_import import export_tree, import_tree
from viking_mcp.errors import InvalidArgument
from viking_mcp.models import Owner

pytestmark = pytest.mark.slow

MAX_COUNT = 2**53  # the bound on every count: the largest whole number every JSON reader keeps exact
HUGE = [MAX_COUNT + 1, 2**63, 2**64, 10**30]


def cli(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "viking_mcp", *args],
        input="",
        capture_output=True,
        text=True,
        env=server_env(home, **env),
        timeout=120,
    )


def refused(done: subprocess.CompletedProcess[str], code: str = "INVALID_ARGUMENT", status: int = 1) -> str:
    """The command failed the documented way: one coded line on stderr, nothing on stdout."""
    assert done.returncode == status, (done.stdout, done.stderr)
    assert done.stdout == ""
    assert done.stderr.startswith(f"viking-mcp: {code}: "), done.stderr
    assert "Traceback" not in done.stderr and "OverflowError" not in done.stderr
    return done.stderr


def seeded(home: Path, *session_ids: str) -> None:
    """Sessions with an archive (committed, summarised) and a live message each."""
    engine = Engine(Settings(home=home))
    try:
        for session_id in session_ids:
            engine.add_message(session_id, "user", content=f"I'm planning a trip ({session_id}) to Lisbon in May.")
            engine.add_message(session_id, "assistant", content="Noted: Lisbon, May.")
            engine.commit(session_id, abstract="Trip to Lisbon in May.", overview="## Trip\nLisbon, May.")
            engine.add_message(session_id, "user", content="Book the aisle seat, please.")
        engine.run_pending_phase2()
    finally:
        engine.close()


def session_ids(home: Path) -> list[str]:
    done = cli(home, "session", "list", "--json")
    assert done.returncode == 0, done.stderr
    return sorted(s["session_id"] for s in json.loads(done.stdout)["sessions"])


# --- B8: whole numbers are bounded where they are declared ----------------------------------------


def tool_error(result: Any) -> str:
    assert result.is_error, result.content
    return "".join(getattr(block, "text", "") for block in result.content)


@pytest.mark.anyio
async def test_count_arguments_past_their_bound_are_invalid_over_stdio(tmp_path: Path) -> None:
    """B8: `expand_archive(offset=2**63)` answered an uncoded OverflowError."""
    seeded(tmp_path / "home", "trip")
    async with Client(stdio_params(tmp_path / "home")) as client:
        schemas = {t.name: t.input_schema["properties"] for t in (await client.list_tools()).tools}
        for tool, argument in (("expand_archive", "offset"), ("get_context", "token_budget"),
                               ("commit", "keep_recent_count")):  # fmt: skip
            assert schemas[tool][argument]["maximum"] == MAX_COUNT, (tool, schemas[tool][argument])
        for number in HUGE:
            calls = {
                "expand_archive": {"session_id": "trip", "archive_id": "archive_001", "offset": number},
                "get_context": {"session_id": "trip", "token_budget": number},
                "commit": {"session_id": "trip", "keep_recent_count": number},
            }
            for tool, arguments in calls.items():
                text = tool_error(await client.call_tool(tool, arguments))
                assert "INVALID_ARGUMENT" in text and "less than or equal to 9007199254740992" in text, text
            with pytest.raises(MCPError, match=r"INVALID_ARGUMENT: token_budget .* is out of range; use 0\.\."):
                await client.get_prompt("rebuild_context", {"session_id": "trip", "token_budget": str(number)})
        # At the bound, the calls work.
        page = await client.call_tool(
            "expand_archive", {"session_id": "trip", "archive_id": "archive_001", "offset": MAX_COUNT}
        )
        assert not page.is_error and page.structured_content is not None
        assert page.structured_content["next_offset"] is None
        assert f"(no messages from offset {MAX_COUNT}: the archive has " in page.structured_content["archive"]
        context = await client.call_tool("get_context", {"session_id": "trip", "token_budget": MAX_COUNT})
        assert not context.is_error, context.content
        live = await client.call_tool("commit", {"session_id": "trip", "keep_recent_count": MAX_COUNT})
        assert not live.is_error and live.structured_content is not None
        assert live.structured_content["status"] == "skipped"  # everything kept live: nothing archived


@pytest.mark.anyio
async def test_count_arguments_past_their_bound_are_invalid_over_http(tmp_path: Path) -> None:
    """B8 over the HTTP server: the REST routes and MCP at /mcp."""
    seeded(tmp_path / "home", "trip")
    with http_server(tmp_path) as server:
        for number in HUGE:
            for path in (f"/api/v1/sessions/trip/context?token_budget={number}",
                         f"/api/v1/sessions/trip/archives/archive_001?offset={number}"):  # fmt: skip
                message = server.error("GET", path, key=NO_KEY, status=400, code="INVALID_ARGUMENT")
                assert "9007199254740992" in message, message
            body = {"keep_recent_count": number}
            message = server.error(
                "POST", "/api/v1/sessions/trip/commit", body, key=NO_KEY, status=400, code="INVALID_ARGUMENT"
            )
            assert "9007199254740992" in message, message
        at_the_bound = server.ok("GET", f"/api/v1/sessions/trip/archives/archive_001?offset={MAX_COUNT}", key=NO_KEY)
        assert at_the_bound["messages"] == []
        async with Client(f"{server.base}/mcp") as client:
            for number in HUGE:
                arguments = {"session_id": "trip", "archive_id": "archive_001", "offset": number}
                text = tool_error(await client.call_tool("expand_archive", arguments))
                assert "INVALID_ARGUMENT" in text and "offset" in text, text
        openapi = json.loads(server.raw("GET", "/openapi.json")[2])
        body_schema = openapi["components"]["schemas"]["CommitBody"]["properties"]["keep_recent_count"]
        assert {"maximum": MAX_COUNT, "minimum": 0, "type": "integer"} in body_schema["anyOf"], body_schema


def test_cli_options_past_their_bound_are_invalid(tmp_path: Path) -> None:
    home = tmp_path / "home"
    seeded(home, "trip")
    for number in HUGE:
        assert "token_budget" in refused(cli(home, "session", "context", "trip", "--budget", str(number)))
        assert "keep_recent_count" in refused(cli(home, "session", "commit", "trip", "--keep-recent", str(number)))
        assert "limit" in refused(cli(home, "session", "list", "--limit", str(number)))
    # A busy timeout past threading.TIMEOUT_MAX made every write an OverflowError.
    message = refused(cli(home, "session", "new", "--id", "x", VIKING_MCP_BUSY_TIMEOUT_MS=str(10**20)))
    assert "VIKING_MCP_BUSY_TIMEOUT_MS" in message and "maximum" in message, message
    # A port past 65535 made the HTTP server die with an OverflowError from bind().
    for port in ("65536", str(2**64), "-1"):
        message = refused(cli(home, "serve", "--transport", "http", "--port", port), status=2)
        assert "--port" in message and "0 to 65535" in message, message


def export_of(home: Path, tmp_path: Path, name: str) -> Path:
    directory = tmp_path / name
    done = cli(home, "export", str(directory))
    assert done.returncode == 0, done.stderr
    return directory


def edit_lines(path: Path, change: Any) -> None:
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    path.write_text("".join(json.dumps(line) + "\n" for line in change(lines)))


@pytest.mark.parametrize("tokens", [2**62, 2**53 // 2 + 1])
def test_import_refuses_token_counts_whose_sum_overflows(tmp_path: Path, tokens: int) -> None:
    """B8: an export whose messages say `tokens: 2**62` was imported as `INTERNAL: OverflowError`
    (the session's running total passed 64 bits); each count may be in range and their sum not."""
    seeded(tmp_path / "source", "trip")
    exported = export_of(tmp_path / "source", tmp_path, "export")
    edit_lines(exported / "session" / "trip" / "messages.jsonl", lambda ls: [{**m, "tokens": tokens} for m in ls])
    edit_lines(
        exported / "session" / "trip" / "history" / "archive_001" / "messages.jsonl",
        lambda ls: [{**m, "tokens": tokens} for m in ls],
    )
    home = tmp_path / "home"
    message = refused(cli(home, "import", str(exported)))
    assert "session/trip" in message and ("2**53" in message or str(MAX_COUNT) in message), message
    assert session_ids(home) == []


# --- B12: import refuses what it would not import, and parses before it locks ------------------------


def link_session_out(exported: Path, tmp_path: Path) -> None:
    moved = tmp_path / "elsewhere" / "beta"
    moved.parent.mkdir()
    shutil.move(exported / "session" / "beta", moved)
    os.symlink(moved, exported / "session" / "beta")


def link_session_in(exported: Path, _: Path) -> None:
    os.symlink("alpha", exported / "session" / "gamma")


def link_history(exported: Path, _: Path) -> None:
    history = exported / "session" / "beta" / "history"
    shutil.move(history, exported / "session" / "beta" / "old")
    os.symlink("old", history)


def stray_file(exported: Path, _: Path) -> None:
    (exported / "session" / "beta" / "notes.txt").write_text("my notes")


def stray_session_file(exported: Path, _: Path) -> None:
    (exported / "session" / "delta.json").write_text("{}")


def link_memories(exported: Path, tmp_path: Path) -> None:
    memories = exported / "user" / "default" / "memories"
    shutil.move(memories, tmp_path / "memories")
    os.symlink(tmp_path / "memories", memories)


def stray_top_folder(exported: Path, _: Path) -> None:
    (exported / "sessions").mkdir()  # a typo of session/: its content would never be read


NOT_IMPORTED = {
    "a session folder linked out of the export": (link_session_out, r"session/beta leads outside"),
    "a session folder linked inside the export": (link_session_in, r"session/gamma is not a regular file or folder"),
    "a linked history folder": (link_history, r"session/beta/history is not a regular file or folder"),
    "a stray file in a session": (stray_file, r"session/beta/notes.txt: import does not read this file"),
    "a stray file among sessions": (stray_session_file, r"session/delta.json: import does not read this file"),
    "a linked memories folder": (link_memories, r"user/default/memories leads outside"),
    "an unknown folder": (stray_top_folder, r"sessions: import does not read this folder"),
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("exported")
    seeded(root / "home", "alpha", "beta")
    engine = Engine(Settings(home=root / "home"))
    try:
        memories = [{"category": "preferences", "name": "seats", "abstract": "Prefers the aisle seat."}]
        engine.add_message("alpha", "user", content="Aisle seats, always.")
        engine.commit("alpha", abstract="Seats.", overview="Aisle.", memories=memories)
        engine.run_pending_phase2()
    finally:
        engine.close()
    return export_of(root / "home", root, "export")


def test_import_of_a_linked_session_folder_is_refused_loudly(exported: Path, tmp_path: Path) -> None:
    """B12: a session folder that is a link was skipped: "Imported 1 session", exit 0."""
    crafted = tmp_path / "crafted"
    shutil.copytree(exported, crafted, symlinks=True)
    link_session_out(crafted, tmp_path)
    home = tmp_path / "home"
    message = refused(cli(home, "import", str(crafted)))
    assert "session/beta" in message, message
    assert session_ids(home) == []  # nothing imported half-way
    crafted.joinpath("session", "beta").unlink()
    shutil.move(tmp_path / "elsewhere" / "beta", crafted / "session" / "beta")
    (crafted / "session" / ".DS_Store").write_bytes(b"\0")  # a desktop's hidden file is no part of it
    done = cli(home, "import", str(crafted))
    assert done.returncode == 0, done.stderr
    assert session_ids(home) == ["alpha", "beta"]


@pytest.mark.parametrize("case", list(NOT_IMPORTED))
def test_import_refuses_what_it_would_not_read(case: str, exported: Path, tmp_path: Path) -> None:
    change, message = NOT_IMPORTED[case]
    crafted = tmp_path / "crafted"
    shutil.copytree(exported, crafted, symlinks=True)
    change(crafted, tmp_path)
    engine = Engine(Settings(home=tmp_path / "home"))
    try:
        with pytest.raises(InvalidArgument, match=message):
            import_tree(engine, crafted)
        assert engine.list_sessions().sessions == []
    finally:
        engine.close()


# Long runs of random letters: the tokenizer's slowest input per byte (about 1 MB/s), so an
# export of a few MB takes seconds to read and a fraction of that to write.
_LETTERS = "".join(string.ascii_letters[i % 52] for i in range(256))


def slow_text(rng: random.Random, size: int, word: int = 3000) -> str:
    return " ".join(rng.randbytes(word).decode("latin-1").translate(_LETTERS) for _ in range(size // word))


def large_export(exported: Path, tmp_path: Path, sessions: list[str], messages: int, text_bytes: int) -> Path:
    """`exported`'s session alpha as `sessions`, each with many long messages whose token counts
    are not given: import counts them, as it would for a hand-written export (the slow part of
    reading one)."""
    big = tmp_path / "big"
    shutil.copytree(exported, big)
    for name in ("tasks.jsonl", "context_usage.jsonl"):
        (big / name).write_text("")
    shutil.rmtree(big / "user")
    alpha = big / "session" / "alpha"
    shutil.rmtree(big / "session")
    shutil.copytree(exported / "session" / "alpha", alpha)
    meta = json.loads((alpha / ".meta.json").read_text())
    template = json.loads((alpha / "history" / "archive_001" / "messages.jsonl").read_text().splitlines()[0])
    for archive in (alpha / "history").iterdir():
        archive_meta = json.loads((archive / ".meta.json").read_text())
        (archive / ".meta.json").write_text(json.dumps({**archive_meta, "task_id": None}))
    (alpha / ".relations.json").write_text("{}")
    rng = random.Random(15)
    for session_id in sessions:
        session = big / "session" / session_id
        shutil.copytree(alpha, session)
        with (session / "messages.jsonl").open("w") as file:
            for i in range(messages):
                text = slow_text(rng, text_bytes)
                line = {**template, "id": f"m{i}", "parts": [{"type": "text", "text": text}]}
                line.pop("tokens", None)
                file.write(json.dumps(line) + "\n")
        archived = meta["total_message_count"] - meta["message_count"]
        counts = {"message_count": messages, "total_message_count": archived + messages}
        (session / ".meta.json").write_text(json.dumps({**meta, "session_id": session_id, **counts}))
    shutil.rmtree(alpha)
    return big


def writes_during(server: Server, command: list[str]) -> tuple[subprocess.CompletedProcess[str], list[Any]]:
    """Run the CLI on the server's data directory, with the server taking writes all along:
    the command's outcome, and each write's HTTP status (and its error code, if any)."""
    answers: list[Any] = []
    running = threading.Event()

    def keep_writing() -> None:
        while running.is_set():
            body = {"role": "user", "content": "still here"}
            status, envelope = server.call("POST", "/api/v1/sessions/live/messages", body, key=NO_KEY)
            answers.append(status if status == 200 else (status, envelope["error"]["code"]))

    writer = threading.Thread(target=keep_writing)
    running.set()
    writer.start()
    try:
        done = cli(server.home, *command)
    finally:
        running.clear()
        writer.join()
    return done, answers


def test_a_live_server_keeps_answering_through_a_large_import(exported: Path, tmp_path: Path) -> None:
    """B12: import held the store's write lock while it parsed the export, so a live server on the
    same data answered its writes 503 (busy) for as long as the parse took: over a second here,
    past the server's 300 ms busy timeout. Now the lock is held only while the parsed records
    are written (about 60 ms here)."""
    big = large_export(exported, tmp_path, ["big"], messages=200, text_bytes=30_000)
    (tmp_path / "server").mkdir()
    with http_server(tmp_path / "server", VIKING_MCP_BUSY_TIMEOUT_MS="300") as server:
        done, answers = writes_during(server, ["import", str(big)])
        assert done.returncode == 0, done.stderr
        assert set(answers) == {200}, [a for a in answers if a != 200]
        assert len(answers) >= 5, answers  # the server was asked all along
        assert server.ok("GET", "/api/v1/sessions/big", key=NO_KEY)["message_count"] == 200
        assert server.ok("GET", "/api/v1/sessions/live", key=NO_KEY)["message_count"] == len(answers)


def test_an_import_refused_after_a_long_read_never_held_the_lock(exported: Path, tmp_path: Path) -> None:
    """B12: the export's last session is damaged, found only after the others were read. The
    import used to find it inside its write transaction, the server's writes waiting (and
    answering 503) meanwhile; now it is found before the store is asked for the lock, so even
    a server with a 200 ms busy timeout answers every write."""
    big = large_export(exported, tmp_path, ["big1", "big2", "zzz"], messages=40, text_bytes=30_000)
    edit_lines(big / "session" / "zzz" / "messages.jsonl", lambda ls: [*ls[:-1], {**ls[-1], "role": "robot"}])
    (tmp_path / "server").mkdir()
    with http_server(tmp_path / "server", VIKING_MCP_BUSY_TIMEOUT_MS="200") as server:
        done, answers = writes_during(server, ["import", str(big)])
        assert "session/zzz/messages.jsonl line 40: role" in refused(done)
        assert set(answers) == {200}, [a for a in answers if a != 200]
        assert len(answers) >= 5, answers
        assert [s["session_id"] for s in server.ok("GET", "/api/v1/sessions", key=NO_KEY)["sessions"]] == ["live"]


# --- the export case: ids that differ only in case ---------------------------------------------------


@pytest.fixture
def cased(tmp_path: Path) -> Iterator[Engine]:
    """Sessions `Trip` and `trip`, tool calls `Call-1` and `call-1` in one session, users `Ada` and
    `ada` with memories: on a case-insensitive filesystem, each pair is one name."""
    engine = Engine(Settings(home=tmp_path / "source"))
    try:
        for user, session_id in (("Ada", "Trip"), ("ada", "trip")):
            actor = Owner("default", user, "default")
            engine.add_message(session_id, "user", content=f"{user}: I fly to Lisbon on 3 May.", actor=actor)
            for tool_id in ("Call-1", "call-1"):
                part = {"type": "tool", "tool_id": tool_id, "tool_name": "book", "tool_input": {"who": user},
                        "tool_output": tool_id, "tool_status": "completed"}  # fmt: skip
                engine.add_message(session_id, "assistant", parts=[part], actor=actor)
            memories = [{"category": "preferences", "name": "seats", "abstract": f"{user} prefers the aisle."}]
            engine.commit(session_id, abstract=f"{user}'s trip.", overview="Lisbon.", memories=memories, actor=actor)
            engine.add_message(session_id, "user", content=f"{user} again, live.", actor=actor)
        engine.run_pending_phase2()
        yield engine
    finally:
        engine.close()


def seen_by(engine: Engine, user: str, session_id: str) -> dict[str, Any]:
    actor = Owner("default", user, "default")
    return {
        "session": engine.get_session(session_id, actor=actor).model_dump(),
        "context": engine.get_context(session_id, 10_000, actor=actor).model_dump(),
        "archive": engine.expand_archive(session_id, "archive_001", actor=actor).model_dump(),
        "tools": [(t.tool_id, t.tool_output) for t in engine.store.tool_records(session_id)],
        "memories": engine.search_memories("aisle", actor=actor).model_dump(),
    }


def test_ids_that_differ_only_in_case_are_exported_apart_and_imported_whole(cased: Engine, tmp_path: Path) -> None:
    """Export case: `Trip` and `trip` were written to one folder on a case-insensitive filesystem
    (macOS's default), one session's files over the other's, and the export reported success."""
    exported = export_of(tmp_path / "source", tmp_path, "export")
    paths = [p.relative_to(exported).as_posix() for p in exported.rglob("*")]
    folded: dict[str, list[str]] = {}
    for path in paths:
        folded.setdefault(path.lower(), []).append(path)
    assert [names for names in folded.values() if len(names) > 1] == []  # what such a filesystem would merge
    assert "session/Trip/.meta.json" in paths and "session/trip~2/.meta.json" in paths, sorted(paths)

    home = tmp_path / "home"
    done = cli(home, "import", str(exported))
    assert done.returncode == 0, done.stderr
    restored = Engine(Settings(home=home))
    try:
        for user, session_id in (("Ada", "Trip"), ("ada", "trip")):
            assert seen_by(restored, user, session_id) == seen_by(cased, user, session_id)
        assert seen_by(cased, "Ada", "Trip") != seen_by(cased, "ada", "trip")
        # Exported again, the restored store writes the same files.
        again = tmp_path / "again"
        export_tree(restored, again)
        assert sorted(p.relative_to(again).as_posix() for p in again.rglob("*")) == sorted(paths)
    finally:
        restored.close()
