"""The purerpc bridge: streaming, status codes for every error path, binding, liveness."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import trio

from sorcha_peerd.register import Entry, ValidationError, validate_peer_id
from sorcha_peerd.wire import messages as pb
from sorcha_peerd.wire import services
from sorcha_peerd.wire.client import Channel, open_channel
from sorcha_peerd.wire.server import BindError, CallContext, GrpcServer
from sorcha_peerd.wire.status import RpcError, StatusCode

DOC = b'{"blueprint": "' + b"x" * 2000 + b'"}'
ENTRIES = [
    Entry(
        f"bp-{i}",
        i + 1,
        DOC,
        1_700_000_000_000 + i,
        "publisher",
        metadata={"category": "test", "n": str(i)},
    ).with_checksum()
    for i in range(2000)
]


class Flagged(Exception):
    grpc_status = StatusCode.RESOURCE_EXHAUSTED


async def connect(request: pb.ConnectRequest, ctx: CallContext) -> pb.ConnectionResponse:
    """Fails in a different way for each peer id, to exercise every error path."""
    failures: Mapping[str, Callable[[], BaseException]] = {
        "rpc-error": lambda: RpcError(StatusCode.PERMISSION_DENIED, "not you"),
        "flagged": lambda: Flagged("slow down"),
        "unimplemented": lambda: NotImplementedError("later"),
        "crash": lambda: ZeroDivisionError("secret detail"),
    }
    if request.peer_id == "slow":
        await trio.sleep(10)
    if request.peer_id in failures:
        raise failures[request.peer_id]()
    validate_peer_id(request.peer_id)
    return pb.ConnectionResponse(success=True, session_id="s-1", central_node_id="n0")


async def full_sync(request: pb.SyncRequest, ctx: CallContext) -> AsyncIterator[Entry]:
    for e in ENTRIES[: request.max_blueprints or None]:
        yield e
    if request.peer_id == "fail-late":
        raise ValidationError("last_known_version", "too new")


async def monitor(
    requests: AsyncIterator[pb.HeartbeatMessage], ctx: CallContext
) -> AsyncIterator[pb.HeartbeatAcknowledgement]:
    async for heartbeat in requests:
        yield pb.HeartbeatAcknowledgement(success=True, timestamp=heartbeat.timestamp)


@pytest.fixture
async def server_port(nursery: trio.Nursery) -> int:
    server = GrpcServer(
        "127.0.0.1",
        0,
        {
            services.CONNECT: connect,
            services.FULL_SYNC: full_sync,
            services.MONITOR_HEARTBEAT: monitor,
        },
    )
    port: int = await nursery.start(server.serve)
    return port


@pytest.fixture
async def channel(server_port: int) -> AsyncIterator[Channel]:
    async with open_channel("127.0.0.1", server_port, connect_timeout=5) as ch:
        yield ch


async def test_stream_of_entries_arrives_whole_and_in_order(channel: Channel) -> None:
    async with channel.server_stream(services.FULL_SYNC, pb.SyncRequest(), timeout=30) as it:
        received = [e async for e in it]
    assert received == ENTRIES
    assert all(e.checksum_ok() for e in received)


async def test_stream_honours_request_and_ends_cleanly(channel: Channel) -> None:
    async with channel.server_stream(
        services.FULL_SYNC, pb.SyncRequest(max_blueprints=3), timeout=5
    ) as it:
        assert [e.version async for e in it] == [1, 2, 3]


async def test_unary_and_bidi(channel: Channel) -> None:
    response = await channel.unary(services.CONNECT, pb.ConnectRequest(peer_id="p-1"), timeout=5)
    assert response.session_id == "s-1"
    async with channel.bidi(services.MONITOR_HEARTBEAT, timeout=5) as call:
        for ts in (5, 6, 7):
            await call.send(pb.HeartbeatMessage(timestamp=ts))
            ack = await call.receive()
            assert ack is not None and ack.timestamp == ts
        await call.done_sending()
        assert await call.receive() is None


@pytest.mark.parametrize(
    ("peer_id", "code", "fragment"),
    [
        ("rpc-error", StatusCode.PERMISSION_DENIED, "not you"),
        ("bad id!", StatusCode.INVALID_ARGUMENT, "peer_id"),
        ("flagged", StatusCode.RESOURCE_EXHAUSTED, "slow down"),
        ("unimplemented", StatusCode.UNIMPLEMENTED, "later"),
        ("crash", StatusCode.INTERNAL, "internal error"),
    ],
)
async def test_handler_errors_map_to_status_codes(
    channel: Channel, peer_id: str, code: StatusCode, fragment: str
) -> None:
    with pytest.raises(RpcError) as info:
        await channel.unary(services.CONNECT, pb.ConnectRequest(peer_id=peer_id), timeout=5)
    assert info.value.code is code
    assert fragment in info.value.message
    assert "secret detail" not in info.value.message


async def test_error_after_some_stream_messages(channel: Channel) -> None:
    got = []
    with pytest.raises(RpcError) as info:
        async with channel.server_stream(
            services.FULL_SYNC, pb.SyncRequest(peer_id="fail-late", max_blueprints=2), timeout=5
        ) as it:
            async for e in it:
                got.append(e.version)
    assert got == [1, 2]
    assert info.value.code is StatusCode.INVALID_ARGUMENT


async def test_unknown_method_is_unimplemented(channel: Channel) -> None:
    with pytest.raises(RpcError) as info:
        await channel.unary(services.GET_STATUS, pb.StatusRequest(), timeout=5)
    assert info.value.code is StatusCode.UNIMPLEMENTED


async def test_malformed_request_is_invalid_argument(channel: Channel) -> None:
    broken = services.Method(
        services.CONNECT.service,
        services.CONNECT.name,
        services.Kind.UNARY,
        services.MessageCodec("x", lambda _: b"\x0a\x09ab", bytes),
        services.CONNECT.response,
    )
    with pytest.raises(RpcError) as info:
        await channel.unary(broken, None, timeout=5)
    assert info.value.code is StatusCode.INVALID_ARGUMENT
    # the connection is still good afterwards
    ok = await channel.unary(services.CONNECT, pb.ConnectRequest(peer_id="p"), timeout=5)
    assert ok.success


async def test_client_deadline(channel: Channel) -> None:
    with pytest.raises(RpcError) as info:
        await channel.unary(services.CONNECT, pb.ConnectRequest(peer_id="slow"), timeout=0.2)
    assert info.value.code is StatusCode.DEADLINE_EXCEEDED


async def test_server_enforces_the_callers_deadline(
    server_port: int, grpcio_contract: tuple[ModuleType, ModuleType]
) -> None:
    import grpc

    def call() -> Any:
        with grpc.insecure_channel(f"127.0.0.1:{server_port}") as ch:
            stub = grpcio_contract[1].CentralNodeConnectionStub(ch)
            try:
                stub.ConnectToCentralNode(grpcio_contract[0].XConnect(peer_id="slow"), timeout=0.3)
            except grpc.RpcError as exc:
                return exc.code()
            return None

    assert await trio.to_thread.run_sync(call) in (grpc.StatusCode.DEADLINE_EXCEEDED,)


async def test_connection_refused_is_unavailable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(RpcError) as info:
        async with open_channel("127.0.0.1", port, connect_timeout=2):
            pass
    assert info.value.code is StatusCode.UNAVAILABLE
    assert "refused" in info.value.message


async def test_errors_in_the_channel_block_come_out_unwrapped(server_port: int) -> None:
    with pytest.raises(KeyError):
        async with open_channel("127.0.0.1", server_port, connect_timeout=5):
            raise KeyError("mine")


async def test_bind_refuses_a_taken_port(server_port: int) -> None:
    second = GrpcServer("127.0.0.1", server_port, {})
    with pytest.raises(BindError, match="address in use"):
        await second.serve()


async def test_bind_only_the_configured_address(server_port: int) -> None:
    with socket.socket() as s:  # another interface on the same port is still free...
        s.bind(("127.0.0.2", server_port))
    with socket.socket() as s, pytest.raises(OSError):  # ...but the bound one is ours alone
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind(("127.0.0.1", server_port))


async def test_cancelled_stream_is_reset_on_the_server(nursery: trio.Nursery) -> None:
    finished = trio.Event()

    async def endless(request: Any, ctx: CallContext) -> AsyncIterator[Entry]:
        try:
            version = 0
            while True:
                version += 1
                yield Entry(f"e{version}", version, b"{}", 1, "x").with_checksum()
                await trio.sleep(0.001)
        finally:
            finished.set()

    port = await nursery.start(GrpcServer("127.0.0.1", 0, {services.FULL_SYNC: endless}).serve)
    async with open_channel("127.0.0.1", port, connect_timeout=5) as ch:
        async with ch.server_stream(services.FULL_SYNC, pb.SyncRequest(), timeout=None) as it:
            async for e in it:
                if e.version == 20:
                    break
        with trio.fail_after(5):
            await finished.wait()
        # the channel still serves further calls after the reset
        async with ch.server_stream(services.FULL_SYNC, pb.SyncRequest(), timeout=None) as it:
            assert (await it.__anext__()).version == 1


async def test_killed_server_fails_open_calls_at_once() -> None:
    proc = subprocess.Popen(  # noqa: ASYNC220 - started once, read from a worker thread
        [sys.executable, str(Path(__file__).with_name("_slow_server.py"))],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        port = int(await trio.to_thread.run_sync(proc.stdout.readline))
        async with open_channel("127.0.0.1", port, connect_timeout=5) as ch:
            with pytest.raises(RpcError) as info, trio.fail_after(5):
                async with ch.server_stream(
                    services.FULL_SYNC, pb.SyncRequest(), timeout=None
                ) as it:
                    async for e in it:
                        if e.version == 5:
                            proc.kill()
            assert info.value.code is StatusCode.UNAVAILABLE
            assert ch.closed
            with pytest.raises(RpcError) as again:
                await ch.unary(services.CONNECT, pb.ConnectRequest(peer_id="p"), timeout=5)
            assert again.value.code is StatusCode.UNAVAILABLE
    finally:
        proc.kill()
        proc.wait()


async def test_grpcio_client_interoperates(
    server_port: int, grpcio_contract: tuple[ModuleType, ModuleType]
) -> None:
    import grpc

    pb2, pb2_grpc = grpcio_contract

    def run() -> tuple[list[Any], Any]:
        with grpc.insecure_channel(f"127.0.0.1:{server_port}") as ch:
            entries = list(
                pb2_grpc.SystemRegisterSyncStub(ch).FullSync(
                    pb2.XSync(max_blueprints=50), timeout=10
                )
            )
            try:
                pb2_grpc.CentralNodeConnectionStub(ch).ConnectToCentralNode(
                    pb2.XConnect(peer_id="bad id!"), timeout=10
                )
            except grpc.RpcError as exc:
                return entries, exc.code()
            return entries, None

    entries, code = await trio.to_thread.run_sync(run)
    assert [e.blueprint_id for e in entries] == [e.blueprint_id for e in ENTRIES[:50]]
    assert entries[7].blueprint_document == ENTRIES[7].document
    assert dict(entries[7].metadata) == dict(ENTRIES[7].metadata)
    assert code == grpc.StatusCode.INVALID_ARGUMENT


async def test_an_idle_stream_learns_at_once_that_its_caller_left(nursery: trio.Nursery) -> None:
    """purerpc drops RST_STREAM; the bridge turns it into cancelling the handler."""
    finished = trio.Event()

    async def one_then_wait(request: Any, ctx: CallContext) -> AsyncIterator[Entry]:
        try:
            yield ENTRIES[0]
            await trio.sleep_forever()
        finally:
            finished.set()

    port = await nursery.start(
        GrpcServer("127.0.0.1", 0, {services.FULL_SYNC: one_then_wait}).serve
    )
    async with open_channel("127.0.0.1", port, connect_timeout=5) as ch:
        async with ch.server_stream(services.FULL_SYNC, pb.SyncRequest(), timeout=None) as it:
            assert (await it.__anext__()).version == 1
        with trio.fail_after(5):
            await finished.wait()


async def test_a_slow_reader_does_not_make_the_server_buffer_its_stream(
    nursery: trio.Nursery,
) -> None:
    """A caller that opens a huge HTTP/2 window and then stops reading its socket.

    purerpc would queue the whole stream for it (60 MB here); the bridge stops
    once about 1 MiB waits for the kernel. The caller is a bare h2 client, so
    nothing on its side reads the socket behind the test's back.
    """
    import h2.config
    import h2.connection
    import h2.settings

    produced = 0
    big = b'"' + b"x" * 20_000 + b'"'
    total = 3_000

    async def plenty(request: Any, ctx: CallContext) -> AsyncIterator[Entry]:
        nonlocal produced
        for i in range(total):
            produced += 1
            yield Entry(f"e{i}", i + 1, big, 1, "x").with_checksum()

    port = await nursery.start(GrpcServer("127.0.0.1", 0, {services.FULL_SYNC: plenty}).serve)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.local_settings = h2.settings.Settings(
        client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 2**31 - 1}
    )
    conn.initiate_connection()
    conn.increment_flow_control_window(2**31 - 1 - 65_535)
    conn.send_headers(
        1,
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":authority", "x"),
            (":path", services.FULL_SYNC.path),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ],
    )
    body = bytes(pb.SyncRequest(peer_id="p"))
    conn.send_data(1, b"\x00" + len(body).to_bytes(4, "big") + body, end_stream=True)
    sock = await trio.open_tcp_stream("127.0.0.1", port)
    async with sock:
        await sock.send_all(conn.data_to_send())
        await trio.sleep(1.5)  # never read: what did the server produce meanwhile?
    # loopback socket buffers (a few MB) plus our 1 MiB allowance, not 60 MB
    assert 0 < produced < total // 2, f"server ran {produced * 20} KB ahead of its reader"
