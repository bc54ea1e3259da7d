"""A gRPC server on purerpc's HTTP/2 machinery, with our own listener and dispatch.

Why not ``purerpc.Server``:

* it binds every interface with SO_REUSEPORT, so a second daemon on the same
  port silently shares it. We bind exactly the configured address, without
  SO_REUSEPORT, and a taken port fails at start with :class:`BindError`;
* its dispatcher catches everything with bare ``except:`` (``trio.Cancelled``
  included) and answers CANCELLED with the exception's repr. Ours maps
  exceptions to statuses in one place (:mod:`.status`), logs unexpected ones
  and lets cancellation through;
* it decodes requests before dispatch, so a malformed request becomes an
  anonymous failure. We decode ourselves and answer INVALID_ARGUMENT.

Server streams take a checkpoint after every message: purerpc's send never
yields, so without it a whole stream would be encoded into memory before the
first byte leaves.
"""

from __future__ import annotations

import datetime
import errno
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import anyio
import anyio.abc
import attrs
import h2.exceptions
import trio
from purerpc.grpc_proto import GRPCProtoSocket, GRPCProtoStream
from purerpc.grpclib.config import GRPCConfiguration
from purerpc.grpclib.events import MessageReceived, RequestEnded, RequestReceived
from purerpc.grpclib.status import Status
from purerpc.grpclib.status import StatusCode as PurerpcStatusCode

from sorcha_peerd.wire.services import Kind, Method
from sorcha_peerd.wire.status import RpcError, StatusCode, status_for_exception

log = logging.getLogger(__name__)
# purerpc logs a warning for every connection that ends badly; our own handler
# reports what matters, so keep purerpc's loggers quiet unless debugging.
logging.getLogger("purerpc").setLevel(logging.ERROR)


class BindError(OSError):
    """The configured gRPC address cannot be bound (e.g. it is in use)."""


@attrs.define
class _CallControl:
    scope: trio.CancelScope | None = None
    status: tuple[StatusCode, str] | None = None


@attrs.frozen
class CallContext:
    """What a handler may want to know about the call besides the request."""

    peer: str
    deadline: float  # trio.current_time() by which the caller gives up; inf if none
    metadata: tuple[tuple[str, str], ...] = ()
    _control: _CallControl = attrs.field(factory=_CallControl, repr=False, alias="control")

    def abort(self, code: StatusCode, message: str) -> None:
        """End the call with this status from anywhere (e.g. another task), at once.

        Used to cut off a push subscriber whose stream is stuck because the
        caller stopped reading: the send it is blocked in is cancelled.
        """
        if self._control.status is None:
            self._control.status = (code, message)
        if self._control.scope is not None:
            self._control.scope.cancel()


Handler = Callable[..., Any]


class _Encoded:
    """Already-encoded message bytes, in the shape purerpc's send expects."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def SerializeToString(self) -> bytes:
        return self.data


def _purerpc_status(code: StatusCode, message: str) -> Status:
    return Status(PurerpcStatusCode(int(code)), status_message=message)


#: The largest message either way: an entry with a 16 MiB document and its fields.
#: purerpc applies one limit to what it sends and receives (and sizes the
#: HTTP/2 window from it); its default is 32 MiB.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024 + 64 * 1024

#: Seconds a call's closing status may take to send before it is given up.
FINISH_TIMEOUT = 5.0

#: What a connection may hold queued for the kernel before streams on it wait.
SEND_AHEAD_BYTES = 1024 * 1024


class _SendGauge:
    """The socket stream purerpc writes to, wrapped to tell how much is queued.

    purerpc sends as far ahead as the caller's HTTP/2 window allows, and our
    own client (like purerpc's) advertises 64 MiB per stream: a peer that reads
    slowly would make the hub buffer a whole sync for it. Server streams wait
    until what is queued on their connection (h2's buffer plus the write in
    progress) is below :data:`SEND_AHEAD_BYTES`, whatever the window.
    """

    def __init__(self, stream: anyio.abc.SocketStream, grpc_socket: GRPCProtoSocket) -> None:
        self._stream = stream
        self._h2 = grpc_socket._grpc_connection.h2_connection
        self._sending = 0
        self._written = trio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    async def send(self, data: bytes) -> None:
        self._sending = len(data)
        try:
            await self._stream.send(data)
        finally:
            self._sending = 0
            written, self._written = self._written, trio.Event()
            written.set()

    def queued(self) -> int:
        return self._sending + len(self._h2._data_to_send)

    async def wait_below(self, limit: int) -> None:
        """Return once fewer than ``limit`` bytes are queued (a checkpoint in any case)."""
        await trio.lowlevel.checkpoint()
        while self.queued() > limit:
            await self._written.wait()


def _watch_resets(grpc_socket: GRPCProtoSocket) -> dict[int, CallContext]:
    """Calls by stream id, each aborted when the caller resets its stream.

    purerpc drops HTTP/2 RST_STREAM on the floor, so a handler waiting for
    something to send (a push subscription) would never learn that its caller
    left. We hook the connection's reset handler to cancel that call at once.
    """
    calls: dict[int, CallContext] = {}
    connection = grpc_socket._grpc_connection
    dropped = connection._stream_reset

    def on_reset(event: Any) -> Any:
        ctx = calls.get(event.stream_id)
        if ctx is not None:
            ctx.abort(StatusCode.CANCELLED, "cancelled by the caller")
        return dropped(event)

    connection._stream_reset = on_reset
    return calls


class _StreamEnded(Exception):
    """The caller half-closed the stream (no more requests)."""


async def _next_request(stream: GRPCProtoStream, method: Method) -> Any:
    """The next request message, or raise :class:`_StreamEnded`."""
    while True:
        event = await stream.receive_event()
        if isinstance(event, MessageReceived):
            try:
                return method.request.decode(event.data)
            except Exception as exc:  # any decode failure is the caller's malformed request
                raise RpcError(
                    StatusCode.INVALID_ARGUMENT, f"malformed {method.request.full_name}: {exc}"
                ) from exc
        if isinstance(event, RequestEnded):
            raise _StreamEnded


async def _single_request(stream: GRPCProtoStream, method: Method) -> Any:
    try:
        return await _next_request(stream, method)
    except _StreamEnded:
        raise RpcError(
            StatusCode.INVALID_ARGUMENT, "expected one request message, got none"
        ) from None


def _encode(method: Method, message: Any) -> _Encoded:
    if isinstance(message, bytes):
        return _Encoded(message)
    return _Encoded(method.response.encode(message))


class GrpcServer:
    """Serves handlers for a set of :class:`Method` on one host:port.

    ``handlers`` maps a method to an async function ``(request, ctx)`` for
    unary methods, an async generator function ``(request, ctx)`` for server
    streams, and an async generator function ``(requests, ctx)`` taking an
    async iterator of requests for bidirectional streams. Streams may yield
    pre-encoded ``bytes`` instead of messages.
    """

    def __init__(self, host: str, port: int, handlers: Mapping[Method, Handler]) -> None:
        self.host = host
        self.port = port
        self._routes = {(m.service, m.name): (m, h) for m, h in handlers.items()}
        self._config = GRPCConfiguration(client_side=False, max_message_length=MAX_MESSAGE_BYTES)

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Bind, report the bound port through ``task_status``, serve until cancelled."""
        try:
            listener = await anyio.create_tcp_listener(
                local_host=self.host, local_port=self.port, reuse_port=False
            )
        except OSError as exc:
            reason = "address in use" if exc.errno == errno.EADDRINUSE else exc.strerror or str(exc)
            raise BindError(
                exc.errno, f"cannot listen on {self.host}:{self.port}: {reason}"
            ) from exc
        async with listener:
            port = listener.extra(anyio.abc.SocketAttribute.local_port)
            self.port = port
            task_status.started(port)
            await listener.serve(self._connection)

    async def _connection(self, sock: anyio.abc.SocketStream) -> None:
        """One client connection; failures end this connection only."""
        try:
            address: Any = sock.extra(anyio.abc.SocketAttribute.remote_address)
            peer = f"{address[0]}:{address[1]}"
        except (OSError, TypeError, ValueError):
            peer = "unknown"
        try:
            async with (
                sock,
                GRPCProtoSocket(
                    self._config,
                    sock,
                    receive_buffer_size=64 * 1024,  # see client.py
                ) as grpc_socket,
            ):
                calls = _watch_resets(grpc_socket)
                gauge = _SendGauge(sock, grpc_socket)
                grpc_socket._socket._stream = gauge
                async with trio.open_nursery() as nursery:
                    async for stream in grpc_socket.listen():
                        nursery.start_soon(self._call, stream, peer, calls, gauge)
        except* (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as group:
            log.debug("gRPC connection from %s lost: %r", peer, group.exceptions[0])
        except* Exception as group:  # noqa: BLE001 - a broken peer must not take the server down
            log.info(
                "gRPC connection from %s closed on a protocol error: %r", peer, group.exceptions[0]
            )

    async def _call(
        self,
        stream: GRPCProtoStream,
        peer: str,
        calls: dict[int, CallContext],
        gauge: _SendGauge,
    ) -> None:
        event = await stream.receive_event()
        if not isinstance(event, RequestReceived):
            await self._finish(stream, StatusCode.INTERNAL, "expected request headers")
            return
        route = self._routes.get((event.service_name, event.method_name))
        if route is None:
            await self._finish(
                stream,
                StatusCode.UNIMPLEMENTED,
                f"method /{event.service_name}/{event.method_name} is not implemented",
            )
            return
        method, handler = route
        deadline = math.inf
        if isinstance(event.timeout, datetime.timedelta):
            deadline = trio.current_time() + event.timeout.total_seconds()
        ctx = CallContext(peer=peer, deadline=deadline, metadata=tuple(event.custom_metadata or ()))
        calls[stream.stream_id] = ctx
        try:
            await self._serve_call(method, handler, stream, ctx, peer, gauge)
        finally:
            calls.pop(stream.stream_id, None)

    async def _serve_call(
        self,
        method: Method,
        handler: Handler,
        stream: GRPCProtoStream,
        ctx: CallContext,
        peer: str,
        gauge: _SendGauge,
    ) -> None:
        code, message = StatusCode.OK, ""
        with trio.CancelScope() as scope:
            ctx._control.scope = scope
            if ctx._control.status is not None:  # aborted before it started
                scope.cancel()
            try:
                await stream.start_response()
                with trio.fail_at(ctx.deadline):
                    await self._dispatch(method, handler, stream, ctx, gauge)
            except _StreamEnded:
                code, message = StatusCode.INVALID_ARGUMENT, "stream ended early"
            except h2.exceptions.StreamClosedError:
                log.debug("%s: %s cancelled by the caller", peer, method.path)
                return
            except Exception as exc:  # noqa: BLE001 - every failure of a handler becomes a status
                code, message = status_for_exception(exc)
        if ctx._control.status is not None:
            code, message = ctx._control.status
        await self._finish(stream, code, message)

    async def _dispatch(
        self,
        method: Method,
        handler: Handler,
        stream: GRPCProtoStream,
        ctx: CallContext,
        gauge: _SendGauge,
    ) -> None:
        if method.kind is Kind.UNARY:
            request = await _single_request(stream, method)
            response = await handler(request, ctx)
            await stream.send_message(_encode(method, response))
            return
        if method.kind is Kind.SERVER_STREAM:
            request = await _single_request(stream, method)
            responses: AsyncIterator[Any] = handler(request, ctx)
        else:
            responses = handler(self._requests(stream, method), ctx)
        try:
            async for response in responses:
                await stream.send_message(_encode(method, response))
                await gauge.wait_below(SEND_AHEAD_BYTES)
        finally:
            aclose: Callable[[], Awaitable[None]] | None = getattr(responses, "aclose", None)
            if aclose is not None:
                with trio.CancelScope(shield=True):
                    await aclose()

    @staticmethod
    async def _requests(stream: GRPCProtoStream, method: Method) -> AsyncIterator[Any]:
        while True:
            try:
                yield await _next_request(stream, method)
            except _StreamEnded:
                return

    @staticmethod
    async def _finish(stream: GRPCProtoStream, code: StatusCode, message: str) -> None:
        """Send the trailers; a stream the caller already reset needs none."""
        try:
            # bounded: a caller that stopped reading must not hold this task forever
            with trio.move_on_after(FINISH_TIMEOUT):
                await stream.close(_purerpc_status(code, message))
        except Exception as exc:  # noqa: BLE001 - h2 and purerpc refuse to write to a reset or closed stream
            log.debug("could not send status %s: %r", code.name, exc)
