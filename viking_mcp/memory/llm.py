"""Phase 2 from a configured LLM endpoint: an archive in, abstract, overview and memories out.

Two wire protocols cover the endpoints people run: OpenAI-compatible chat completions
(OpenAI, Ollama, vLLM, LM Studio, OpenRouter) and Anthropic's Messages API, over httpx2
(the HTTP client the MCP SDK already brings).

The prompt is bounded: an archive longer than `max_prompt_tokens` is sent in consecutive
parts, each carrying the overview and abstract returned for the parts before it, so the
last reply summarises the whole span. Transient failures (429, 5xx, timeouts, refused
connections) are retried with backoff; anything else fails at once with a reason a
person can act on. Output that does not parse or validate is an error, never an empty
result: Phase 2 then marks the archive failed and it can be retried.

The endpoint is not trusted (issue 15): a redirect is refused, never followed, so the key
goes to VIKING_MCP_LLM_BASE_URL's origin only; each try has one deadline over connecting,
sending and reading the whole reply (httpx's own timeouts bound each socket operation, so
an endpoint sending a byte a second would hold a try for as long as it liked); a reply
longer than `max_reply_bytes` is refused while it streams in; and anything resembling the
key is cut from error texts and from what the model wrote before either is stored.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from functools import partial
from itertools import accumulate
from typing import Annotated, Any, NoReturn
from urllib.parse import urlsplit, urlunsplit

import anyio
import httpx2
from anyio.from_thread import start_blocking_portal
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator

from viking_mcp.config import MIN_PROMPT_TOKENS, LlmSettings
from viking_mcp.errors import InvalidArgument
from viking_mcp.memory import MEMORY_CATEGORIES
from viking_mcp.models import MemoryInput, message_text
from viking_mcp.summarize.base import ArchiveInput
from viking_mcp.tokens import MESSAGE_OVERHEAD_TOKENS, TokenCounter

logger = logging.getLogger(__name__)

ANTHROPIC_VERSION = "2023-06-01"
# A server asking us to wait longer than this is treated as asking for this long.
MAX_RETRY_DELAY_SECONDS = 30.0
# The transcript share of each prompt never drops below this many tokens.
_MIN_TRANSCRIPT_TOKENS = 400
_ERROR_EXCERPT_CHARS = 300
# What is read of a refusal (4xx, 5xx, 3xx): enough for its message, never the whole of a huge one.
_ERROR_BODY_BYTES = 64_000
# A run of this many characters of the key (in any case) is treated as the key (B10).
_KEY_FRAGMENT_CHARS = 8
_REDACTED = "***"


class LlmError(Exception):
    """Why Phase 2 could not get a summary from the LLM endpoint; shown to users in the task error."""


@dataclass(frozen=True)
class LlmResult:
    abstract: str
    overview: str
    memories: list[MemoryInput]
    prompt_tokens: int
    completion_tokens: int
    # Completed model calls: one per part of the archive (retries not counted).
    calls: int


# --- the prompt ----------------------------------------------------------------------

SYSTEM_PROMPT = """\
You maintain the long-term memory of an AI assistant. You are given one part of an archived \
conversation between a user and the assistant, the overview of the conversation so far, and \
the abstract so far. Reply with one JSON object and nothing else:

{"abstract": "...", "overview": "...", "memories": [...]}

- abstract: one or two sentences about the whole archived span so far (this part and the \
parts before it).
- overview: a markdown summary of the conversation so far, at most about 1500 tokens. Carry \
forward what still matters from the overview so far, add what this part brings, and drop \
what no longer matters. Keep names, numbers, dates, decisions and open questions.
- memories: what is worth remembering beyond this conversation, taken from this part's \
transcript only (earlier parts were already processed). Use [] when there is nothing. Each \
memory is an object {"category", "name", "abstract", "overview", "content", "when"}:
  - category, one of:
    - profile: facts about the user (name, job, where they live, family, background);
    - preferences: what the user likes, wants or avoids; name = the topic;
    - entities: people, places, organisations, projects and things; name = the entity's name;
    - events: things that happened or are planned on a date; when = ISO date (YYYY-MM-DD) \
resolved from the message timestamps ("yesterday" in a message of 2024-05-08 is 2024-05-07);
    - cases: a problem that came up and how it was solved; name = the problem in a few words;
    - patterns: recurring ways of working or behaving; name = the pattern;
    - tools: tools used, how and how well; name = the tool's name;
    - skills: skills used or learned; name = the skill's name.
  - name: what the memory is about (null for profile).
  - abstract: the memory itself in one line.
  - overview: a short paragraph of detail.
  - content: the full text, with the specifics a later reader needs.
  - when: ISO date for events, otherwise null.
Write memories as standalone statements that make sense without the conversation, naming \
people instead of "he" or "she". Do not invent anything the transcript does not say. \
Do not repeat memories already stated in the overview so far unless this part changes them.\
"""

_NO_OVERVIEW = "(none yet: this is the start of the conversation)"
_NO_ABSTRACT = "(none yet)"
_TRUNCATED = " [... truncated]"


def _user_prompt(archive: ArchiveInput, part: int, final: bool, overview: str, abstract: str, transcript: str) -> str:
    position = "the last part" if final else "more parts follow"
    return (
        f"Archive {archive.archive_id} of session {archive.session_id}, transcript part {part} ({position}).\n\n"
        f"## Overview so far\n\n{overview.strip() or _NO_OVERVIEW}\n\n"
        f"## Abstract so far\n\n{abstract.strip() or _NO_ABSTRACT}\n\n"
        f"## Transcript, part {part}\n\n{transcript or '(no messages)'}\n\n"
        "Reply with the JSON object only."
    )


# --- parsing the reply ---------------------------------------------------------------


def _tidy_memory(item: object) -> object:
    """Forgive harmless drift (extra keys, 'Events'), so that only real mismatches fail."""
    if not isinstance(item, dict):
        return item
    tidy = {key: item[key] for key in MemoryInput.model_fields if key in item}
    if isinstance(tidy.get("category"), str):
        tidy["category"] = tidy["category"].strip().lower()
    for key in ("overview", "content"):
        if tidy.get(key) is None:
            tidy.pop(key, None)
    return tidy


class _Reply(BaseModel):
    """What the model must return; memories are MemoryInput, the shape commit accepts."""

    model_config = ConfigDict(extra="ignore")
    abstract: str = Field(min_length=1)
    overview: str
    memories: list[Annotated[MemoryInput, BeforeValidator(_tidy_memory)]]

    @field_validator("abstract")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("abstract is blank")
        return value.strip()


def parse_reply(text: str) -> _Reply:
    """The model's JSON, validated; LlmError("LLM returned malformed output: ...") otherwise."""
    stripped = text.strip()
    try:
        value = json.loads(stripped)
    except json.JSONDecodeError:
        # Prose or a ```json fence around the object: take the object that starts at the first brace.
        start = stripped.find("{")
        if start < 0:
            raise LlmError(
                f"LLM returned malformed output: no JSON object in the reply ({_excerpt(text, 80)!r})"
            ) from None
        try:
            value, _ = json.JSONDecoder().raw_decode(stripped, start)
        except json.JSONDecodeError as exc:
            raise LlmError(f"LLM returned malformed output: invalid JSON ({exc.msg} at char {exc.pos})") from None
    if not isinstance(value, dict):
        raise LlmError("LLM returned malformed output: the reply is not a JSON object")
    try:
        return _Reply.model_validate(value)
    except ValidationError as exc:
        raise LlmError(f"LLM returned malformed output: {_validation_reason(exc)}") from None


def _validation_reason(exc: ValidationError) -> str:
    reasons = []
    for error in exc.errors()[:3]:
        where = ".".join(str(part) for part in error["loc"]) or "reply"
        if error["type"] == "literal_error" and error["loc"][-1:] == ("category",):
            reasons.append(f"{where} is {error['input']!r}, not one of {', '.join(MEMORY_CATEGORIES)}")
        else:
            reasons.append(f"{where}: {error['msg']}")
    more = f" (and {exc.error_count() - 3} more)" if exc.error_count() > 3 else ""
    return "; ".join(reasons) + more


# --- HTTP ----------------------------------------------------------------------------


class _Transient(Exception):
    """A failure worth another attempt; `retry_after` is the server's requested wait."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class _Adapted(Exception):
    """The request is retried at once without an optional field the server refused."""


class _Answer:
    """One HTTP reply, read whole within the try's deadline and the size bound."""

    def __init__(self, response: httpx2.Response, body: bytes) -> None:
        self.status = response.status_code
        self.reason = response.reason_phrase
        self.headers = response.headers
        self.body = body

    @property
    def is_success(self) -> bool:
        return 200 <= self.status <= 299

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


# Sends one request body (JSON) and returns the reply: `LlmPhase2._post` on the run's event loop.
_Post = Callable[[dict[str, Any]], _Answer]


@dataclass(frozen=True)
class _Completion:
    text: str
    prompt_tokens: int | None
    completion_tokens: int | None
    truncated: bool


def _excerpt(text: str, limit: int = _ERROR_EXCERPT_CHARS) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def redact_secret(text: str, secret: str | None) -> str:
    """`text` with anything resembling `secret` replaced by ***: any run of
    `_KEY_FRAGMENT_CHARS` or more of its characters in a row, in any case (the key, a prefix,
    a suffix, a middle), so an endpoint that echoes the key uppercased or cut short does not
    get it into an error text, a log line, the database or an export.

    A shorter secret is a placeholder more often than a key (vLLM's "EMPTY"): it is replaced
    only as it is, whole and in its case, so that ordinary words stay; one shorter than 4
    characters is not looked for at all."""
    if not secret or len(secret) < 4 or not text:
        return text
    if len(secret) < _KEY_FRAGMENT_CHARS:
        return text.replace(secret, _REDACTED)
    size = _KEY_FRAGMENT_CHARS
    wanted = secret.translate(_ASCII_LOWER)
    # ASCII-only lowering keeps every index where it was (str.lower() may not: 'İ' becomes two).
    lowered = text.translate(_ASCII_LOWER)
    spans: list[tuple[int, int]] = []
    for fragment in {wanted[i : i + size] for i in range(len(wanted) - size + 1)}:
        start = lowered.find(fragment)
        while start >= 0:
            spans.append((start, start + size))
            start = lowered.find(fragment, start + 1)
    if not spans:
        return text
    pieces, done = [], 0
    for start, end in sorted(spans):  # overlapping windows merge into one cut
        if start > done:
            pieces += [text[done:start], _REDACTED]
        elif not pieces:
            pieces.append(_REDACTED)
        done = max(done, end)
    pieces.append(text[done:])
    return "".join(pieces)


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header: a number, or an HTTP date."""
    try:
        seconds = float(value or "")
    except ValueError:
        try:
            moment = parsedate_to_datetime(value or "")
        except (TypeError, ValueError):
            return None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        seconds = (moment - datetime.now(UTC)).total_seconds()
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _object(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


class LlmPhase2:
    """Summaries and memories for an archive from an OpenAI-compatible or Anthropic endpoint."""

    def __init__(
        self, settings: LlmSettings, tokens: TokenCounter, *, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        if settings.max_attempts < 1:
            raise InvalidArgument(f"max_attempts is {settings.max_attempts}; it must be at least 1")
        self.settings = settings
        self.tokens = tokens
        self._sleep = sleep
        # Optional request fields an OpenAI-compatible server refused once (e.g. LM Studio
        # rejects response_format json_object, reasoning models reject temperature): not sent again.
        self._dropped: set[str] = set()
        self._dropped_lock = threading.Lock()
        base = settings.base_url.rstrip("/")
        headers = {"Accept": "application/json"}
        if settings.provider == "anthropic":
            self._url = base + "/messages" if base.endswith("/v1") else base + "/v1/messages"
            headers["anthropic-version"] = ANTHROPIC_VERSION
            if settings.api_key:
                headers["x-api-key"] = settings.api_key
        else:
            self._url = base + "/chat/completions"
            if settings.api_key:
                headers["Authorization"] = f"Bearer {settings.api_key}"
        self._headers = headers
        # Loaded once (reading the CA bundle takes a while), shared by every run's client.
        self._ssl_context = httpx2.create_ssl_context()

    # --- the archive, part by part -----------------------------------------------------

    def run(self, archive: ArchiveInput, check: Callable[[LlmResult], None] | None = None) -> LlmResult:
        """The archive's abstract, overview and memories. `check` sees the result so far after
        each reply (Phase 2 holds it to the limits of an agent's commit) and may raise.

        The requests run on an event loop of their own for the length of the run, so that each
        try can be cancelled at its deadline wherever it is (connecting, waiting for headers,
        reading a dripping body): httpx has no total timeout (pydantic/httpx2#557, from
        encode/httpx#1450) and points at cancellation instead. One client serves every part and
        retry of the archive, reusing its connection."""
        try:
            with (
                start_blocking_portal(name="viking-mcp-llm") as portal,
                portal.wrap_async_context_manager(self._new_client()) as client,
            ):
                return self._run(archive, partial(portal.call, self._post, client), check)
        except LlmError as exc:  # the last guard: nothing resembling the key leaves in an error
            raise LlmError(self._redact(str(exc))) from None

    def _new_client(self) -> httpx2.AsyncClient:
        # Redirects are not followed: the key must never go to another origin (or over plain
        # http after https), and a 3xx is answered as a refusal naming where it pointed.
        return httpx2.AsyncClient(
            headers=self._headers,
            timeout=self.settings.timeout_seconds,
            follow_redirects=False,
            verify=self._ssl_context,
        )

    def _run(self, archive: ArchiveInput, post: _Post, check: Callable[[LlmResult], None] | None) -> LlmResult:
        settings = self.settings
        count = self.tokens.count
        system_tokens = count(SYSTEM_PROMPT) + 2 * MESSAGE_OVERHEAD_TOKENS
        # What the carried overview and abstract may take, so the transcript always has room.
        overview_cap = max(settings.max_prompt_tokens // 4, 256)
        abstract_cap = max(min(settings.max_prompt_tokens // 20, 300), 64)
        limit = settings.max_prompt_tokens - system_tokens

        # One line per message, as the model reads it: "[created_at] role: text".
        lines = [f"[{m.created_at}] {m.role}: {message_text(m)}" for m in archive.messages]
        # ends[i]: the tokens of lines[:i], each line with its newline.
        ends = [0, *accumulate(count(line) + 1 for line in lines)]
        overview = archive.previous_overview
        abstract = ""
        memories: list[MemoryInput] = []
        prompt_total = completion_total = calls = 0
        start = 0
        while True:
            part = calls + 1
            carried_overview = self._fit(overview, overview_cap)
            carried_abstract = self._fit(abstract, abstract_cap)
            header = count(_user_prompt(archive, part, False, carried_overview, carried_abstract, ""))
            room = limit - header - 8  # the label and separators may tokenise a little differently
            if room < _MIN_TRANSCRIPT_TOKENS:
                raise LlmError(
                    f"max_prompt_tokens={settings.max_prompt_tokens} leaves no room for the transcript; "
                    f"raise VIKING_MCP_LLM_MAX_PROMPT_TOKENS (at least {MIN_PROMPT_TOKENS})"
                )
            # The consecutive lines from `start` that fit in `room`; a line too big for any part is cut.
            end = bisect_right(ends, ends[start] + room) - 1
            chunk = lines[start:end]
            if not chunk and start < len(lines):
                chunk, end = [self._fit(lines[start], room - 1)], start + 1
            while True:
                user = _user_prompt(
                    archive, part, end >= len(lines), carried_overview, carried_abstract, "\n".join(chunk)
                )
                excess = count(user) - limit
                if excess <= 0:
                    break
                # Token counts of the pieces did not add up exactly: give back a message, or cut more.
                if len(chunk) > 1:
                    chunk.pop()
                    end -= 1
                else:
                    chunk = [self._fit(chunk[0], max(count(chunk[0]) - excess - 16, 1))]

            sent = count(user) + system_tokens
            where = f"{archive.session_id}/{archive.archive_id} part {part}"
            logger.debug(
                "LLM phase 2: %s, messages %d-%d of %d, %d prompt tokens", where, start + 1, end, len(lines), sent
            )
            completion = self._complete(post, SYSTEM_PROMPT, user)
            reply = self._parse(completion)
            calls += 1
            # The server's usage when it reports it, else our own count.
            prompt_total += sent if completion.prompt_tokens is None else completion.prompt_tokens
            completion_total += (
                count(completion.text) if completion.completion_tokens is None else completion.completion_tokens
            )
            memories.extend(reply.memories)
            abstract = reply.abstract
            overview = reply.overview.strip() or overview
            result = LlmResult(
                abstract=abstract,
                overview=overview,
                memories=memories,
                prompt_tokens=prompt_total,
                completion_tokens=completion_total,
                calls=calls,
            )
            if check is not None:
                check(result)
            start = end
            if start >= len(lines):
                return result

    def _fit(self, text: str, limit: int) -> str:
        """`text`, or its longest prefix (marked as cut) within `limit` tokens."""
        count = self.tokens.count
        if count(text) <= limit:
            return text
        room = max(limit - count(_TRUNCATED), 0)
        # A token spans at least one character, and rarely more than a few dozen.
        low, high = 0, min(len(text), room * 32)
        while low < high:
            middle = (low + high + 1) // 2
            if count(text[:middle]) <= room:
                low = middle
            else:
                high = middle - 1
        return text[:low] + _TRUNCATED

    def _parse(self, completion: _Completion) -> _Reply:
        try:
            reply = parse_reply(completion.text)
        except LlmError as exc:
            if completion.truncated:
                raise LlmError(
                    f"{exc} - the reply was cut off at max_output_tokens={self.settings.max_output_tokens}; "
                    "raise VIKING_MCP_LLM_MAX_OUTPUT_TOKENS"
                ) from None
            raise
        # What the model wrote is stored and exported: an endpoint echoing the key must not put it there.
        redact = self._redact
        memories = [
            memory.model_copy(
                update={
                    name: redact(value)
                    for name, value in memory.model_dump().items()
                    if isinstance(value, str) and name != "category"
                }
            )
            for memory in reply.memories
        ]
        return reply.model_copy(
            update={"abstract": redact(reply.abstract), "overview": redact(reply.overview), "memories": memories}
        )

    # --- one model call, with retries -----------------------------------------------------

    def _complete(self, post: _Post, system: str, user: str) -> _Completion:
        attempts = self.settings.max_attempts
        attempt = 1
        while True:
            try:
                return self._send(post, system, user)
            except _Adapted:
                continue  # the server told us what to leave out; that try does not count
            except _Transient as exc:
                if attempt >= attempts:
                    raise LlmError(f"LLM endpoint failed after {attempts} attempts: last error {exc}") from None
                backoff = self.settings.backoff_seconds * 2 ** (attempt - 1)
                delay = min(backoff if exc.retry_after is None else exc.retry_after, MAX_RETRY_DELAY_SECONDS)
                logger.debug("LLM attempt %d/%d failed (%s); retrying in %.2f s", attempt, attempts, exc, delay)
                self._sleep(delay)
                attempt += 1

    def _payload(self, system: str, user: str) -> dict[str, Any]:
        settings = self.settings
        payload: dict[str, Any] = {"model": settings.model, "max_tokens": settings.max_output_tokens, "temperature": 0}
        if settings.provider == "anthropic":
            return payload | {"system": system, "messages": [{"role": "user", "content": user}]}
        payload["messages"] = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        payload["response_format"] = {"type": "json_object"}
        with self._dropped_lock:
            dropped = set(self._dropped)
        if "max_tokens" in dropped:
            payload["max_completion_tokens"] = payload.pop("max_tokens")
        for key in dropped - {"max_tokens"}:
            payload.pop(key, None)
        return payload

    def _send(self, post: _Post, system: str, user: str) -> _Completion:
        payload = self._payload(system, user)
        logger.debug("POST %s model=%s", self._safe_url(self._url), self.settings.model)
        response = post(payload)
        if not response.is_success:
            self._http_error(response, payload)
        try:
            body = json.loads(response.body)
        except ValueError:  # not JSON, or not UTF-8
            raise LlmError(
                f"LLM endpoint {self._safe_url(self._url)} answered with something that is not JSON "
                f"({self._redact(_excerpt(response.text[:1000], 120))!r}); "
                "check VIKING_MCP_LLM_BASE_URL and VIKING_MCP_LLM_PROVIDER"
            ) from None
        if not isinstance(body, dict):
            shown = self._safe_url(self._url)
            raise LlmError(f"LLM endpoint {shown} answered with a JSON {type(body).__name__}, not an object")
        return (
            self._anthropic_completion(body) if self.settings.provider == "anthropic" else self._openai_completion(body)
        )

    async def _post(self, client: httpx2.AsyncClient, payload: dict[str, Any]) -> _Answer:
        """POST `payload` and read the reply, all within `timeout_seconds` from now and at most
        `max_reply_bytes` of it (as decoded: a compressed bomb is cut as it inflates)."""
        settings, shown = self.settings, self._safe_url(self._url)
        limit = settings.max_reply_bytes
        body = bytearray()
        try:
            with anyio.fail_after(settings.timeout_seconds):
                async with client.stream("POST", self._url, json=payload) as response:
                    if response.is_success:
                        declared = response.headers.get("Content-Length", "")
                        if declared.isdigit() and int(declared) > limit:
                            raise self._too_long(f"{int(declared)} bytes")
                    async for chunk in response.aiter_bytes():
                        body += chunk
                        if len(body) > limit and response.is_success:
                            raise self._too_long(f"over {limit} bytes, still coming")
                        if len(body) >= _ERROR_BODY_BYTES and not response.is_success:
                            break  # a refusal's message is at its start; the rest is not read
                    return _Answer(response, bytes(body))
        except TimeoutError:  # the deadline over the whole try (anyio cancelled whatever was waiting)
            received = f" ({len(body)} bytes of the reply had arrived)" if body else ""
            raise _Transient(
                f"no answer from {shown} within {settings.timeout_seconds:g} s{received}; "
                "VIKING_MCP_LLM_TIMEOUT_SECONDS bounds each try as a whole"
            ) from None
        except httpx2.TimeoutException:
            raise _Transient(f"no answer from {shown} within {settings.timeout_seconds:g} s") from None
        except httpx2.ConnectError as exc:
            raise _Transient(f"cannot reach {shown}: {self._redact(str(exc))}") from None
        except httpx2.RequestError as exc:  # the connection broke, or the reply is not valid HTTP
            raise _Transient(f"connection to {shown} failed: {self._redact(str(exc)) or type(exc).__name__}") from None

    def _too_long(self, size: str) -> LlmError:
        return LlmError(
            f"LLM endpoint {self._safe_url(self._url)} sent a reply of {size}; the limit is "
            f"{self.settings.max_reply_bytes} bytes (VIKING_MCP_LLM_MAX_REPLY_BYTES), and a reply of "
            f"max_output_tokens={self.settings.max_output_tokens} needs far less: check the endpoint"
        )

    def _openai_completion(self, body: dict[str, Any]) -> _Completion:
        choices = body.get("choices")
        if not isinstance(choices, list) or not choices:
            self._error_in_body(body)
        choice = _object(choices[0])
        content = _object(choice.get("message")).get("content")
        if isinstance(content, list):  # some servers return content parts
            content = "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
        finish = choice.get("finish_reason")
        if not isinstance(content, str) or not content.strip():
            raise LlmError(f"LLM returned malformed output: the reply has no text (finish_reason={finish!r})")
        usage = _object(body.get("usage"))
        return _Completion(
            text=content,
            prompt_tokens=_int_or_none(usage.get("prompt_tokens")),
            completion_tokens=_int_or_none(usage.get("completion_tokens")),
            truncated=finish == "length",
        )

    def _anthropic_completion(self, body: dict[str, Any]) -> _Completion:
        blocks = body.get("content")
        if not isinstance(blocks, list):
            self._error_in_body(body)
        text = "".join(
            str(block.get("text", "")) for block in blocks if isinstance(block, dict) and block.get("type") == "text"
        )
        stop = body.get("stop_reason")
        if not text.strip():
            raise LlmError(f"LLM returned malformed output: the reply has no text (stop_reason={stop!r})")
        usage = _object(body.get("usage"))
        prompt = _int_or_none(usage.get("input_tokens"))
        if prompt is not None:  # cached prompt tokens are prompt tokens too
            for key in ("cache_creation_input_tokens", "cache_read_input_tokens"):
                prompt += _int_or_none(usage.get(key)) or 0
        return _Completion(
            text=text,
            prompt_tokens=prompt,
            completion_tokens=_int_or_none(usage.get("output_tokens")),
            truncated=stop == "max_tokens",
        )

    def _error_in_body(self, body: dict[str, Any]) -> NoReturn:
        """A 200 whose body is an error (OpenRouter passes upstream errors this way), or nonsense."""
        error = body.get("error")
        if isinstance(error, dict):
            code = error.get("code") or error.get("status")
            message = self._redact(_excerpt(str(error.get("message", "")), 200))
            if code == 429 or (isinstance(code, int) and 500 <= code <= 599):
                raise _Transient(f"endpoint error {code}: {message}")
            raise LlmError(f"LLM endpoint returned an error ({code}): {message}")
        raise LlmError(
            f"LLM endpoint returned an unexpected response ({self._redact(_excerpt(json.dumps(body), 160))}); "
            "check VIKING_MCP_LLM_PROVIDER matches the endpoint's API"
        )

    def _http_error(self, response: _Answer, payload: dict[str, Any]) -> NoReturn:
        status, text = response.status, response.text[:4096]
        detail = self._redact(_excerpt(text)) or response.reason
        if 300 <= status <= 399:
            target = self._redact(self._safe_url(self._where(response.headers.get("Location", ""))))
            raise LlmError(
                f"LLM endpoint {self._safe_url(self._url)} redirected (HTTP {status}) to {target}; redirects are "
                "not followed, so that the key goes nowhere else: set VIKING_MCP_LLM_BASE_URL to the final address"
            )
        if status == 429 or 500 <= status <= 599:
            raise _Transient(f"HTTP {status}: {detail}", _retry_after(response.headers.get("Retry-After")))
        if status == 400 and self.settings.provider == "openai":
            self._adapt(text, payload)
        if status in (401, 403):
            hint = "check VIKING_MCP_LLM_API_KEY (or OPENAI_API_KEY / ANTHROPIC_API_KEY)"
        elif status == 404:
            hint = (
                f"check VIKING_MCP_LLM_BASE_URL ({self._safe_url(self.settings.base_url)}) and "
                f"VIKING_MCP_LLM_MODEL ({self.settings.model})"
            )
        elif status == 413:
            hint = "the prompt is too large for the endpoint; lower VIKING_MCP_LLM_MAX_PROMPT_TOKENS"
        else:
            hint = "check VIKING_MCP_LLM_MODEL and that VIKING_MCP_LLM_PROVIDER matches the endpoint"
        raise LlmError(f"LLM endpoint refused the request: HTTP {status}: {detail} ({hint})")

    def _adapt(self, error_text: str, payload: dict[str, Any]) -> None:
        """Leave out an optional field the server says it does not support, and try again."""
        lowered = error_text.lower()
        unsupported = any(word in lowered for word in ("unsupported", "not supported", "does not support"))
        for field in ("response_format", "max_tokens", "temperature"):
            # Any complaint about response_format is about it; the others only when called unsupported
            # (a context-length error also names max_tokens).
            if field in payload and field in lowered and (unsupported or field == "response_format"):
                with self._dropped_lock:
                    if field in self._dropped:
                        continue
                    self._dropped.add(field)
                logger.debug("LLM endpoint rejected %s; retrying without it", field)
                raise _Adapted(field)

    def _redact(self, text: str) -> str:
        return redact_secret(text, self.settings.api_key)

    def _where(self, location: str) -> str:
        """A redirect's target, as an absolute URL when it is one."""
        try:
            return str(httpx2.URL(self._url).join(location)) if location else "nowhere"
        except httpx2.InvalidURL:
            return "an invalid address"

    @staticmethod
    def _safe_url(url: str) -> str:
        """The URL without credentials or query (where some gateways put keys)."""
        parts = urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:  # IPv6: keep the brackets that separate it from the port
            host = f"[{host}]"
        if parts.port:
            host = f"{host}:{parts.port}"
        return urlunsplit((parts.scheme, host, parts.path, "", ""))
