"""A grpcio client, compiled from its own copy of the contract, against a real hub daemon.

Publishes, updates and deprecations are made with ``sorcha-peerctl``, as an
operator would; the client must see them by sync and by push, and get the
documented status codes for bad requests.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import pytest

from tests.daemon_process import Daemon, running_daemon

CONTRACT = Path(__file__).with_name("contract")


@pytest.fixture(scope="module")
def x(grpcio_contract: tuple[ModuleType, ModuleType]) -> tuple[ModuleType, ModuleType]:
    return grpcio_contract


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    # a short heartbeat interval keeps the drain at stop short (the test's
    # sessions never hear their FAILOVER); sessions live 2 x 5 s
    timing = "[timing]\nheartbeat_interval = 1.0\nheartbeat_timeout = 5.0\n"
    with running_daemon(tmp_path_factory.mktemp("hub-state"), config=timing) as daemon:
        yield daemon


@pytest.fixture
def channel(hub: Daemon) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{hub.port}") as ch:
        yield ch


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def code(call: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code()  # type: ignore[no-any-return]


def write(path: Path, doc: dict[str, Any]) -> Path:
    path.write_text(json.dumps(doc))
    return path


def test_connect_sync_subscribe_and_see_peerctl_changes(
    hub: Daemon, channel: grpc.Channel, x: tuple[ModuleType, ModuleType], tmp_path: Path
) -> None:
    pb2, pb2_grpc = x
    conn = pb2_grpc.CentralNodeConnectionStub(channel)
    sync = pb2_grpc.SystemRegisterSyncStub(channel)
    beat = pb2_grpc.HeartbeatStub(channel)

    hello = conn.ConnectToCentralNode(
        pb2.XConnect(
            peer_id="interop-1",
            peer_info=pb2.XPeer(node_type="Peer", address="127.0.0.1"),
            connection_time=now_ms(),
        ),
        timeout=10,
    )
    assert hello.success and hello.central_node_id == "n0" and hello.session_id
    start = hello.current_system_register_version
    assert start >= 1  # the seeded default blueprint

    notes: list[Any] = []
    stream = sync.SubscribeToPushNotifications(
        pb2.XSubscribe(peer_id="interop-1", session_id=hello.session_id), timeout=60
    )

    def listen() -> None:
        try:
            for note in stream:
                notes.append(note)
                if len(notes) == 3:
                    return
        except grpc.RpcError:
            return

    listener = threading.Thread(target=listen)
    listener.start()
    time.sleep(0.5)  # let the subscription register before the first change

    doc = {"id": "interop-bp", "name": "Interop", "steps": [1]}
    r = hub.peerctl("publish", str(write(tmp_path / "a.json", doc)), "--meta", "team=qa")
    assert r.returncode == 0, r.stderr
    doc["steps"] = [1, 2]
    r = hub.peerctl("publish", str(write(tmp_path / "a.json", doc)), "--meta", "team=ops")
    assert r.returncode == 0, r.stderr
    r = hub.peerctl("deprecate", "interop-bp")
    assert r.returncode == 0, r.stderr

    listener.join(timeout=20)
    stream.cancel()
    assert [(n.blueprint_id, n.type, n.sequence_number) for n in notes] == [
        ("interop-bp", pb2.X_NOTE_PUBLISHED, 1),
        ("interop-bp", pb2.X_NOTE_UPDATED, 2),
        ("interop-bp", pb2.X_NOTE_DEPRECATED, 3),
    ]
    assert [n.version for n in notes] == [start + 1, start + 2, start + 3]
    assert all(n.checksum.startswith("sha256:") for n in notes)

    full = list(sync.FullSync(pb2.XSync(peer_id="interop-1"), timeout=10))
    ids = [e.blueprint_id for e in full]
    assert "register-creation-v1" in ids and "interop-bp" not in ids
    seeded = full[ids.index("register-creation-v1")]
    assert dict(seeded.metadata) == {
        "category": "register",
        "type": "creation",
        "isDefault": "true",
    }
    assert seeded.register_id == "00000000-0000-0000-0000-000000000000"

    inc = list(
        sync.IncrementalSync(
            pb2.XSync(peer_id="interop-1", last_known_version=start, session_id=hello.session_id),
            timeout=10,
        )
    )
    assert [(e.blueprint_id, e.version, e.is_active) for e in inc] == [
        ("interop-bp", start + 3, False)
    ]
    assert dict(inc[0].metadata) == {"team": "ops"}  # the update's, kept by the deprecation

    ack = beat.SendHeartbeat(
        pb2.XBeat(
            peer_id="interop-1",
            session_id=hello.session_id,
            timestamp=now_ms(),
            last_sync_version=start,
        ),
        timeout=10,
    )
    assert ack.recommended_action == pb2.X_ACTION_SYNC
    ack = beat.SendHeartbeat(
        pb2.XBeat(
            peer_id="interop-1",
            session_id=hello.session_id,
            timestamp=now_ms(),
            last_sync_version=start + 3,
        ),
        timeout=10,
    )
    assert ack.recommended_action == pb2.X_ACTION_NONE and ack.success

    checkpoint = sync.GetSyncCheckpoint(
        pb2.XCheckpointQuery(peer_id="interop-1", session_id=hello.session_id), timeout=10
    )
    assert checkpoint.current_version == start + 3 and checkpoint.central_node_id == "n0"
    status = conn.GetCentralNodeStatus(pb2.XStatusQuery(include_peer_list=True), timeout=10)
    assert status.health == pb2.X_HEALTH_HEALTHY and status.active_peer_count >= 1
    assert status.current_system_register_version == start + 3


def test_bad_requests_get_the_documented_status_codes(
    channel: grpc.Channel, x: tuple[ModuleType, ModuleType]
) -> None:
    pb2, pb2_grpc = x
    conn = pb2_grpc.CentralNodeConnectionStub(channel)
    sync = pb2_grpc.SystemRegisterSyncStub(channel)
    beat = pb2_grpc.HeartbeatStub(channel)
    invalid = grpc.StatusCode.INVALID_ARGUMENT

    assert (
        code(lambda: conn.ConnectToCentralNode(pb2.XConnect(peer_id="not a valid id!"), timeout=10))
        == invalid
    )
    assert (
        code(lambda: conn.ConnectToCentralNode(pb2.XConnect(peer_id="x" * 65), timeout=10))
        == invalid
    )
    assert (
        code(
            lambda: conn.ConnectToCentralNode(
                pb2.XConnect(peer_id="n1", peer_info=pb2.XPeer(node_type="Central")), timeout=10
            )
        )
        == grpc.StatusCode.FAILED_PRECONDITION
    )
    assert (
        code(lambda: list(sync.FullSync(pb2.XSync(peer_id="p", max_blueprints=-1), timeout=10)))
        == invalid
    )
    assert (
        code(
            lambda: list(
                sync.IncrementalSync(pb2.XSync(peer_id="p", last_known_version=-1), timeout=10)
            )
        )
        == invalid
    )
    assert (
        code(
            lambda: beat.SendHeartbeat(
                pb2.XBeat(peer_id="p", session_id="s", timestamp=now_ms() - 120_000), timeout=10
            )
        )
        == invalid
    )
    assert (
        code(
            lambda: sync.GetSyncCheckpoint(
                pb2.XCheckpointQuery(peer_id="p", session_id="nope"), timeout=10
            )
        )
        == grpc.StatusCode.NOT_FOUND
    )
    unknown = beat.SendHeartbeat(
        pb2.XBeat(peer_id="p", session_id="nope", timestamp=now_ms()), timeout=10
    )
    assert unknown.recommended_action == pb2.X_ACTION_RECONNECT and not unknown.success
    # a request that is not valid protobuf for its method
    raw = channel.unary_unary(
        "/sorcha.peer.v1.CentralNodeConnection/ConnectToCentralNode",
        request_serializer=None,
        response_deserializer=None,
    )
    assert code(lambda: raw(b"\x0a\x09ab", timeout=10)) == invalid
