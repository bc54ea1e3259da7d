"""The varlink wire format, without I/O: framing, requests, replies, parameter checks.

Varlink (https://varlink.org) frames every message as one JSON object
followed by a NUL byte. Keeping the framing and the request checks here, as
plain functions and a byte buffer, lets the server and the client share them
and lets the tests drive them without sockets.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final

import attrs

from sorcha_peerd.register import DEFAULT_LIMITS

INTERFACE: Final = "io.sorcha.peerd"
SERVICE_INTERFACE: Final = "org.varlink.service"

#: Largest message (request or reply) accepted, in bytes. A document travels
#: as a JSON string, where escaping can at worst double its size (a document of
#: only quotes), so two maximum documents plus room for the other fields.
DEFAULT_MAX_MESSAGE_BYTES: Final = 2 * DEFAULT_LIMITS.max_document_bytes + 64 * 1024

# Standard varlink errors.
INTERFACE_NOT_FOUND: Final = "org.varlink.service.InterfaceNotFound"
METHOD_NOT_FOUND: Final = "org.varlink.service.MethodNotFound"
INVALID_PARAMETER: Final = "org.varlink.service.InvalidParameter"
PERMISSION_DENIED: Final = "org.varlink.service.PermissionDenied"
# Errors of io.sorcha.peerd.
NOT_FOUND: Final = f"{INTERFACE}.NotFound"
INVALID_ARGUMENT: Final = f"{INTERFACE}.InvalidArgument"
NOT_SUPPORTED: Final = f"{INTERFACE}.NotSupported"
STORE_UNAVAILABLE: Final = f"{INTERFACE}.StoreUnavailable"
SYNC_FAILED: Final = f"{INTERFACE}.SyncFailed"
CONFIG_INVALID: Final = f"{INTERFACE}.ConfigInvalid"
INTERNAL_ERROR: Final = f"{INTERFACE}.InternalError"
INVALID_REQUEST: Final = f"{INTERFACE}.InvalidRequest"


class ControlError(Exception):
    """A varlink error reply: raised by method handlers, and by the client on receipt."""

    def __init__(self, error: str, parameters: Mapping[str, Any] | None = None) -> None:
        self.error = error
        self.parameters: dict[str, Any] = dict(parameters or {})
        detail = ", ".join(f"{k}={v!r}" for k, v in self.parameters.items())
        super().__init__(f"{error}({detail})")


def invalid_parameter(name: str) -> ControlError:
    return ControlError(INVALID_PARAMETER, {"parameter": name})


class BadMessage(ValueError):
    """A framed message is not a varlink call; the text says why."""


class FrameTooLarge(Exception):
    """More than the message limit arrived without a NUL terminator."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"message of at least {size} bytes exceeds the {limit}-byte limit")
        self.size = size
        self.limit = limit


class FrameBuffer:
    """Cuts a byte stream into NUL-terminated messages.

    Each byte is scanned for the terminator once (``_scanned`` remembers how
    far), so a 30 MiB message arriving in 64 KiB pieces costs linear time.
    """

    def __init__(self, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._buf = bytearray()
        self._scanned = 0

    @property
    def pending(self) -> int:
        """Bytes received and not yet returned as a message."""
        return len(self._buf)

    def feed(self, data: bytes | bytearray) -> None:
        self._buf += data

    def next_message(self) -> bytes | None:
        """The next complete message (without its NUL), or None until more bytes arrive."""
        end = self._buf.find(b"\0", self._scanned)
        if end == -1:
            self._scanned = len(self._buf)
            if len(self._buf) > self.max_bytes:
                raise FrameTooLarge(len(self._buf), self.max_bytes)
            return None
        if end > self.max_bytes:
            raise FrameTooLarge(end, self.max_bytes)
        message = bytes(self._buf[:end])
        del self._buf[: end + 1]
        self._scanned = 0
        return message


def encode(message: Mapping[str, Any]) -> bytes:
    """One framed message: compact UTF-8 JSON (non-ASCII kept as is) and a NUL."""
    return json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode() + b"\0"


def decode_object(data: bytes) -> dict[str, Any]:
    """A message's JSON object; :class:`BadMessage` (saying why) when it is not one."""
    try:
        value = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise BadMessage(f"message is not UTF-8: {exc.reason}") from None
    except json.JSONDecodeError as exc:
        raise BadMessage(f"message is not JSON: {exc.msg}") from None
    except RecursionError:
        raise BadMessage("message is nested too deeply") from None
    if not isinstance(value, dict):
        raise BadMessage(f"message must be a JSON object, got {type(value).__name__}")
    return value


@attrs.frozen
class Request:
    """A method call as received."""

    method: str
    parameters: Mapping[str, Any]
    oneway: bool = False
    more: bool = False

    @property
    def interface(self) -> str:
        return self.method.rpartition(".")[0]

    @property
    def member(self) -> str:
        return self.method.rpartition(".")[2]


def parse_request(data: bytes) -> Request:
    """Check a received message is a varlink call; :class:`BadMessage` saying why not."""
    obj = decode_object(data)
    method = obj.get("method")
    if not isinstance(method, str) or "." not in method:
        raise BadMessage("'method' must be a string 'interface.Method'")
    params = obj.get("parameters")
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise BadMessage("'parameters' must be a JSON object")
    flags = {}
    for flag in ("oneway", "more", "upgrade"):
        value = obj.get(flag, False)
        if not isinstance(value, bool):
            raise BadMessage(f"{flag!r} must be true or false")
        flags[flag] = value
    if flags["upgrade"]:
        raise BadMessage("connection upgrade is not supported")
    return Request(method=method, parameters=params, oneway=flags["oneway"], more=flags["more"])


def reply(parameters: Mapping[str, Any]) -> dict[str, Any]:
    return {"parameters": dict(parameters)}


def error_reply(error: ControlError) -> dict[str, Any]:
    return {"error": error.error, "parameters": error.parameters}


class Params:
    """Typed reads of a call's parameters; a missing or ill-typed one is InvalidParameter.

    Call :meth:`finish` last: a parameter nobody read is unknown, and refused
    (naming it) rather than silently ignored, so a typo cannot change meaning.
    """

    def __init__(self, parameters: Mapping[str, Any]) -> None:
        self._params = parameters
        self._read: set[str] = set()

    def _get(self, name: str) -> Any:
        self._read.add(name)
        return self._params.get(name)

    def string(self, name: str) -> str:
        value = self._get(name)
        if not isinstance(value, str):
            raise invalid_parameter(name)
        return value

    def optional_string(self, name: str) -> str | None:
        value = self._get(name)
        if value is not None and not isinstance(value, str):
            raise invalid_parameter(name)
        return value

    def optional_bool(self, name: str, default: bool) -> bool:
        value = self._get(name)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise invalid_parameter(name)
        return value

    def optional_int(self, name: str, default: int) -> int:
        value = self._get(name)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise invalid_parameter(name)
        return value

    def optional_string_map(self, name: str) -> dict[str, str]:
        value = self._get(name)
        if value is None:
            return {}
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise invalid_parameter(name)
        return value

    def finish(self) -> None:
        for name in self._params:
            if name not in self._read:
                raise invalid_parameter(name)
