"""Appends for async callers: on the engine's batch thread, many to a transaction.

A batch commits its writes together (a group commit), but each write still succeeds or
fails on its own, and none is answered, or visible, before the batch has committed.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import anyio
import pytest

from viking_mcp.engine import Engine
from viking_mcp.errors import AlreadyExists, InvalidArgument, Unavailable
from viking_mcp.models import Owner, utc_now

pytestmark = pytest.mark.anyio


def texts(engine: Engine, session_id: str) -> list[str]:
    return [m.parts[0].text for m in engine.get_context(session_id, 0).messages]  # type: ignore[union-attr]


async def append(engine: Engine, session_id: str, text: str) -> Any:
    return await engine.batched_writes.run(
        lambda: engine.prepare_message(session_id, "user", text), lambda prepared: engine.write_message(prepared)
    )


@pytest.mark.both_stores
def test_a_failed_write_in_a_batch_is_undone_alone(engine: Engine) -> None:
    engine.create_session("taken", metadata={"keep": True})
    with engine.store.write_batch():
        engine.add_message("a", "user", "one")
        with pytest.raises(AlreadyExists):
            engine.store.create_session("taken", Owner(), {"keep": False}, utc_now())
        engine.add_message("b", "user", "two")
    assert texts(engine, "a") == ["one"] and texts(engine, "b") == ["two"]
    assert engine.get_session("taken").metadata == {"keep": True}


@pytest.mark.sqlite_only
def test_nothing_of_a_batch_is_visible_or_kept_before_it_commits(engine: Engine) -> None:
    reader = sqlite3.connect(engine.settings.database_path)
    try:
        with pytest.raises(RuntimeError), engine.store.write_batch():
            engine.add_message("s", "user", "never")
            assert reader.execute("SELECT count(*) FROM sessions").fetchone() == (0,)
            raise RuntimeError("the batch's caller fails")
        assert reader.execute("SELECT count(*) FROM sessions").fetchone() == (0,)
    finally:
        reader.close()
    with pytest.raises(RuntimeError, match="do not nest"), engine.store.write_batch(), engine.store.write_batch():
        pass


@pytest.mark.sqlite_only
def test_a_batch_whose_transaction_sqlite_rolled_back_stores_nothing(engine: Engine) -> None:
    """As SQLite does on a full disk: the transaction is gone mid-batch. The writes before it
    must not be reported stored while the writes after it commit in a transaction of their own."""
    with pytest.raises(Unavailable), engine.store.write_batch():
        engine.add_message("s", "user", "before")
        engine.store._connect().execute("ROLLBACK")  # type: ignore[attr-defined]
        engine.add_message("s", "user", "after")
    assert engine.store.get_session("s") is None


async def test_concurrent_appends_land_once_each_in_order_and_share_transactions(engine: Engine) -> None:
    store: Any = engine.store
    transactions_before = store._writes

    async def client(n: int) -> None:
        for i in range(20):
            added = await append(engine, f"s{n}", f"{n}-{i}")
            assert added.message_count == i + 1

    async with anyio.create_task_group() as group:
        for n in range(16):
            group.start_soon(client, n)
    for n in range(16):
        assert texts(engine, f"s{n}") == [f"{n}-{i}" for i in range(20)]
    assert store._writes - transactions_before < 16 * 20, "no two appends shared a transaction"


async def test_each_append_in_a_batch_gets_its_own_answer(engine: Engine) -> None:
    engine.create_session("owned", user_id="ada")
    bob = Owner(user_id="bob")
    results: dict[str, Any] = {}

    async def attempt(name: str, session_id: str, actor: Owner | None = None) -> None:
        try:
            results[name] = await engine.batched_writes.run(
                lambda: engine.prepare_message(session_id, "user", name),
                lambda prepared: engine.write_message(prepared, actor=actor),
            )
        except Exception as exc:
            results[name] = exc

    async with anyio.create_task_group() as group:
        group.start_soon(attempt, "fine", "s")
        group.start_soon(attempt, "bad id", "../x")  # refused before the transaction
        group.start_soon(attempt, "not bob's", "owned", bob)  # refused inside it
        group.start_soon(attempt, "also fine", "s")
    assert isinstance(results["bad id"], InvalidArgument)
    assert isinstance(results["not bob's"], AlreadyExists)
    assert texts(engine, "s") == ["fine", "also fine"] and texts(engine, "owned") == []


async def test_after_close_appends_are_refused_and_the_thread_is_gone(engine: Engine) -> None:
    await append(engine, "s", "before")
    engine.batched_writes.close()
    with pytest.raises(Unavailable):
        await append(engine, "s", "after")
    assert texts(engine, "s") == ["before"]
