"""The control socket server: a unix socket speaking varlink, one trio task per connection.

Why it is built this way:

- The socket is bound, chmod'ed to 0660 and only then put in listening
  state: until ``listen()`` every connect is refused, so there is no moment
  when the socket is reachable with looser permissions.
- A socket file left by a crashed daemon must not block a restart, but a
  running daemon's socket must never be stolen: the path is probed with a
  connect first, and only a refused connect counts as stale.
- A client can never take the daemon down: every connection task catches
  its own failures (logging unexpected ones); bad input gets an error reply,
  or a close when the framing is lost (an oversized message).
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import stat
import struct
from pathlib import Path
from typing import Final

import trio

from sorcha_peerd.control.backend import ControlBackend
from sorcha_peerd.control.interface import Caller, ControlService, ServiceInfo
from sorcha_peerd.control.protocol import (
    DEFAULT_MAX_MESSAGE_BYTES,
    INTERNAL_ERROR,
    INVALID_REQUEST,
    BadMessage,
    ControlError,
    FrameBuffer,
    FrameTooLarge,
    encode,
    error_reply,
    parse_request,
    reply,
)

log = logging.getLogger(__name__)

#: The control socket is for the daemon's own user; the status socket is
#: group-accessible and offers only what reads (for monitoring).
SOCKET_MODE: Final = 0o600
STATUS_SOCKET_MODE: Final = 0o660
#: Mode of the socket's directory when we create it: group members must reach the socket.
DIRECTORY_MODE: Final = 0o750
RECEIVE_SIZE: Final = 64 * 1024


class ControlSocketError(Exception):
    """The control socket cannot be set up at its path."""


class ControlSocketInUse(ControlSocketError):
    """Another daemon answers on the control socket path."""

    def __init__(self, path: Path) -> None:
        super().__init__(f"control socket {path} is in use by another daemon")
        self.path = path


class ControlServer:
    """Serves io.sorcha.peerd for ``backend`` on the unix socket ``socket_path``.

    Run it with ``await nursery.start(server.serve)``: ``start`` returns once
    the socket accepts connections; cancelling the task closes it and removes
    the socket file.
    """

    def __init__(
        self,
        socket_path: Path,
        backend: ControlBackend,
        *,
        info: ServiceInfo | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        probe_timeout: float = 1.0,
        backlog: int = 64,
        mode: int = SOCKET_MODE,
        read_only: bool = False,
    ) -> None:
        self.socket_path = Path(socket_path)
        self.service = ControlService(backend, info, read_only=read_only)
        self.mode = mode
        self.max_message_bytes = max_message_bytes
        self.probe_timeout = probe_timeout
        self.backlog = backlog

    async def serve(self, *, task_status: trio.TaskStatus[Path] = trio.TASK_STATUS_IGNORED) -> None:
        """Bind, report started (with the path), serve until cancelled; remove the socket on exit.

        Raises :class:`ControlSocketInUse` when another daemon holds the path,
        :class:`ControlSocketError` when the path cannot be used.
        """
        sock = await self._bind()
        identity = _identity(self.socket_path)
        listener = trio.SocketListener(sock)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(trio.serve_listeners, self._handle, [listener])
                kind = "status" if self.service.read_only else "control"
                log.info("%s socket listening on %s", kind, self.socket_path)
                task_status.started(self.socket_path)
        finally:
            sock.close()
            # Only our own socket: a daemon started after us may own the path now.
            if identity is not None and _identity(self.socket_path) == identity:
                _unlink(self.socket_path)

    # -- setting up

    async def _bind(self) -> trio.socket.SocketType:
        path = self.socket_path
        _make_directory(path.parent)
        await self._remove_stale(path)
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        bound = False
        try:
            await sock.bind(os.fspath(path))
            bound = True
            os.chmod(path, self.mode)
            sock.listen(self.backlog)
        except BaseException as exc:
            sock.close()
            if bound:  # the file is ours: leave no stale socket behind
                _unlink(path)
            if not isinstance(exc, OSError):
                raise
            if exc.errno == errno.EADDRINUSE:  # another daemon bound it since our probe
                raise ControlSocketInUse(path) from None
            raise ControlSocketError(
                f"cannot listen on control socket {path}: {exc.strerror}"
            ) from None
        return sock

    async def _remove_stale(self, path: Path) -> None:
        """Remove a socket file nobody answers on; refuse a live socket or a non-socket."""
        mode = _mode(path)
        if mode is None:
            return
        if not stat.S_ISSOCK(mode):
            raise ControlSocketError(
                f"control socket path {path} exists and is not a socket; not removing it"
            )
        if await self._answers(path):
            raise ControlSocketInUse(path)
        log.warning("removing stale control socket %s", path)
        _unlink(path)

    async def _answers(self, path: Path) -> bool:
        probe = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with probe:
            with trio.move_on_after(self.probe_timeout):
                try:
                    await probe.connect(os.fspath(path))
                except (ConnectionRefusedError, FileNotFoundError):
                    return False
                except OSError as exc:
                    raise ControlSocketError(
                        f"cannot check whether control socket {path} is in use: {exc.strerror}"
                    ) from None
                return True
        return True  # a listener too busy to accept within the timeout is still alive

    # -- connections

    async def _handle(self, stream: trio.SocketStream) -> None:
        caller = Caller(_peer_uid(stream.socket))
        async with stream:
            try:
                await self._converse(stream, caller)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                log.debug("control: client went away")
            except Exception:
                log.exception("control: connection failed")

    async def _converse(self, stream: trio.SocketStream, caller: Caller) -> None:
        """Answer requests in order until the client closes (or breaks the framing)."""
        frames = FrameBuffer(self.max_message_bytes)
        while True:
            try:
                data = frames.next_message()
            except FrameTooLarge as exc:
                log.warning("control: closing a connection: %s", exc)
                await stream.send_all(
                    encode(error_reply(ControlError(INVALID_REQUEST, {"reason": str(exc)})))
                )
                return
            if data is None:
                chunk = await stream.receive_some(RECEIVE_SIZE)
                if not chunk:
                    if frames.pending:
                        log.debug("control: client closed in the middle of a message")
                    return
                frames.feed(chunk)
                continue
            answer = await self._answer(data, caller)
            if answer is not None:
                await stream.send_all(answer)

    async def _answer(self, data: bytes, caller: Caller) -> bytes | None:
        """The framed reply to one message, or None for a oneway call."""
        try:
            request = parse_request(data)
        except BadMessage as exc:
            return encode(error_reply(ControlError(INVALID_REQUEST, {"reason": str(exc)})))
        try:
            message = reply(await self.service.call(request, caller))
        except ControlError as exc:
            message = error_reply(exc)
        if request.oneway:
            return None
        try:
            return encode(message)
        except (TypeError, ValueError):  # a backend returned something that is not JSON
            log.exception("control: the reply to %s cannot be encoded", request.method)
            return encode(error_reply(ControlError(INTERNAL_ERROR)))


# Small synchronous file-system steps: local, metadata-only, never worth a thread.


def _make_directory(directory: Path) -> None:
    try:
        directory.mkdir(mode=DIRECTORY_MODE, parents=True, exist_ok=True)
    except OSError as exc:
        raise ControlSocketError(
            f"cannot create the control socket directory {directory}: {exc.strerror}"
        ) from None


def _mode(path: Path) -> int | None:
    try:
        return path.lstat().st_mode
    except FileNotFoundError:
        return None


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = path.lstat()
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


_UCRED = struct.Struct("3i")


def _peer_uid(sock: trio.socket.SocketType) -> int | None:
    """The connecting process's uid (Linux SO_PEERCRED), or None where unavailable."""
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, option, _UCRED.size)
        _pid, uid, _gid = _UCRED.unpack(raw)
    except (OSError, struct.error):
        return None
    return int(uid)
