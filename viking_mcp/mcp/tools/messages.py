"""Message tools: record a turn, and what it used."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from viking_mcp.mcp.state import Ctx, OptionalText, SessionId, caller, tool, writes
from viking_mcp.models import MessageAdded, Part, Role, SkillUse, UsageRecorded


@tool("Add message", writes())
async def add_message(
    ctx: Ctx,
    session_id: SessionId,
    role: Annotated[Role, Field(description="Who said it: 'user' or 'assistant'.")],
    content: Annotated[OptionalText, Field(description="The message text. Give this or parts, not both.")] = None,
    parts: Annotated[
        list[Part] | None,
        Field(description="The message as parts (text, context, tool). Give this or content, not both."),
    ] = None,
    created_at: Annotated[str | None, Field(description="When it was said (ISO 8601); default now.")] = None,
    message_id: Annotated[
        str | None,
        Field(description="Your id for the message; retrying with the same id stores it once.", max_length=128),
    ] = None,
) -> MessageAdded:
    """Record one turn of the conversation. Creates the session if needed (session_created
    tells). Use a message_id to make retries safe."""
    engine, actor = caller(ctx)
    # On the engine's batch thread, with other appends (engine/batching.py).
    return await engine.batched_writes.run(
        lambda: engine.prepare_message(session_id, role, content, parts, created_at, message_id),
        lambda prepared: engine.write_message(prepared, actor=actor),
    )


@tool("Record usage", writes())
def record_usage(
    ctx: Ctx,
    session_id: SessionId,
    contexts: Annotated[list[str] | None, Field(description="URIs of resources or memories the turn used.")] = None,
    skill: Annotated[SkillUse | None, Field(description="A skill the turn used, and how it went.")] = None,
) -> UsageRecorded:
    """Record which contexts and skills were used, so commit can credit them."""
    engine, actor = caller(ctx)
    return engine.record_usage(session_id, contexts, skill, actor=actor)
