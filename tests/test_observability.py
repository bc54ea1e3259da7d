"""Every metric and span name of the seed, after a sync, a push and a failover.

In process: two hubs on one register and a peer whose telemetry writes spans
to an in-memory exporter. As an operator: real daemons, read back with
``sorcha-peerctl metrics``.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import trio
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from sorcha_peerd.peer.link import HubEndpoint, LinkState
from sorcha_peerd.peer.node import Peer
from sorcha_peerd.peer.replica import Replica
from sorcha_peerd.peer.session import PeerTiming
from sorcha_peerd.register import Limits
from sorcha_peerd.store.sqlite import SqliteRegisterStore
from sorcha_peerd.telemetry import HUB_METRICS, PEER_METRICS, SPAN_NAMES, Telemetry
from tests.hub.hub_harness import running_hub
from tests.peer.test_peer_daemon import Net, free_port, peer_is, publish, wait_for
from tests.test_telemetry import ISSUE_METRICS, ISSUE_SPANS
from tests.waiting import wait_until

SEED_METRICS = set(ISSUE_METRICS)  # spelled out once, in tests/test_telemetry.py
SEED_SPANS = ISSUE_SPANS


def test_the_names_are_the_seeds() -> None:
    assert SEED_METRICS <= set(PEER_METRICS)
    assert set(SPAN_NAMES) == SEED_SPANS


async def test_every_metric_and_span_after_sync_push_and_failover(tmp_path: Path) -> None:
    spans = InMemorySpanExporter()
    telemetry = Telemetry("sorcha-peerd", "p1", "peer", span_exporter=spans)
    register = tmp_path / "hubs.sqlite3"
    async with (
        SqliteRegisterStore(register, poll_interval=0.05) as store1,
        SqliteRegisterStore(register, poll_interval=0.05) as store2,
        running_hub(store1, node_id="h1") as h1,
        running_hub(store2, node_id="h2") as h2,
        SqliteRegisterStore(tmp_path / "peer.sqlite3") as replica_store,
        trio.open_nursery() as nursery,
    ):
        await store1.publish("first", b'{"id": "first"}', published_by="t")
        replica = Replica(replica_store)
        await replica.load()
        timing = PeerTiming(
            heartbeat_interval=0.2,
            heartbeat_timeout=0.2,
            missed_for_failover=2,
            sync_interval=300.0,
            call_timeout=5.0,
            page_size=50,
        )
        hubs = [HubEndpoint("h1", "127.0.0.1", h1.port), HubEndpoint("h2", "127.0.0.1", h2.port)]
        peer = Peer(
            "p1",
            hubs,
            replica,
            timing,
            2.0,
            Limits(),
            rng=random.Random(1),
            backoff_initial=0.05,
            backoff_max=0.2,
            telemetry=telemetry,
        )
        await nursery.start(peer.run)
        await wait_until(lambda: peer.in_sync and peer.state.push_up, timeout=10)
        # a push
        await store1.publish("pushed", b'{"id": "pushed"}', published_by="t")
        await wait_until(lambda: replica.view.snapshot.get("pushed") is not None, timeout=10)
        # a failover: h1 drains
        h1.service.drain()
        await wait_until(
            lambda: peer.link.current is not None and peer.link.current.id == "h2", timeout=10
        )
        await wait_until(lambda: peer.link.state is LinkState.CONNECTED and peer.in_sync)
        await trio.sleep(0.5)  # a heartbeat or two on h2
        snapshot = telemetry.metrics_snapshot()
        hub_snapshot = h2.service.telemetry.metrics_snapshot()
        nursery.cancel_scope.cancel()

    for name in SEED_METRICS:
        assert snapshot[name]["points"], f"{name} has no data"
    assert snapshot["peer.connection.status"]["points"][0]["value"] == 1  # connected
    failovers = snapshot["peer.failover.count"]["points"]
    assert sum(p["value"] for p in failovers) >= 1
    assert any(p["attributes"].get("sorcha.failover.to") == "h2" for p in failovers)
    kinds = {p["attributes"]["sorcha.sync.kind"] for p in snapshot["peer.sync.duration"]["points"]}
    assert kinds == {"full", "incremental"}
    failed = snapshot["peer.push.notifications.failed"]["points"]
    assert any(p["attributes"].get("sorcha.failure.reason") == "stream_failed" for p in failed)
    for name in HUB_METRICS:
        assert name in hub_snapshot
    assert hub_snapshot["hub.peers.connected"]["points"][0]["value"] == 1

    names = {span.name for span in spans.get_finished_spans()}
    assert names >= SEED_SPANS, f"missing spans: {SEED_SPANS - names}"


def test_sorcha_peerctl_metrics_shows_them(tmp_path: Path) -> None:
    net = Net(tmp_path)
    try:
        register = tmp_path / "shared"
        p1, p2 = free_port(), free_port()
        h1 = net.hub("h1", p1, register)
        h2 = net.hub("h2", p2, register)
        peer = net.peer("p1", {"h1": p1, "h2": p2})
        wait_for("on h1", peer_is(peer, status="connected", hub="h1", in_sync=True))
        publish(h1, tmp_path, "pushed")
        wait_for("pushed", lambda: peer.peerctl("get", "pushed").returncode == 0)
        assert h1.stop() == 0
        wait_for("on h2", peer_is(peer, status="connected", hub="h2", in_sync=True))
        wait_for(
            "a heartbeat on h2",
            lambda: (
                json.loads(peer.peerctl("metrics", "--json").stdout)["peer.heartbeat.latency"][
                    "points"
                ]
                != []
            ),
        )

        as_json = peer.peerctl("metrics", "--json")
        assert as_json.returncode == 0, as_json.stderr
        metrics = json.loads(as_json.stdout)
        for name in SEED_METRICS:
            assert metrics[name]["points"], f"{name} has no data"
        text = peer.peerctl("metrics")
        assert text.returncode == 0
        for name in SEED_METRICS:
            assert name in text.stdout
        hub_metrics = json.loads(h2.peerctl("metrics", "--json").stdout)
        assert hub_metrics["hub.publishes.count"]["points"] and "hub.peers.connected" in hub_metrics
    finally:
        net.stop_all()
