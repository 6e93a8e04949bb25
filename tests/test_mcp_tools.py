"""The MCP face in process: tools, resources and the prompt, as a model would use them."""

from __future__ import annotations

import json
from typing import Any

import pytest
from mcp import Client, MCPError

from tests.conftest import listed_ids
from viking_mcp.mcp.server import result_text

pytestmark = pytest.mark.anyio


async def call(client: Client, tool: str, **arguments: Any) -> dict[str, Any]:
    result = await client.call_tool(tool, arguments)
    assert not result.is_error, result_text(result)
    assert result.structured_content is not None
    return result.structured_content


async def archived_parts(client: Client, archive_uri: str) -> list[Any]:
    """Each archived message's parts, exactly as stored (the archive's messages.jsonl resource)."""
    contents = (await client.read_resource(f"{archive_uri}/messages.jsonl")).contents
    return [json.loads(line)["parts"] for line in contents[0].text.splitlines()]  # type: ignore[union-attr]


async def error(client: Client, tool: str, **arguments: Any) -> str:
    result = await client.call_tool(tool, arguments)
    assert result.is_error
    return result_text(result)


async def coded_error(client: Client, tool: str, **arguments: Any) -> str:
    """The code that starts the message, after the SDK's 'Error executing tool X: ' prefix."""
    text = await error(client, tool, **arguments)
    prefix = f"Error executing tool {tool}: "
    assert text.startswith(prefix), text
    return text[len(prefix) :].split(":", 1)[0]


async def test_errors_carry_their_code_first(mcp: Client) -> None:
    assert await error(mcp, "get_session", session_id="nope") == (
        "Error executing tool get_session: NOT_FOUND: session nope not found; pass auto_create=true to create it"
    )
    assert await coded_error(mcp, "add_message", session_id="a/b", role="user", content="x") == "INVALID_ARGUMENT"
    assert await coded_error(mcp, "add_message", session_id="s", role="robot", content="x") == "INVALID_ARGUMENT"
    await call(mcp, "create_session", session_id="s")
    assert await coded_error(mcp, "create_session", session_id="s") == "ALREADY_EXISTS"
    assert await coded_error(mcp, "expand_archive", session_id="s", archive_id="archive_001") == "NOT_FOUND"
    assert await coded_error(mcp, "expand_archive", session_id="s", archive_id="archive_0001") == "INVALID_ARGUMENT"
    assert await coded_error(mcp, "get_context", session_id="s", token_budget=-5) == "INVALID_ARGUMENT"
    await call(mcp, "add_message", session_id="s", role="user", content="x")
    assert await coded_error(mcp, "retry_archive", session_id="s", archive_id="archive_001") == "NOT_FOUND"


async def test_commit_with_wait_reports_the_finished_task(mcp: Client) -> None:
    await call(mcp, "add_message", session_id="s", role="user", content="Ada's flat in Lisbon has a blue door.")
    committed = await call(mcp, "commit", session_id="s", wait=True)
    assert committed["task_status"] == "completed"
    context = (await call(mcp, "get_context", session_id="s"))["context"]
    assert "<overview>\n## archive_001, " in context and "blue door" in context


async def test_default_budget_is_20000(mcp: Client) -> None:
    tools = {t.name: t for t in (await mcp.list_tools()).tools}
    assert tools["get_context"].input_schema["properties"]["token_budget"]["default"] == 20_000


async def test_list_sessions_pages(mcp: Client) -> None:
    for i in range(5):
        await call(mcp, "create_session", session_id=f"s{i}")
    first = await call(mcp, "list_sessions", limit=2)
    second = await call(mcp, "list_sessions", limit=2, cursor=first["next_cursor"])
    third = await call(mcp, "list_sessions", limit=2, cursor=second["next_cursor"])
    ids = [session_id for page in (first, second, third) for session_id in listed_ids(page["sessions"])]
    assert ids == ["s4", "s3", "s2", "s1", "s0"]
    assert f'cursor="{first["next_cursor"]}"' in first["sessions"]  # a model that reads only the text pages too
    assert third["next_cursor"] is None


async def test_sessions_and_archives_read_as_resources(mcp: Client) -> None:
    tool = {"type": "tool", "tool_id": "c1", "tool_name": "weather", "tool_input": {"city": "Lisbon"},
            "tool_output": "sunny", "tool_status": "completed"}  # fmt: skip
    await call(
        mcp, "add_message", session_id="s", role="user", content="What will the weather be like in Lisbon this weekend?"
    )
    await call(mcp, "add_message", session_id="s", role="assistant", parts=[tool])
    await call(mcp, "record_usage", session_id="s", contexts=["viking://resources/guide"])
    await call(mcp, "commit", session_id="s", wait=True)
    await call(mcp, "add_message", session_id="s", role="user", content="Thanks!")

    async def read(uri: str) -> str:
        contents = (await mcp.read_resource(uri)).contents
        return contents[0].text  # type: ignore[union-attr]

    meta = json.loads(await read("viking://session/s/.meta.json"))
    assert meta["commit_count"] == 1 and meta["message_count"] == 1
    live = [json.loads(line) for line in (await read("viking://session/s/messages.jsonl")).splitlines()]
    assert [m["parts"][0]["text"] for m in live] == ["Thanks!"]
    archived = (await read("viking://session/s/history/archive_001/messages.jsonl")).splitlines()
    assert len(archived) == 2
    assert (await read("viking://session/s/history/archive_001/.abstract.md")).startswith("2 messages")
    assert "Lisbon" in await read("viking://session/s/history/archive_001/.overview.md")
    assert await read("viking://session/s/.overview.md") == await read(
        "viking://session/s/history/archive_001/.overview.md"
    )
    diff = json.loads(await read("viking://session/s/history/archive_001/memory_diff.json"))
    assert diff["archive_id"] == "archive_001"
    assert json.loads(await read("viking://session/s/tools/c1/tool.json"))["tool_output"] == "sunny"
    assert json.loads(await read("viking://session/s/.relations.json"))["contexts"] == ["viking://resources/guide"]
    listing = json.loads(await read("viking://session/s"))
    assert "viking://session/s/messages.jsonl" in listing["children"]
    history = json.loads(await read("viking://session/s/history"))
    assert [a["archive_id"] for a in history["archives"]] == ["archive_001"]
    with pytest.raises(MCPError, match="NOT_FOUND"):
        await read("viking://session/s/history/archive_002/.done")
    with pytest.raises(MCPError):
        await read("viking://session/..%2Fetc/.meta.json")


async def test_rebuild_context_prompt(mcp: Client) -> None:
    await call(mcp, "add_message", session_id="s", role="user", content="My sister Bea lives in Porto since 2019.")
    await call(mcp, "commit", session_id="s", wait=True)
    await call(mcp, "add_message", session_id="s", role="user", content="Where does Bea live?")
    prompt = await mcp.get_prompt("rebuild_context", {"session_id": "s", "token_budget": "2000"})
    text = prompt.messages[0].content.text  # type: ignore[union-attr]
    assert "Porto" in text and "Where does Bea live?" in text and "expand_archive" in text
    arguments = {"session_id": "s", "token_budget": "2000", "query": "sister in Porto"}
    asked = await mcp.get_prompt("rebuild_context", arguments)
    relevant = asked.messages[0].content.text  # type: ignore[union-attr]
    assert "<archived relevant-to-query best-first>\n[archive_001, " in relevant and "Bea lives in Porto" in relevant
    with pytest.raises(MCPError, match="NOT_FOUND: session nope not found"):
        await mcp.get_prompt("rebuild_context", {"session_id": "nope"})


async def test_memories_over_mcp(mcp: Client) -> None:
    await call(mcp, "add_message", session_id="s", role="user", content="I'm a nurse and I live in Porto.")
    memories = [{"category": "entities", "name": "Bea", "abstract": "Bea: my sister, a nurse in Porto."}]
    committed = await call(mcp, "commit", session_id="s", wait=True, memories=memories)
    assert committed["task_status"] == "completed"
    found = await call(mcp, "search_memories", query="Who is Bea?")
    uri = "viking://user/default/memories/entities/bea.md"
    [hit] = found["memories"].splitlines()[1:]
    assert hit == f"{uri} (entities, score 1.00): Bea: my sister, a nurse in Porto."
    assert found["next_offset"] is None
    text = (await mcp.read_resource(uri)).contents[0].text  # type: ignore[union-attr]
    assert "# Bea: my sister, a nurse in Porto." in text
    listing = json.loads((await mcp.read_resource("viking://user/default/memories")).contents[0].text)  # type: ignore[union-attr]
    assert [m["uri"] for m in listing["memories"]] == [uri]

    await call(mcp, "add_message", session_id="s", role="user", content="Yesterday I ran my first 10k in Porto.")
    extracted = await call(mcp, "extract", session_id="s")
    assert {m["category"] for m in extracted["memories"]} >= {"events"}
    bad = await mcp.call_tool("search_memories", {"query": "x", "category": "hobbies"})
    assert bad.is_error and "INVALID_ARGUMENT" in result_text(bad)


async def test_commit_wait_sends_progress_notifications(settings: Any) -> None:
    import time

    from viking_mcp.engine import Engine
    from viking_mcp.mcp.server import build_server
    from viking_mcp.summarize.base import ArchiveInput, ArchiveSummary

    class Slow:
        name = "slow"

        def summarise(self, archive: ArchiveInput) -> ArchiveSummary:
            time.sleep(1.0)
            return ArchiveSummary(abstract="done", overviews=["done"])

    engine = Engine(settings, summariser=Slow())
    try:
        async with Client(build_server(engine=engine)) as client:
            await call(client, "add_message", session_id="s", role="user", content="Something to summarise slowly.")
            updates: list[tuple[float, float | None, str | None]] = []

            async def on_progress(progress: float, total: float | None, message: str | None) -> None:
                updates.append((progress, total, message))

            result = await client.call_tool("commit", {"session_id": "s", "wait": True}, progress_callback=on_progress)
            assert result.structured_content is not None
            assert result.structured_content["task_status"] == "completed"
            assert len(updates) >= 2 and all(total == 40.0 for _, total, _ in updates)
            assert [p for p, _, _ in updates] == sorted(p for p, _, _ in updates)
    finally:
        engine.close()


async def test_an_append_waits_for_another_writer_off_the_event_loop(mcp: Client, settings: Any) -> None:
    """add_message appends on a worker thread, never on the event loop: while another
    process holds the write lock it waits there, other calls go on, and it lands once the
    lock is released."""
    import sqlite3

    import anyio

    await call(mcp, "add_message", session_id="s", role="user", content="first")
    other = sqlite3.connect(settings.database_path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another writer holds the lock
    added: dict[str, Any] = {}
    try:

        async def append() -> None:
            added.update(await call(mcp, "add_message", session_id="s", role="user", content="second"))

        async with anyio.create_task_group() as group:
            group.start_soon(append)
            await anyio.sleep(0.3)
            assert not added  # still waiting for the lock
            # The loop is free meanwhile: had the append blocked it, this call could not run
            # before the lock is released (and would see two messages).
            session = await call(mcp, "get_session", session_id="s")
            assert session["message_count"] == 1
            other.execute("COMMIT")
    finally:
        if other.in_transaction:
            other.execute("ROLLBACK")
        other.close()
    assert added["message_count"] == 2
    context = (await call(mcp, "get_context", session_id="s", token_budget=1000))["context"]
    assert "] user: first\n" in context and context.index("user: first") < context.index("user: second")


@pytest.mark.parametrize(
    "content", ['{"ok": true}', '["a", "b"]', "[1, 2, 3]", '"quoted"', "42", "null", "true", "{not json"]
)
async def test_text_that_reads_as_json_is_stored_as_text(mcp: Client, content: str) -> None:
    """The SDK reads a string argument as JSON unless it is annotated exactly `str`
    (modelcontextprotocol/python-sdk#1873); for `content: str | None` that turned a tool's
    JSON output into an object and refused it, and "null" into no message. Free text is
    annotated `OptionalText` (mcp/state.py) so that it stays as sent."""
    added = await call(mcp, "add_message", session_id="s", role="assistant", content=content)
    assert not added["duplicate"]
    archive = await call(mcp, "commit", session_id="s", abstract=content, overview=content, wait=True)
    detail = (await call(mcp, "expand_archive", session_id="s", archive_id=archive["archive_id"]))["archive"]
    assert f"] assistant: {content}\n" in detail
    assert f"\nabstract: {content}\n" in detail
    assert f"\noverview:\n{content}\n" in detail
    assert await archived_parts(mcp, archive["archive_uri"]) == [[{"type": "text", "text": content}]]


async def test_an_explicit_null_for_free_text_means_not_given(mcp: Client) -> None:
    parts = [{"type": "text", "text": "in parts"}]
    added = await call(mcp, "add_message", session_id="s", role="user", content=None, parts=parts)
    assert added["message_count"] == 1
    committed = await call(mcp, "commit", session_id="s", abstract=None, overview=None, wait=True)
    detail = (await call(mcp, "expand_archive", session_id="s", archive_id=committed["archive_id"]))["archive"]
    assert "] user: in parts\n" in detail
    assert "\nabstract: " in detail and "\noverview:\n" in detail  # the built-in summariser wrote them
    assert await archived_parts(mcp, committed["archive_uri"]) == [parts]
    refused = await mcp.call_tool("add_message", {"session_id": "s", "role": "user", "content": 42})
    assert refused.is_error and "INVALID_ARGUMENT" in result_text(refused)


async def test_free_text_is_listed_as_an_optional_string(mcp: Client) -> None:
    tools = {tool.name: tool for tool in (await mcp.list_tools()).tools}
    for tool, argument in (("add_message", "content"), ("commit", "abstract"), ("commit", "overview")):
        schema = tools[tool].input_schema["properties"][argument]
        assert schema["anyOf"] == [{"type": "string"}, {"type": "null"}] and schema["default"] is None


async def test_lists_and_objects_sent_as_json_text_are_still_read(mcp: Client) -> None:
    """What the SDK's JSON reading is for: a host that sends a list or an object as JSON text."""
    parts = json.dumps([{"type": "text", "text": "as JSON text"}])
    await call(mcp, "add_message", session_id="s", role="user", parts=parts)
    await call(mcp, "update_session", session_id="s", metadata=json.dumps({"topic": "json"}))
    info = await call(mcp, "get_session", session_id="s")
    assert info["metadata"] == {"topic": "json"}
    context = (await call(mcp, "get_context", session_id="s"))["context"]
    assert "] user: as JSON text\n" in context


async def test_null_for_an_optional_id_or_filter_still_means_none(mcp: Client) -> None:
    """Only free text (content, abstract, overview) is kept as sent; for other optional
    arguments a host's "null" still means none, as the SDK reads it."""
    first = await call(mcp, "add_message", session_id="s", role="user", content="one", message_id="null")
    second = await call(mcp, "add_message", session_id="s", role="user", content="two", message_id="null")
    assert not second["duplicate"] and first["message_id"] != second["message_id"] != "null"
    tasks = await call(mcp, "list_tasks", status="null", task_type="null")
    assert tasks == {"tasks": "(no tasks)", "next_offset": None}
    page = await call(mcp, "list_sessions", cursor="null")
    assert listed_ids(page["sessions"]) == ["s"]
