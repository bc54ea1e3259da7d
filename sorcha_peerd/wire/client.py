"""A gRPC client channel on purerpc's HTTP/2 machinery, with deadlines and clean errors.

Why not ``purerpc.insecure_channel`` and its stubs:

* its reader ends silently when the server goes away, leaving every waiting
  call hung forever. Our reader closes every open call's queue when the
  connection ends, so a killed hub is an immediate UNAVAILABLE;
* a failing connection surfaces as nested ExceptionGroups in the caller's
  task. Ours runs the connection in a task of its own and turns every failure
  into an :class:`RpcError` with a gRPC status;
* a cancelled or timed-out call leaves its HTTP/2 stream open. Ours resets it.

Every call takes a ``timeout`` (seconds, or None for a stream that lives as
long as the caller wants, e.g. a push subscription watched by heartbeats):
purerpc never notices a server that stops answering without closing the TCP
connection, so deadlines and heartbeats are the only liveness there is.
"""

from __future__ import annotations

import datetime
import errno
import logging
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc
import trio
from h2.errors import ErrorCodes
from purerpc.grpc_proto import GRPCProtoSocket, GRPCProtoStream
from purerpc.grpclib.config import GRPCConfiguration
from purerpc.grpclib.events import MessageReceived, ResponseEnded, WindowUpdated

from sorcha_peerd.wire.server import _Encoded
from sorcha_peerd.wire.services import Method
from sorcha_peerd.wire.status import RpcError, StatusCode

log = logging.getLogger(__name__)

_RECV = 64 * 1024
_CONNECTION_GONE = (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError)


class _ClientSocket(GRPCProtoSocket):  # type: ignore[misc]
    """purerpc's client socket with a reader that reports the end of the connection."""

    def __init__(self, sock: anyio.abc.SocketStream) -> None:
        # h2 copies the rest of its receive buffer after every frame: reading
        # 64 KiB at a time instead of purerpc's 1 MiB keeps those copies small
        # (bench/README.md: about a fifth more entries/s on a sync stream).
        super().__init__(GRPCConfiguration(client_side=True), sock, receive_buffer_size=_RECV)
        self.ended = trio.Event()
        self.failure: BaseException | None = None

    async def _reader_thread(self) -> None:
        try:
            while True:
                try:
                    data = await self._socket.recv(self._receive_buffer_size)
                except (*_CONNECTION_GONE, OSError):
                    return
                events = self._grpc_connection.receive_data(data)
                await self._socket.flush()
                for event in events:
                    if isinstance(event, WindowUpdated):
                        targets = (
                            self._streams.values()
                            if event.stream_id == 0
                            else [self._streams.get(event.stream_id)]
                        )
                        for target in list(targets):
                            if target is not None:
                                await target._set_flow_control_update()
                        continue
                    stream = self._streams.get(event.stream_id)
                    if stream is None:  # a call we reset; late frames are dropped
                        continue
                    await stream._incoming_events[0].send(event)
                    if isinstance(event, ResponseEnded):
                        stream._close_remote()
        except Exception as exc:  # noqa: BLE001 - a protocol error makes the whole connection unusable
            self.failure = exc
        finally:
            self.end()

    def end(self) -> None:
        """Wake every call waiting on this connection: it is over."""
        for stream in list(self._streams.values()):
            stream._incoming_events[0].close()
        self.ended.set()


class Channel:
    """One HTTP/2 connection to a gRPC server; calls may run concurrently on it."""

    def __init__(self, host: str, port: int, sock: _ClientSocket) -> None:
        self.host = host
        self.port = port
        self._socket = sock

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def closed(self) -> bool:
        return self._socket.ended.is_set()

    def _lost(self) -> RpcError:
        why = f": {self._socket.failure!r}" if self._socket.failure else ""
        return RpcError(StatusCode.UNAVAILABLE, f"connection to {self.address} lost{why}")

    async def _start(self, method: Method, timeout: float | None) -> GRPCProtoStream:
        if self.closed:
            raise self._lost()
        td = datetime.timedelta(seconds=timeout) if timeout is not None else None
        stream: GRPCProtoStream = await self._socket.start_request(
            "http", method.service, method.name, method.request.full_name, self.address, td
        )
        return stream

    def _reset(self, stream: GRPCProtoStream) -> None:
        """Abandon a call: RST_STREAM to the server, forget the stream locally."""
        self._socket._streams.pop(stream.stream_id, None)
        if self.closed:
            return
        try:
            self._socket._grpc_connection.reset_stream(stream.stream_id, ErrorCodes.CANCEL)
        except Exception as exc:  # noqa: BLE001 - h2 refuses to reset a stream that already ended
            log.debug("reset of stream %s refused: %r", stream.stream_id, exc)
        self._socket._socket._flush_event.set()

    async def _receive(self, stream: GRPCProtoStream, method: Method) -> tuple[bool, Any]:
        """(True, message) for the next response, (False, None) at a clean end."""
        while True:
            try:
                event = await stream.receive_event()
            except _CONNECTION_GONE:
                raise self._lost() from None
            if isinstance(event, MessageReceived):
                try:
                    return True, method.response.decode(event.data)
                except Exception as exc:  # a malformed answer: the server is broken
                    raise RpcError(
                        StatusCode.INTERNAL,
                        f"malformed {method.response.full_name} from {self.address}: {exc}",
                    ) from exc
            if isinstance(event, ResponseEnded):
                status = event.status
                if status.int_value != 0:
                    try:
                        code = StatusCode(status.int_value)
                    except ValueError:
                        code = StatusCode.UNKNOWN
                    raise RpcError(code, status.status_message or "")
                return False, None

    @asynccontextmanager
    async def _call(self, method: Method, timeout: float | None) -> AsyncIterator[GRPCProtoStream]:
        deadline = trio.current_time() + timeout if timeout is not None else math.inf
        stream: GRPCProtoStream | None = None
        try:
            # move_on (not fail_after): a TooSlowError of the caller's own must
            # not pass for this call's deadline.
            with trio.move_on_at(deadline) as scope:
                stream = await self._start(method, timeout)
                yield stream
            if scope.cancelled_caught:
                raise RpcError(
                    StatusCode.DEADLINE_EXCEEDED,
                    f"{method.name} to {self.address} took longer than {timeout} s",
                )
        finally:
            # left before the server's trailers arrived: cancelled, timed out, or
            # the caller stopped reading. Tell the server to stop.
            if stream is not None and stream.end_stream_event is None:
                self._reset(stream)

    async def unary(self, method: Method, request: Any, *, timeout: float) -> Any:
        """Call a unary method; raises :class:`RpcError` on any failure."""
        async with self._call(method, timeout) as stream:
            await stream.send_message(_Encoded(method.request.encode(request)))
            await stream.close()
            ok, response = await self._receive(stream, method)
            if not ok:
                raise RpcError(StatusCode.INTERNAL, f"{method.name}: no response message")
            more, _ = await self._receive(stream, method)
            if more:
                raise RpcError(StatusCode.INTERNAL, f"{method.name}: more than one response")
            return response

    @asynccontextmanager
    async def server_stream(
        self, method: Method, request: Any, *, timeout: float | None
    ) -> AsyncIterator[AsyncIterator[Any]]:
        """``async with ch.server_stream(m, req, timeout=t) as it: async for r in it: ...``.

        Leaving the block early resets the stream on the server.
        """
        async with self._call(method, timeout) as stream:
            await stream.send_message(_Encoded(method.request.encode(request)))
            await stream.close()

            async def responses() -> AsyncIterator[Any]:
                while True:
                    ok, message = await self._receive(stream, method)
                    if not ok:
                        return
                    yield message

            yield responses()

    @asynccontextmanager
    async def bidi(self, method: Method, *, timeout: float | None) -> AsyncIterator[BidiCall]:
        async with self._call(method, timeout) as stream:
            yield BidiCall(self, method, stream)


class BidiCall:
    """An open bidirectional stream: send requests, receive responses, in any order."""

    def __init__(self, channel: Channel, method: Method, stream: GRPCProtoStream) -> None:
        self._channel = channel
        self._method = method
        self._stream = stream

    async def send(self, request: Any) -> None:
        if self._channel.closed:
            raise self._channel._lost()
        await self._stream.send_message(_Encoded(self._method.request.encode(request)))

    async def done_sending(self) -> None:
        await self._stream.close()

    async def receive(self) -> Any | None:
        """The next response, or None when the server ended the stream cleanly."""
        ok, message = await self._channel._receive(self._stream, self._method)
        return message if ok else None


@asynccontextmanager
async def open_channel(host: str, port: int, *, connect_timeout: float) -> AsyncIterator[Channel]:
    """Connect to ``host:port``; the channel closes when the block ends.

    A refused or timed-out connection raises ``RpcError(UNAVAILABLE)``. Errors
    raised in the block come out unchanged (not wrapped in an ExceptionGroup).
    """
    try:
        with trio.fail_after(connect_timeout):
            sock = await anyio.connect_tcp(host, port)
    except trio.TooSlowError:
        raise RpcError(
            StatusCode.UNAVAILABLE,
            f"cannot connect to {host}:{port}: no answer in {connect_timeout} s",
        ) from None
    except OSError as exc:
        raise RpcError(
            StatusCode.UNAVAILABLE, f"cannot connect to {host}:{port}: {_connect_failure(exc)}"
        ) from None
    grpc_socket = _ClientSocket(sock)
    body_error: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            started = trio.Event()
            nursery.start_soon(_run_connection, grpc_socket, started)
            await started.wait()
            try:
                yield Channel(host, port, grpc_socket)
            except BaseException as exc:
                body_error = exc
                raise
            finally:
                grpc_socket.end()
    except BaseExceptionGroup as group:
        if (
            body_error is not None
            and len(group.exceptions) == 1
            and group.exceptions[0] is body_error
        ):
            raise body_error from None
        raise


def _connect_failure(exc: BaseException) -> str:
    """The root reason anyio hides behind "All connection attempts failed"."""
    seen: list[BaseException] = [exc]
    while seen:
        current = seen.pop()
        if isinstance(current, OSError) and current.errno == errno.ECONNREFUSED:
            return "connection refused"
        if isinstance(current, BaseExceptionGroup):
            seen.extend(current.exceptions)
        if current.__cause__ is not None:
            seen.append(current.__cause__)
    return str(exc)


async def _run_connection(grpc_socket: _ClientSocket, started: trio.Event) -> None:
    """Own purerpc's task groups in this task, so their failures stay here."""
    try:
        async with grpc_socket:
            started.set()
            await grpc_socket.ended.wait()
    except* Exception as group:  # noqa: BLE001 - the writer failed: the connection is gone
        grpc_socket.failure = group.exceptions[0]
    finally:
        started.set()
        grpc_socket.end()
        with trio.CancelScope(shield=True):
            try:
                await grpc_socket._socket._stream.aclose()
            except (OSError, *_CONNECTION_GONE) as exc:  # closing a broken socket
                log.debug("closing the connection: %r", exc)
