"""Turning what a caller sent into a message we can store, or a coded error.

Every face (MCP, HTTP, CLI, embedded) goes through `build_message`, so a rule about
what a message may be lives here once.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from pydantic import TypeAdapter, ValidationError

from viking_mcp.config import Limits
from viking_mcp.errors import InvalidArgument, ResourceExhausted
from viking_mcp.models import Message, Part, TextPart, normalize_time, utc_now, validate_id

_PARTS = TypeAdapter(list[Part])


def json_depth(value: Any, limit: int) -> int:
    """Nesting depth of a JSON-like value, counted without recursion; stops past `limit`."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list | tuple):
            deepest = max(deepest, depth)
            if deepest > limit:
                return deepest
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return deepest


def describe_validation_error(exc: ValidationError, what: str) -> str:
    problems = []
    for error in exc.errors()[:3]:
        where = ".".join(str(p) for p in error["loc"]) or what
        problems.append(f"{where}: {error['msg']}")
    more = f" (and {exc.error_count() - 3} more)" if exc.error_count() > 3 else ""
    return f"invalid {what}: " + "; ".join(problems) + more


def parse_parts(parts: list[Any], limits: Limits) -> list[Part]:
    if not isinstance(parts, list):
        raise InvalidArgument(f"parts must be a list of part objects, got {type(parts).__name__}")
    if not parts:
        raise InvalidArgument("parts is empty; give at least one part, e.g. {'type': 'text', 'text': '...'}")
    if len(parts) > limits.max_parts:
        raise ResourceExhausted(f"{len(parts)} parts is more than the limit of {limits.max_parts} per message")
    raw = [p.model_dump() if hasattr(p, "model_dump") else p for p in parts]
    if json_depth(raw, limits.max_json_depth + 2) > limits.max_json_depth + 2:
        raise ResourceExhausted(f"a part is nested deeper than {limits.max_json_depth} levels; flatten tool_input")
    try:
        return _PARTS.validate_python(raw)
    except ValidationError as exc:
        raise InvalidArgument(
            describe_validation_error(exc, "parts")
            + ". Parts are {type: text, text}, {type: context, uri, context_type, abstract} or "
            "{type: tool, tool_id, tool_name, tool_input, tool_output, tool_status}"
        ) from None


def check_encodable(payload: Any, limit_bytes: int, what: str) -> int:
    """Size in UTF-8 bytes as stored; rejects text that cannot be stored intact."""
    try:
        size = len(json.dumps(payload, ensure_ascii=False).encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidArgument(f"{what} contains a lone surrogate (invalid Unicode); send valid UTF-8 text") from None
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"{what} is not JSON-serialisable: {exc}") from None
    if size > limit_bytes:
        raise ResourceExhausted(f"{what} is {size} bytes; the limit is {limit_bytes} (VIKING_MCP_MAX_*)")
    return size


def build_message(
    *,
    role: object,
    content: object | None,
    parts: list[Any] | None,
    created_at: str | None,
    message_id: str | None,
    limits: Limits,
    parts_win: bool = False,
) -> Message:
    """Validate an add_message request and return the message to store.

    `content` is shorthand for one text part. Giving both is an error, except where
    `parts_win` keeps OpenViking's HTTP rule (parts win).
    """
    if role not in ("user", "assistant"):
        raise InvalidArgument(f"role {str(role)[:20]!r} is not allowed; use 'user' or 'assistant'")
    if content is not None and parts is not None and not parts_win:
        raise InvalidArgument("give either content or parts, not both (content is shorthand for one text part)")
    if parts is not None:
        parsed = parse_parts(parts, limits)
    elif content is not None:
        if not isinstance(content, str):
            raise InvalidArgument(f"content must be a string, got {type(content).__name__}")
        parsed = [TextPart(text=content)]
    else:
        raise InvalidArgument("give the message as content (text) or parts (a list of parts)")
    message = Message(
        id=validate_id(message_id, "message_id") if message_id is not None else f"msg_{uuid.uuid4().hex}",
        role=role,
        parts=parsed,
        created_at=normalize_time(created_at) if created_at is not None else utc_now(),
    )
    check_encodable([p.model_dump(mode="json") for p in parsed], limits.max_message_bytes, "the message")
    return message
