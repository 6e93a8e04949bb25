"""Message routes: append a message, record what a turn used."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, WithJsonSchema

from viking_mcp.api.envelope import ID_PATTERN, Ok, SessionIdPath, call, caller, crashes_answered, ok, router
from viking_mcp.engine.engine import PreparedMessage
from viking_mcp.models import ID_MAX_LENGTH, ContextPart, MessageAdded, Role, TextPart, ToolPart, UsageRecorded

messages = router("messages")


# Documented as the parts the engine stores; validated by the engine (after OpenViking's
# extra fields are dropped), so that its messages say what is wrong.
def _part_schema(model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema()
    schema["required"] = ["type", *[name for name in schema.get("required", []) if name != "type"]]
    return schema


_PARTS_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {
            "type": "array",
            "minItems": 1,
            "items": {"oneOf": [_part_schema(m) for m in (TextPart, ContextPart, ToolPart)]},
        },
        {"type": "null"},
    ]
}


class AddMessageBody(BaseModel):
    role: Role = Field(description="Who said it.")
    content: str | None = Field(
        default=None, description="The text (one text part). If parts are given too, parts win."
    )
    parts: Annotated[list[dict[str, Any]] | None, WithJsonSchema(_PARTS_SCHEMA)] = Field(
        default=None,
        description="The message as parts: {type: text, text}, {type: context, uri, context_type, abstract}, "
        "{type: tool, tool_id, tool_name, tool_input, tool_output, tool_status}.",
    )
    created_at: str | None = Field(default=None, description="When it was said (ISO 8601); default now.")
    message_id: str | None = Field(
        default=None,
        description="Your id for the message: the same id twice stores it once.",
        json_schema_extra={"pattern": ID_PATTERN, "maxLength": ID_MAX_LENGTH},
    )


class UsedBody(BaseModel):
    contexts: list[str] | None = Field(default=None, description="URIs of contexts the turn used.")
    skill: dict[str, Any] | None = Field(default=None, description="A skill used: {uri, input, output, success}.")


# Parts as OpenViking clients send them carry fields we do not keep (tool_uri, null
# tool_input...): drop those, so that the engine validates what it stores.
_PART_FIELDS = {
    part.model_fields["type"].default: part.model_fields.keys() for part in (TextPart, ContextPart, ToolPart)
}


def _openviking_parts(parts: list[dict[str, Any]] | None) -> list[Any] | None:
    if parts is None:
        return None
    cleaned: list[Any] = []
    for part in parts:
        kind = part.get("type")
        fields = _PART_FIELDS.get(kind) if isinstance(kind, str) else None
        if fields is None:
            cleaned.append(part)  # unknown type: the engine says what is wrong
            continue
        cleaned.append({k: v for k, v in part.items() if k in fields and not (v is None and k != "type")})
    return cleaned


@messages.post("/sessions/{session_id}/messages", response_model=Ok[MessageAdded], summary="Add a message")
async def add_message(request: Request, session_id: SessionIdPath, body: AddMessageBody) -> JSONResponse:
    """Append a message (content, or parts; parts win when both are given). Creates the session."""
    engine, actor = caller(request)
    parts = _openviking_parts(body.parts)

    def prepare() -> PreparedMessage:
        with crashes_answered(request):
            return engine.prepare_message(
                session_id, body.role, body.content, parts, body.created_at, body.message_id, parts_win=True
            )

    def write(prepared: PreparedMessage) -> MessageAdded:
        with crashes_answered(request):
            return engine.write_message(prepared, actor=actor)

    # On the engine's batch thread (engine/batching.py), with other appends.
    result = await engine.batched_writes.run(prepare, write)
    return ok(request, result)


@messages.post("/sessions/{session_id}/used", response_model=Ok[UsageRecorded], summary="Record usage")
async def record_used(request: Request, session_id: SessionIdPath, body: UsedBody | None = None) -> JSONResponse:
    """Record the contexts and skill a turn actually used."""
    b = body or UsedBody()
    return await call(request, lambda e, a: e.record_usage(session_id, b.contexts, b.skill, actor=a))
