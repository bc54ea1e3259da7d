"""The hub's gRPC services end to end over loopback, with a real SQLite store."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from sorcha_peerd.hub.seed import (
    DEFAULT_BLUEPRINT_ID,
    IntegrityError,
    check_integrity,
    seed_default,
)
from sorcha_peerd.store.sqlite import SqliteRegisterStore
from sorcha_peerd.wire import messages as pb
from sorcha_peerd.wire import services
from sorcha_peerd.wire.client import Channel, open_channel
from sorcha_peerd.wire.status import RpcError, StatusCode
from tests.hub.hub_harness import RunningHub, running_hub
from tests.waiting import wait_until


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def doc(i: int, extra: str = "") -> bytes:
    return f'{{"id": "bp-{i}", "n": {i}{extra}}}'.encode()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteRegisterStore]:
    async with SqliteRegisterStore(tmp_path / "r.sqlite3", poll_interval=0.05) as s:
        yield s


@pytest.fixture
async def hub(store: SqliteRegisterStore) -> AsyncIterator[RunningHub]:
    async with running_hub(store) as h:
        yield h


@pytest.fixture
async def ch(hub: RunningHub) -> AsyncIterator[Channel]:
    async with open_channel("127.0.0.1", hub.port, connect_timeout=5) as channel:
        yield channel


async def connect(ch: Channel, peer: str = "p1", **info: Any) -> pb.ConnectionResponse:
    request = pb.ConnectRequest(
        peer_id=peer, peer_info=pb.PeerInfo(node_type="Peer", **info), connection_time=now_ms()
    )
    response: pb.ConnectionResponse = await ch.unary(services.CONNECT, request, timeout=5)
    return response


async def sync(ch: Channel, method: services.Method, **kw: Any) -> list[Any]:
    kw.setdefault("peer_id", "p1")
    async with ch.server_stream(method, pb.SyncRequest(**kw), timeout=10) as it:
        return [e async for e in it]


async def code_of(coro: Any) -> StatusCode:
    with pytest.raises(RpcError) as info:
        await coro
    return info.value.code


async def test_connect_and_status(ch: Channel, hub: RunningHub) -> None:
    await hub.store.publish("a", doc(1), published_by="x")
    await hub.service.refresh_state()
    r = await connect(ch, address="10.0.0.5", port=5000)
    assert r.success and len(r.session_id) >= 32 and r.central_node_id == "n0"
    assert r.current_system_register_version == 1 and r.heartbeat_interval_seconds == 1
    assert r.config.push_notifications_enabled
    status = await ch.unary(
        services.GET_STATUS, pb.StatusRequest(include_peer_list=True), timeout=5
    )
    assert status.health == pb.NodeHealth.HEALTHY and status.total_blueprints == 1
    assert status.active_peer_count == 1
    assert [p.peer_id for p in status.connected_peers] == ["p1"]
    bye = await ch.unary(
        services.DISCONNECT,
        pb.DisconnectRequest(
            peer_id="p1", session_id=r.session_id, reason=pb.DisconnectReason.SHUTDOWN
        ),
        timeout=5,
    )
    assert bye.success and len(hub.service.sessions) == 0


async def test_bad_connects(ch: Channel, hub: RunningHub) -> None:
    assert await code_of(connect(ch, "bad id")) is StatusCode.INVALID_ARGUMENT
    assert await code_of(connect(ch, "a" * 65)) is StatusCode.INVALID_ARGUMENT
    central = pb.ConnectRequest(peer_id="n1", peer_info=pb.PeerInfo(node_type="Central"))
    assert (
        await code_of(ch.unary(services.CONNECT, central, timeout=5))
        is StatusCode.FAILED_PRECONDITION
    )
    hub.service.drain()
    assert await code_of(connect(ch)) is StatusCode.UNAVAILABLE


async def test_heartbeat_actions(ch: Channel, hub: RunningHub) -> None:
    r = await connect(ch)
    await hub.store.publish("a", doc(1), published_by="x")
    await hub.service.refresh_state()

    async def beat(version: int, session: str = r.session_id, ts: int | None = None) -> Any:
        hb = pb.HeartbeatMessage(
            peer_id="p1",
            session_id=session,
            last_sync_version=version,
            timestamp=now_ms() if ts is None else ts,
            sequence_number=1,
        )
        return await ch.unary(services.SEND_HEARTBEAT, hb, timeout=5)

    assert (await beat(0)).recommended_action == pb.RecommendedAction.SYNC
    assert (await beat(1)).recommended_action == pb.RecommendedAction.NONE
    unknown = await beat(1, session="nope")
    assert unknown.recommended_action == pb.RecommendedAction.RECONNECT and not unknown.success
    assert await code_of(beat(1, ts=now_ms() - 61_000)) is StatusCode.INVALID_ARGUMENT
    status = await ch.unary(
        services.GET_HEARTBEAT_STATUS,
        pb.HeartbeatStatusRequest(peer_id="p1", session_id=r.session_id),
        timeout=5,
    )
    assert status.total_heartbeats_received == 2 and status.is_healthy
    hub.service.drain()
    assert (await beat(1)).recommended_action == pb.RecommendedAction.FAILOVER


async def test_monitor_heartbeat_stream(ch: Channel) -> None:
    r = await connect(ch)
    async with ch.bidi(services.MONITOR_HEARTBEAT, timeout=5) as call:
        await call.send(
            pb.HeartbeatMessage(peer_id="p1", session_id=r.session_id, timestamp=now_ms())
        )
        ack = await call.receive()
        assert ack.success and ack.recommended_action == pb.RecommendedAction.NONE
        await call.send(pb.HeartbeatMessage(peer_id="p1", session_id=r.session_id, timestamp=1))
        refused = await call.receive()
        assert not refused.success and "skew" in refused.message
        await call.done_sending()
        assert await call.receive() is None


async def test_sessions_expire_without_heartbeats(ch: Channel, hub: RunningHub) -> None:
    await connect(ch)
    await wait_until(lambda: len(hub.service.sessions) == 0)


async def test_full_and_incremental_sync_page_through_the_store(
    ch: Channel, hub: RunningHub
) -> None:
    for i in range(30):
        await hub.store.publish(f"bp-{i}", doc(i), published_by="x")
    await hub.store.deprecate("bp-3", deprecated_by="x")  # version 31
    await hub.store.publish("bp-4", doc(4, ', "v": 2'), published_by="x")  # version 32
    full = await sync(ch, services.FULL_SYNC)
    assert len(full) == 29 and [e.version for e in full] == sorted(e.version for e in full)
    assert all(e.is_active and e.checksum_ok() for e in full)
    assert "bp-3" not in {e.blueprint_id for e in full}
    inc = await sync(ch, services.INCREMENTAL_SYNC, last_known_version=25)
    assert [(e.blueprint_id, e.version, e.is_active) for e in inc] == [
        ("bp-25", 26, True),
        ("bp-26", 27, True),
        ("bp-27", 28, True),
        ("bp-28", 29, True),
        ("bp-29", 30, True),
        ("bp-3", 31, False),
        ("bp-4", 32, True),
    ]
    assert len(await sync(ch, services.FULL_SYNC, max_blueprints=10)) == 10
    assert await sync(ch, services.INCREMENTAL_SYNC, last_known_version=32) == []
    assert (
        await code_of(sync(ch, services.FULL_SYNC, max_blueprints=-1))
        is StatusCode.INVALID_ARGUMENT
    )
    assert (
        await code_of(sync(ch, services.INCREMENTAL_SYNC, last_known_version=-5))
        is StatusCode.INVALID_ARGUMENT
    )
    assert await code_of(sync(ch, services.FULL_SYNC, peer_id="")) is StatusCode.INVALID_ARGUMENT


async def test_checkpoint_reports_what_the_hub_knows(ch: Channel, hub: RunningHub) -> None:
    r = await connect(ch)
    for i in range(3):
        await hub.store.publish(f"bp-{i}", doc(i), published_by="x")
    await hub.service.refresh_state()
    request = pb.CheckpointRequest(peer_id="p1", session_id=r.session_id)
    before = await ch.unary(services.GET_CHECKPOINT, request, timeout=5)
    assert before.status == pb.CheckpointStatus.BEHIND and before.current_version == 0
    await sync(ch, services.FULL_SYNC, session_id=r.session_id)
    after = await ch.unary(services.GET_CHECKPOINT, request, timeout=5)
    assert after.status == pb.CheckpointStatus.UP_TO_DATE and after.current_version == 3
    assert after.total_blueprints == 3 and after.last_sync_time > 0
    unknown = pb.CheckpointRequest(peer_id="p1", session_id="zzz")
    assert (
        await code_of(ch.unary(services.GET_CHECKPOINT, unknown, timeout=5)) is StatusCode.NOT_FOUND
    )


async def subscribe(
    ch: Channel,
    n: int,
    filters: pb.SubscriptionFilters | None = None,
    peer: str = "p1",
    ready: trio.Event | None = None,
) -> list[Any]:
    got = []
    request = pb.SubscriptionRequest(peer_id=peer, filters=filters)
    async with ch.server_stream(services.SUBSCRIBE, request, timeout=10) as it:
        if ready is not None:
            ready.set()
        async for note in it:
            got.append(note)
            if len(got) == n:
                break
    return got


async def wait_subscribers(hub: RunningHub, n: int) -> None:
    await wait_until(lambda: len(hub.service.fanout) >= n)


async def test_push_notifications_for_every_kind_of_change(ch: Channel, hub: RunningHub) -> None:
    results: dict[str, list[Any]] = {}

    async def listen(name: str, n: int, filters: pb.SubscriptionFilters | None = None) -> None:
        results[name] = await subscribe(ch, n, filters)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(listen, "all", 3)
        nursery.start_soon(
            listen,
            "deprecations",
            1,
            pb.SubscriptionFilters(notification_types=[pb.NotificationType.BLUEPRINT_DEPRECATED]),
        )
        await wait_subscribers(hub, 2)
        await hub.store.publish("a", doc(1), published_by="alice")
        await trio.sleep(0.1)
        await hub.store.publish("a", doc(1, ', "v": 2'), published_by="alice")
        await trio.sleep(0.1)
        await hub.store.deprecate("a", deprecated_by="alice")
    notes = results["all"]
    assert [(n.blueprint_id, n.version, n.type, n.sequence_number) for n in notes] == [
        ("a", 1, pb.NotificationType.BLUEPRINT_PUBLISHED, 1),
        ("a", 2, pb.NotificationType.BLUEPRINT_UPDATED, 2),
        ("a", 3, pb.NotificationType.BLUEPRINT_DEPRECATED, 3),
    ]
    assert notes[0].published_by == "alice" and notes[0].checksum.startswith("sha256:")
    assert [(n.version, n.sequence_number) for n in results["deprecations"]] == [(3, 1)]


async def test_a_change_written_by_another_store_object_is_pushed(
    ch: Channel, hub: RunningHub, tmp_path: Path
) -> None:
    async with trio.open_nursery() as nursery:
        got: list[Any] = []

        async def listen() -> None:
            got.extend(await subscribe(ch, 1))

        nursery.start_soon(listen)
        await wait_subscribers(hub, 1)
        async with SqliteRegisterStore(tmp_path / "r.sqlite3") as other:
            await other.publish("elsewhere", doc(9), published_by="other-hub")
    assert got[0].blueprint_id == "elsewhere"


async def test_draining_ends_push_streams_with_unavailable(ch: Channel, hub: RunningHub) -> None:
    async def later() -> None:
        await wait_subscribers(hub, 1)
        hub.service.drain()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(later)
        assert await code_of(subscribe(ch, 5)) is StatusCode.UNAVAILABLE


async def test_a_subscriber_that_does_not_read_is_cut_off(
    store: SqliteRegisterStore, grpcio_contract: tuple[Any, Any]
) -> None:
    """A grpcio subscriber that never reads: its window fills, its queue fills, it is cut off.

    (purerpc's own client buffers up to 64 MiB whatever the caller reads, so
    grpcio, with its modest flow-control window, plays the stuck peer.)
    """
    import grpc

    pb2, pb2_grpc = grpcio_contract
    async with (
        running_hub(store, push_queue_size=3) as hub,
        open_channel("127.0.0.1", hub.port, connect_timeout=5) as ch,
    ):
        fast: list[Any] = []
        n_changes = 600
        channel = grpc.insecure_channel(
            f"127.0.0.1:{hub.port}", options=[("grpc.http2.bdp_probe", 0)]
        )
        try:
            stuck = pb2_grpc.SystemRegisterSyncStub(channel).SubscribeToPushNotifications(
                pb2.XSubscribe(peer_id="sleepy"), timeout=60
            )
            async with trio.open_nursery() as nursery:

                async def reader() -> None:
                    fast.extend(await subscribe(ch, n_changes, peer="awake"))

                nursery.start_soon(reader)
                await wait_subscribers(hub, 2)
                name = '"' + "x" * 3_900 + '"'  # a summary near its 4 KiB limit
                for i in range(n_changes):
                    await store.publish(f"bp-{i}", doc(i, f', "name": {name}'), published_by="x")
            assert hub.service.fanout.cut_offs == 1
            # and the reader's reset ended its subscription too
            await wait_until(lambda: len(hub.service.fanout) == 0)
            # the reader got everything in order, undisturbed by the stuck one
            assert [n.sequence_number for n in fast] == list(range(1, n_changes + 1))

            def drain_stuck() -> Any:
                try:
                    for _ in stuck:
                        pass
                except grpc.RpcError as exc:
                    return exc.code()
                return None

            code = await trio.to_thread.run_sync(drain_stuck)
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        finally:
            channel.close()


async def test_seed_once_and_integrity(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite3"
    for _ in range(3):
        async with SqliteRegisterStore(path) as s:
            await check_integrity(s)
            seeded = await seed_default(s)
            assert seeded.version == 1 and seeded.published_by == "system"
            assert dict(seeded.metadata) == {
                "category": "register",
                "type": "creation",
                "isDefault": "true",
            }
            assert await s.head_version() == 1
    with sqlite3.connect(path) as db:
        db.execute(
            "UPDATE entries SET document = ? WHERE blueprint_id = ?",
            (b'{"tampered": true}', DEFAULT_BLUEPRINT_ID),
        )
    async with SqliteRegisterStore(path) as s:
        with pytest.raises(IntegrityError, match=DEFAULT_BLUEPRINT_ID):
            await check_integrity(s)


class FlakyStore(SqliteRegisterStore):
    """Fails its next reads on demand, like a MongoDB in an election."""

    failures = 0

    async def read_since(
        self, after_version: int, limit: int, *, active_only: bool = False
    ) -> list[Any]:
        if self.failures:
            self.failures -= 1
            from sorcha_peerd.store.base import StoreError

            raise StoreError("store unavailable (test)")
        return await super().read_since(after_version, limit, active_only=active_only)


async def test_the_feed_waits_out_a_store_outage(tmp_path: Path) -> None:
    async with (
        FlakyStore(tmp_path / "r.sqlite3", poll_interval=0.05) as store,
        running_hub(store) as hub,
        open_channel("127.0.0.1", hub.port, connect_timeout=5) as ch,
    ):
        got: list[Any] = []
        async with trio.open_nursery() as nursery:

            async def listen() -> None:
                got.extend(await subscribe(ch, 1))

            nursery.start_soon(listen)
            await wait_subscribers(hub, 1)
            store.failures = 3  # the feed's next reads fail; the hub must not die
            await store.publish("after-outage", doc(1), published_by="x")
        assert [n.blueprint_id for n in got] == ["after-outage"]
