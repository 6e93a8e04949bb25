"""Error codes shared by every face: the engine raises these, adapters translate them.

The code comes first in every message (`NOT_FOUND: session a1b2 not found`) so that a
model reading a tool error, a person reading the CLI and a client reading the HTTP
envelope all see the same thing.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    NOT_FOUND = "NOT_FOUND"
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    UNAVAILABLE = "UNAVAILABLE"
    INTERNAL = "INTERNAL"

    @property
    def http_status(self) -> int:
        """The HTTP status that carries this code (the HTTP API answers with it)."""
        return _HTTP_STATUS[self]

    @staticmethod
    def for_http_status(status: int) -> ErrorCode | None:
        """The code an HTTP status means, for answers that did not say (a proxy's error page)."""
        return {
            **{s: c for c, s in _HTTP_STATUS.items()},
            422: ErrorCode.INVALID_ARGUMENT,
            429: ErrorCode.RESOURCE_EXHAUSTED,
        }.get(status)


_HTTP_STATUS = {
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.INVALID_ARGUMENT: 400,
    ErrorCode.ALREADY_EXISTS: 409,
    ErrorCode.FAILED_PRECONDITION: 412,
    ErrorCode.UNAUTHENTICATED: 401,
    ErrorCode.PERMISSION_DENIED: 403,
    ErrorCode.RESOURCE_EXHAUSTED: 413,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.INTERNAL: 500,
}


class VikingError(Exception):
    """An error a caller can act on. `code` says what kind, the message says what to do."""

    code: ErrorCode = ErrorCode.INTERNAL
    # The HTTP status, where it is not the code's own (`ErrorCode.http_status`).
    http_status: int | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return f"{self.code.value}: {self.message}"


class NotFound(VikingError):
    code = ErrorCode.NOT_FOUND


class InvalidArgument(VikingError):
    code = ErrorCode.INVALID_ARGUMENT


class AlreadyExists(VikingError):
    code = ErrorCode.ALREADY_EXISTS


class FailedPrecondition(VikingError):
    code = ErrorCode.FAILED_PRECONDITION


class Unauthenticated(VikingError):
    code = ErrorCode.UNAUTHENTICATED


class PermissionDenied(VikingError):
    code = ErrorCode.PERMISSION_DENIED


class ResourceExhausted(VikingError):
    code = ErrorCode.RESOURCE_EXHAUSTED


class TooManyAtOnce(ResourceExhausted):
    """A per-caller cap on work in flight: retry once some of it has answered (HTTP 429)."""

    http_status = 429


class Unavailable(VikingError):
    """The store could not be reached in time (for example, locked by another process). Retry."""

    code = ErrorCode.UNAVAILABLE


class Internal(VikingError):
    code = ErrorCode.INTERNAL


class Damaged(Internal):
    """The database does not read back what was stored in it: a page of its file, or a value,
    is damaged. Retrying does not help; the message says how to recover."""


class Conflict(Unavailable):
    """Someone else changed what this write was planned against; redo the work and retry."""


def error_for(code: str, message: str) -> VikingError:
    """The exception a coded error stands for (as a server answered it); unknown codes are INTERNAL."""
    kinds = {kind.code.value: kind for kind in VikingError.__subclasses__()}
    return kinds[code](message) if code in kinds else Internal(f"{code}: {message}")
