"""Turning what a caller sent into a message we can store, or a coded error.

Every face (MCP, HTTP, CLI, embedded) goes through `build_message`, so a rule about
what a message may be lives here once.
"""

from __future__ import annotations

import json
import uuid
from typing import Any, TypeVar

from pydantic import BaseModel, TypeAdapter, ValidationError

from viking_mcp.config import Limits
from viking_mcp.errors import InvalidArgument, ResourceExhausted
from viking_mcp.models import Message, Part, TextPart, normalize_time, validate_id

_PARTS = TypeAdapter(list[Part])
Model = TypeVar("Model", bound=BaseModel)


def json_depth(value: Any, limit: int, what: str = "the value") -> int:
    """Nesting depth of a JSON-like value, counted without recursion; stops past `limit`.

    Also rejects object keys that are not strings (JSON would silently turn them into
    strings, and what is stored must be what was sent)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list | tuple):
            deepest = max(deepest, depth)
            if deepest > limit:
                return deepest
            if isinstance(item, dict):
                if bad := next((key for key in item if not isinstance(key, str)), None):
                    raise InvalidArgument(f"{what}: object keys must be strings, got {bad!r}")
                stack.extend((child, depth + 1) for child in item.values())
            else:
                stack.extend((child, depth + 1) for child in item)
    return deepest


def describe_validation_error(exc: ValidationError, what: str) -> str:
    problems = [f"{'.'.join(str(p) for p in e['loc']) or what}: {e['msg']}" for e in exc.errors()[:3]]
    more = f" (and {exc.error_count() - 3} more)" if exc.error_count() > 3 else ""
    return f"invalid {what}: " + "; ".join(problems) + more


def validated(kind: type[Model], value: object, what: str) -> Model:
    """`value` as a `kind`, or INVALID_ARGUMENT saying what is wrong with it."""
    try:
        return kind.model_validate(value)
    except ValidationError as exc:
        raise InvalidArgument(describe_validation_error(exc, what)) from None


def _canonical_json(raw: Any, limit_bytes: int, what: str) -> str:
    """`raw` as the JSON text we would store; rejects what cannot be stored intact."""
    try:
        text = json.dumps(raw, ensure_ascii=False, allow_nan=False)
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidArgument(f"{what} contains a lone surrogate (invalid Unicode); send valid UTF-8 text") from None
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"{what} is not JSON: {exc}") from None
    if size > limit_bytes:
        raise ResourceExhausted(f"{what} is {size} bytes; the limit is {limit_bytes} (VIKING_MCP_MAX_*)")
    return text


def check_encodable(payload: Any, limit_bytes: int, what: str, max_depth: int = 32) -> None:
    """Raise unless `payload` can be stored as JSON, intact, within `limit_bytes` and `max_depth`."""
    if json_depth(payload, max_depth, what) > max_depth:
        raise ResourceExhausted(f"{what} is nested deeper than {max_depth} levels")
    _canonical_json(payload, limit_bytes, what)


def parse_parts(parts: object, limits: Limits) -> list[Part]:
    """Validate parts from JSON-like data. They are checked as the JSON text that will be
    stored, so that what is stored is exactly what was validated (no bytes or objects
    hiding in tool_input)."""
    if not isinstance(parts, list):
        raise InvalidArgument(f"parts must be a list of part objects, got {type(parts).__name__}")
    if not parts:
        raise InvalidArgument("parts is empty; give at least one part, e.g. {'type': 'text', 'text': '...'}")
    if len(parts) > limits.max_parts:
        raise ResourceExhausted(f"{len(parts)} parts is more than the limit of {limits.max_parts} per message")
    raw = [p.model_dump() if isinstance(p, BaseModel) else p for p in parts]
    # Checked without recursion before anything recursive (json.dumps, pydantic) sees it.
    if json_depth(raw, limits.max_json_depth + 2, "parts (tool_input)") > limits.max_json_depth + 2:
        raise ResourceExhausted(f"a part is nested deeper than {limits.max_json_depth} levels; flatten tool_input")
    text = _canonical_json(raw, limits.max_message_bytes, "the message")
    try:
        return _PARTS.validate_json(text)
    except ValidationError as exc:
        raise InvalidArgument(
            describe_validation_error(exc, "parts")
            + ". Parts are {type: text, text}, {type: context, uri, context_type, abstract} or "
            "{type: tool, tool_id, tool_name, tool_input, tool_output, tool_status}"
        ) from None


def build_message(
    role: object,
    content: object | None,
    parts: object | None,
    created_at: str | None,
    message_id: str | None,
    limits: Limits,
    now: str,
    parts_win: bool = False,
) -> Message:
    """Validate an add_message request and return the message to store.

    `content` is shorthand for one text part. Giving both is an error, except where
    `parts_win` keeps OpenViking's HTTP rule (parts win). `now` is the default created_at.
    """
    if role not in ("user", "assistant"):
        raise InvalidArgument(f"role {str(role)[:20]!r} is not allowed; use 'user' or 'assistant'")
    if content is not None and parts is not None and not parts_win:
        raise InvalidArgument("give either content or parts, not both (content is shorthand for one text part)")
    if parts is None:
        if content is None:
            raise InvalidArgument("give the message as content (text) or parts (a list of parts)")
        if not isinstance(content, str):
            raise InvalidArgument(f"content must be a string, got {type(content).__name__}")
        # One text part, the common case: checked as the JSON text it is stored as, which is
        # all a string needs (parse_parts would also walk and re-parse it).
        _canonical_json([{"type": "text", "text": content}], limits.max_message_bytes, "the message")
        checked: list[Part] = [TextPart(text=content)]
    else:
        checked = parse_parts(parts, limits)
    return Message(
        id=validate_id(message_id, "message_id") if message_id is not None else f"msg_{uuid.uuid4().hex}",
        role=role,  # checked above
        parts=checked,
        created_at=normalize_time(created_at) if created_at is not None else now,
    )
