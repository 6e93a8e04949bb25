"""The agent-facing contract, pinned on the wire: every tool's name, parameters,
annotations and output schema. A change here is a change to what models see; make it
on purpose (regenerate the snapshot with VIKING_MCP_UPDATE_CONTRACT=1) and say so in
the CHANGELOG.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

pytestmark = pytest.mark.anyio

SNAPSHOT = Path(__file__).parent / "contract" / "mcp_tools.json"

# name: (required params, optional params, (read_only, destructive, idempotent), result fields)
TOOLS: dict[str, tuple[set[str], set[str], tuple[bool, bool, bool], set[str]]] = {
    "create_session": (
        set(),
        {"session_id", "metadata", "user_id"},
        (False, False, False),
        {"session_id", "uri", "created_at", "user", "metadata"},
    ),
    "list_sessions": (set(), {"limit", "cursor"}, (True, False, True), {"sessions", "next_cursor"}),
    "get_session": (
        {"session_id"},
        {"auto_create"},
        (False, False, True),
        {
            "session_id",
            "uri",
            "created_at",
            "updated_at",
            "message_count",
            "total_message_count",
            "commit_count",
            "memories_extracted",
            "last_commit_at",
            "llm_token_usage",
            "pending_tokens",
            "contexts_used",
            "skills_used",
            "metadata",
            "user",
        },
    ),
    "update_session": ({"session_id", "metadata"}, set(), (False, True, True), {"session_id", "metadata"}),
    "delete_session": ({"session_id"}, set(), (False, True, True), {"session_id", "deleted"}),
    "add_message": (
        {"session_id", "role"},
        {"content", "parts", "created_at", "message_id"},
        (False, False, False),
        {"session_id", "message_id", "message_count", "session_created", "duplicate"},
    ),
    "record_usage": (
        {"session_id"},
        {"contexts", "skill"},
        (False, False, False),
        {"session_id", "contexts_used", "skills_used"},
    ),
    "commit": (
        {"session_id"},
        {"abstract", "overview", "keep_recent_count", "wait", "memories"},
        (False, False, False),
        {
            "session_id",
            "status",
            "task_id",
            "archive_id",
            "archive_uri",
            "archived",
            "archived_messages",
            "reason",
            "task_status",
        },
    ),
    "get_task": (
        {"task_id"},
        set(),
        (True, False, True),
        {"task_id", "task_type", "status", "resource_id", "created_at", "updated_at", "result", "error"},
    ),
    "list_tasks": (
        set(),
        {"task_type", "status", "resource_id", "limit", "offset"},
        (True, False, True),
        {"tasks", "next_offset"},
    ),
    "get_context": (
        {"session_id"},
        {"token_budget", "query"},
        (True, False, True),
        {"context", "estimatedTokens"},
    ),
    "expand_archive": (
        {"session_id", "archive_id"},
        {"offset", "limit"},
        (True, False, True),
        {"archive", "next_offset"},
    ),
    "extract": (
        {"session_id"},
        set(),
        (False, False, False),
        {"session_id", "task_id", "memories", "memories_extracted"},
    ),
    "search_memories": ({"query"}, {"category", "limit", "offset"}, (True, False, True), {"memories", "next_offset"}),
    "search": (
        {"query"},
        {"session_id", "kinds", "since", "until", "limit", "token_budget"},
        (True, False, True),
        {"results"},
    ),
    "retry_archive": (
        {"session_id", "archive_id"},
        {"action"},
        (False, True, False),
        {"session_id", "archive_id", "status", "task_id"},
    ),
}


def _wire(tool: Any) -> dict[str, Any]:
    return {
        "name": tool.name,
        "title": tool.title,
        "description": tool.description,
        "annotations": tool.annotations.model_dump(mode="json", exclude_none=True),
        "input_schema": tool.input_schema,
        "output_schema": tool.output_schema,
    }


async def test_every_tool_matches_the_contract_table(mcp: Client) -> None:
    tools = {t.name: t for t in (await mcp.list_tools()).tools}
    assert set(tools) == set(TOOLS)
    for name, (required, optional, (read_only, destructive, idempotent), fields) in TOOLS.items():
        tool = tools[name]
        schema = tool.input_schema
        assert set(schema.get("required", [])) == required, name
        assert set(schema["properties"]) == required | optional, name
        for param, spec in schema["properties"].items():
            assert spec.get("description"), f"{name}.{param} has no description for the model"
        assert tool.title, name
        assert tool.description and len(tool.description) > 40, name
        annotations = tool.annotations
        assert annotations is not None
        assert (annotations.read_only_hint, annotations.destructive_hint, annotations.idempotent_hint) == (
            read_only,
            destructive,
            idempotent,
        ), name
        assert annotations.open_world_hint is False, name
        assert tool.output_schema is not None, name
        assert set(tool.output_schema["properties"]) == fields, name


async def test_contract_matches_the_snapshot(mcp: Client) -> None:
    wire = [_wire(t) for t in sorted((await mcp.list_tools()).tools, key=lambda t: t.name)]
    if os.environ.get("VIKING_MCP_UPDATE_CONTRACT") == "1":
        SNAPSHOT.parent.mkdir(exist_ok=True)
        SNAPSHOT.write_text(json.dumps(wire, indent=2, sort_keys=True) + "\n")
    assert SNAPSHOT.exists(), "run once with VIKING_MCP_UPDATE_CONTRACT=1 to write the snapshot"
    assert wire == json.loads(SNAPSHOT.read_text())


async def test_resources_and_prompts_are_listed(mcp: Client) -> None:
    templates = {t.uri_template for t in (await mcp.list_resource_templates()).resource_templates}
    for uri in (
        "viking://session/{session_id}",
        "viking://session/{session_id}/messages.jsonl",
        "viking://session/{session_id}/.meta.json",
        "viking://session/{session_id}/.abstract.md",
        "viking://session/{session_id}/.overview.md",
        "viking://session/{session_id}/.relations.json",
        "viking://session/{session_id}/tools/{tool_id}/tool.json",
        "viking://session/{session_id}/history/{archive_id}",
        "viking://session/{session_id}/history/{archive_id}/messages.jsonl",
        "viking://session/{session_id}/history/{archive_id}/.abstract.md",
        "viking://session/{session_id}/history/{archive_id}/.overview.md",
        "viking://session/{session_id}/history/{archive_id}/memory_diff.json",
        "viking://session/{session_id}/history/{archive_id}/.done",
    ):
        assert uri in templates
    for uri in (
        "viking://user/{owner_id}/memories",
        "viking://user/{owner_id}/memories/profile.md",
        "viking://user/{owner_id}/memories/{category}/{name}",
        "viking://agent/{owner_id}/memories/{category}/{name}",
    ):
        assert uri in templates
    prompts = {p.name: p for p in (await mcp.list_prompts()).prompts}
    assert "rebuild_context" in prompts
    arguments = {a.name: a.required for a in prompts["rebuild_context"].arguments or []}
    assert arguments == {"session_id": True, "token_budget": False, "query": False}
