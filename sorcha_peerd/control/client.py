"""A small trio client for the control socket, used by sorcha-peerctl and the tests.

One connection carries any number of sequential calls (publishing 5,000
files is one session, not 5,000 connects). Every wait is bounded by a
timeout, and a daemon that is absent, refusing or silent is reported as
:class:`DaemonUnreachable` so a caller can tell "down" from "said no"
(:class:`ControlError`).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import trio

from sorcha_peerd.control.protocol import (
    DEFAULT_MAX_MESSAGE_BYTES,
    BadMessage,
    ControlError,
    FrameBuffer,
    FrameTooLarge,
    decode_object,
    encode,
)

DEFAULT_TIMEOUT = 10.0


class DaemonUnreachable(Exception):
    """No usable answer from the daemon: socket missing, refused, silent, or closed on us."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"cannot reach the daemon at {path}: {reason}")
        self.path = path
        self.reason = reason


class ControlClient:
    """A connection to the control socket; use ``async with await ControlClient.connect(...)``."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        path: Path,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        self._stream = stream
        self._frames = FrameBuffer(max_message_bytes)
        self.path = path
        self.timeout = timeout

    @classmethod
    async def connect(cls, path: Path | str, *, timeout: float = DEFAULT_TIMEOUT) -> Self:
        """Open a connection; :class:`DaemonUnreachable` if there is no daemon to talk to."""
        path = Path(path)
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with trio.fail_after(timeout):
                await sock.connect(os.fspath(path))
        except trio.TooSlowError:
            sock.close()
            raise DaemonUnreachable(path, f"no connection within {timeout:g} s") from None
        except OSError as exc:
            sock.close()
            raise DaemonUnreachable(path, exc.strerror or str(exc)) from None
        return cls(trio.SocketStream(sock), path, timeout=timeout)

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def call(
        self, method: str, parameters: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Call ``method`` and return the reply's parameters.

        Raises :class:`ControlError` for an error reply, :class:`DaemonUnreachable`
        when no well-formed reply arrives within ``timeout`` seconds.
        """
        message: dict[str, Any] = {"method": method}
        if parameters:
            message["parameters"] = dict(parameters)
        try:
            with trio.fail_after(self.timeout):
                await self._stream.send_all(encode(message))
                answer = await self._receive()
        except trio.TooSlowError:
            raise DaemonUnreachable(self.path, f"no answer within {self.timeout:g} s") from None
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise DaemonUnreachable(self.path, f"connection lost ({exc})") from None
        params = answer.get("parameters")
        params = params if isinstance(params, dict) else {}
        error = answer.get("error")
        if error is not None:
            raise ControlError(str(error), params)
        return params

    async def _receive(self) -> dict[str, Any]:
        while True:
            try:
                data = self._frames.next_message()
            except FrameTooLarge as exc:
                raise DaemonUnreachable(self.path, f"reply too large ({exc})") from None
            if data is not None:
                try:
                    return decode_object(data)
                except BadMessage as exc:
                    raise DaemonUnreachable(self.path, f"malformed reply ({exc})") from None
            chunk = await self._stream.receive_some(64 * 1024)
            if not chunk:
                raise DaemonUnreachable(self.path, "the daemon closed the connection")
            self._frames.feed(chunk)
