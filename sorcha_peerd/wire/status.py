"""gRPC status codes and the one place where exceptions become statuses.

The rest of the daemon raises its own exceptions (``ValidationError``,
``RpcError``...) or anything carrying a ``grpc_status`` attribute; the server
turns them into a status here, and the client turns every failure (a status
from the far end, a refused connection, a deadline) into an :class:`RpcError`.
No purerpc type crosses this module's boundary.
"""

from __future__ import annotations

import enum
import logging

import trio

from sorcha_peerd.register import ValidationError

log = logging.getLogger(__name__)


class StatusCode(enum.IntEnum):
    """The canonical gRPC status codes."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class RpcError(Exception):
    """A call ended with a non-OK status (raised by handlers, and by clients on failure)."""

    def __init__(self, code: StatusCode, message: str = "") -> None:
        super().__init__(f"{code.name}: {message}" if message else code.name)
        self.code = StatusCode(code)
        self.message = message


def status_for_exception(exc: BaseException) -> tuple[StatusCode, str]:
    """The status a server answers for an exception raised by a handler.

    Unexpected exceptions become INTERNAL with a generic message (the details
    go to our log, never to the caller).
    """
    if isinstance(exc, RpcError):
        return exc.code, exc.message
    if isinstance(exc, ValidationError):
        return StatusCode.INVALID_ARGUMENT, str(exc)
    code = getattr(exc, "grpc_status", None)
    if (
        isinstance(code, int)
        and not isinstance(code, bool)
        and code in StatusCode._value2member_map_
    ):
        return StatusCode(code), str(exc)
    if isinstance(exc, trio.TooSlowError):
        return StatusCode.DEADLINE_EXCEEDED, "deadline exceeded"
    if isinstance(exc, NotImplementedError):
        return StatusCode.UNIMPLEMENTED, str(exc) or "not implemented"
    log.error("internal error in a gRPC handler", exc_info=exc)
    return StatusCode.INTERNAL, "internal error"
