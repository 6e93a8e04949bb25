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


class VikingError(Exception):
    """An error a caller can act on. `code` says what kind, the message says what to do."""

    code: ErrorCode = ErrorCode.INTERNAL

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


class Unavailable(VikingError):
    """The store could not be reached in time (for example, locked by another process). Retry."""

    code = ErrorCode.UNAVAILABLE


class Internal(VikingError):
    code = ErrorCode.INTERNAL


class Conflict(Unavailable):
    """Someone else changed what this write was planned against; redo the work and retry."""
