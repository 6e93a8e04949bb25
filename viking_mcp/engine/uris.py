"""Reading a viking:// URI: every session, message file, archive, summary and memory.

The tree is logical, as in OpenViking: the store keeps rows, and this module renders
the node a URI names (MCP resources read through it; `export_import` writes the same
tree as files).

    viking://session/{session_id}/
      messages.jsonl  .meta.json  .abstract.md  .overview.md  .relations.json
      tools/{tool_id}/tool.json
      history/archive_001/ messages.jsonl .abstract.md .overview.md memory_diff.json .done
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from viking_mcp.engine.phase2 import owners_of
from viking_mcp.errors import InvalidArgument, NotFound
from viking_mcp.memory.categories import SCOPES
from viking_mcp.models import (
    Message,
    Owner,
    StoredMemory,
    archive_id,
    archive_uri,
    parse_archive_id,
    session_uri,
    validate_id,
)

if TYPE_CHECKING:
    from viking_mcp.engine.engine import Engine

SESSION_FILES = ("messages.jsonl", ".meta.json", ".abstract.md", ".overview.md", ".relations.json")
ARCHIVE_FILES = ("messages.jsonl", ".abstract.md", ".overview.md", "memory_diff.json", ".done")

JSON = "application/json"
JSONL = "application/jsonl"
MARKDOWN = "text/markdown"


def _jsonl(messages: list[Message]) -> str:
    return "".join(m.model_dump_json() + "\n" for m in messages)


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, indent=2)


def render_memory(memory: StoredMemory, front: dict[str, Any] | None = None) -> str:
    """A memory as markdown: a front matter of `field: <JSON>` lines (`front`, or by default
    the facts a reader wants), then L0 (abstract), L1 (overview), L2 (content). An export
    writes its memory files with this, the whole memory as the front matter."""
    if front is None:
        fields = ("uri", "category", "name", "created_at", "updated_at", "active_count")
        front = {k: v for k in fields if (v := getattr(memory, k)) not in (None, "")}
        front |= {"stats": memory.stats} if memory.stats else {}
    lines = "\n".join(f"{k}: {json.dumps(v, ensure_ascii=False)}" for k, v in front.items())
    blocks = [f"---\n{lines}\n---", f"# {memory.abstract}"]
    if memory.overview:
        blocks.append(memory.overview)
    if memory.content and memory.content != memory.abstract:
        blocks.append(memory.content)
    return "\n\n".join(blocks) + "\n"


def _read_memory_node(engine: Engine, uri: str, actor: Owner | None) -> tuple[str, str]:
    """viking://{user|agent}/{id}/memories[/{category}[/{name}.md]] and .../profile.md"""
    scope, _, rest = uri[len("viking://") :].partition("/")
    owner_id, _, path = rest.partition("/")
    validate_id(owner_id, f"{scope}_id")
    segments = [s for s in path.split("/") if s]
    if not segments or segments[0] != "memories":
        raise NotFound(f"nothing at {uri[:120]}")
    if actor is not None and owner_id != owners_of(actor)[scope]:  # type: ignore[index]
        raise NotFound(f"nothing at {uri[:120]}")  # another user's (or agent's) memories
    account = (actor or engine.owner).account_id
    if len(segments) <= 2 and not (len(segments) == 2 and segments[1].endswith(".md")):
        category = segments[1] if len(segments) == 2 else None
        if category is not None and SCOPES.get(category) != scope:
            raise NotFound(f"no {category!r} memories under viking://{scope}/")
        listing = [
            {"uri": m.uri, "category": m.category, "abstract": m.abstract}
            for m in engine.store.list_memories(account, scope, owner_id, category, 1000)
        ]
        return _dumps({"uri": uri.rstrip("/"), "memories": listing}), JSON
    found = engine.store.memories_by_uri(account, [uri.rstrip("/")])
    if not found:
        raise NotFound(f"no memory at {uri[:120]}")
    return render_memory(next(iter(found.values()))), MARKDOWN


def read_node(engine: Engine, uri: str, actor: Owner | None = None) -> tuple[str, str]:
    """The content and MIME type of the node at `uri` as `actor` may see it (None: all);
    NOT_FOUND for anything else."""
    if uri.startswith(("viking://user/", "viking://agent/")):
        return _read_memory_node(engine, uri, actor)
    prefix = "viking://session/"
    if not uri.startswith(prefix):
        raise InvalidArgument(f"{uri[:80]!r} is not a viking:// session or memory URI")
    segments = uri[len(prefix) :].rstrip("/").split("/")
    session_id = validate_id(segments[0])
    rest = segments[1:]
    store = engine.store
    info = engine.get_session(session_id, actor=actor)  # NOT_FOUND for an unknown (or another's) session
    here = session_uri(session_id)

    if not rest:
        children = [f"{here}/{name}" for name in (*SESSION_FILES, "history", "tools")]
        return _dumps({"uri": here, "children": children, **info.model_dump()}), JSON
    name = rest[0]
    if len(rest) == 1:
        if name == ".meta.json":
            return info.model_dump_json(indent=2), JSON
        if name == "messages.jsonl":
            return _jsonl([m.message for m in store.live_messages(session_id)]), JSONL
        if name in (".abstract.md", ".overview.md"):
            latest = next((a for a in reversed(store.list_archives(session_id)) if a.status == "completed"), None)
            return ((latest.abstract if name == ".abstract.md" else latest.overview) if latest else ""), MARKDOWN
        if name == ".relations.json":
            usage = store.usage(session_id)
            return _dumps({"contexts": usage.contexts, "skills": usage.skills}), JSON
        if name == "history":
            archives = [
                {"archive_id": archive_id(a.number), "uri": archive_uri(session_id, a.number), "status": a.status,
                 "message_count": a.message_count, "abstract": a.abstract}
                for a in store.list_archives(session_id)
            ]  # fmt: skip
            return _dumps({"uri": f"{here}/history", "archives": archives}), JSON
        if name == "tools":
            tools = [asdict(t) for t in store.tool_records(session_id)]
            return _dumps({"uri": f"{here}/tools", "tools": tools}), JSON
    if name == "tools" and len(rest) in (2, 3) and (len(rest) == 2 or rest[2] == "tool.json"):
        found = [asdict(t) for t in store.tool_records(session_id) if t.tool_id == rest[1]]
        if not found:
            raise NotFound(f"tool call {rest[1][:80]!r} not found in session {session_id}")
        return _dumps(found[0]), JSON
    if name == "history" and len(rest) in (2, 3):
        number = parse_archive_id(rest[1])
        archive = store.get_archive(session_id, number)
        if archive is None:
            raise NotFound(f"{rest[1]} of session {session_id} not found")
        if len(rest) == 2:
            detail = {
                "uri": archive_uri(session_id, number), "archive_id": archive_id(number), "status": archive.status,
                "message_count": archive.message_count, "abstract": archive.shown_abstract, "error": archive.error,
                "children": [f"{archive_uri(session_id, number)}/{f}" for f in ARCHIVE_FILES],
            }  # fmt: skip
            return _dumps(detail), JSON
        file = rest[2]
        if file == "messages.jsonl":
            messages = store.read_messages(session_id, archive.first_seq - 1, archive.last_seq, 0, None)
            return _jsonl([m.message for m in messages]), JSONL
        if file == ".abstract.md":
            return archive.shown_abstract, MARKDOWN
        if file == ".overview.md":
            return archive.shown_overview, MARKDOWN
        if file == "memory_diff.json" and archive.memory_diff is not None:
            return _dumps(archive.memory_diff), JSON
        if file == ".done" and archive.done_at is not None and archive.summarised:
            return archive.done_at, "text/plain"
    raise NotFound(f"nothing at {uri[:120]}")
