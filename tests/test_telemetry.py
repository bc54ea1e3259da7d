"""Telemetry: every metric and span name of the issue, read back in-process.

Metrics are read through :meth:`Telemetry.metrics_snapshot` (the in-memory
reader every daemon has, which ``sorcha-peerctl metrics`` shows); spans through
an in-memory span exporter. The OTLP path is tested against a loopback HTTP
server when the optional exporter package is installed, and for its clear
error when it is not.
"""

from __future__ import annotations

import http.server
import json
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from sorcha_peerd import telemetry as telemetry_module
from sorcha_peerd.config import load_settings
from sorcha_peerd.telemetry import (
    CONNECTION_STATUS_CODES,
    HUB_METRICS,
    PEER_METRICS,
    SPAN_CONNECT,
    SPAN_FAILOVER,
    SPAN_HEARTBEAT,
    SPAN_NAMES,
    SPAN_NOTIFICATION,
    SPAN_SYNC_FULL,
    SPAN_SYNC_INCREMENTAL,
    Telemetry,
    TelemetryConfigError,
    format_metrics,
)

#: The names the issue asks for, spelled out rather than taken from the module.
ISSUE_METRICS = {
    "peer.connection.status": "gauge",
    "peer.heartbeat.latency": "histogram",
    "peer.sync.duration": "histogram",
    "peer.sync.blueprints.count": "counter",
    "peer.push.notifications.delivered": "counter",
    "peer.push.notifications.failed": "counter",
    "peer.failover.count": "counter",
}
ISSUE_SPANS = {
    "peer.connection.connect",
    "peer.connection.failover",
    "peer.sync.full",
    "peer.sync.incremental",
    "peer.heartbeat.send",
    "peer.notification.receive",
}
HUB_METRIC_KINDS = {
    "hub.peers.connected": "gauge",
    "hub.subscriptions.active": "gauge",
    "hub.publishes.count": "counter",
}


@pytest.fixture
def spans() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def peer(spans: InMemorySpanExporter) -> Iterator[Telemetry]:
    t = Telemetry("sorcha-peerd", "p1", "peer", span_exporter=spans)
    yield t
    t.shutdown()


def points(snapshot: dict[str, Any], name: str) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = snapshot[name]["points"]
    return result


def only_value(snapshot: dict[str, Any], name: str) -> Any:
    (point,) = points(snapshot, name)
    return point["value"]


def a_peer_session(t: Telemetry) -> None:
    """What a peer records over a connect, syncs, a push, a heartbeat and a failover."""
    with t.span(SPAN_CONNECT, **{"sorcha.hub.id": "n0"}):
        t.set_connection_status("connected", hub="n0")
    with t.span(SPAN_SYNC_FULL, **{"sorcha.hub.id": "n0"}):
        t.record_sync("full", 0.25, 3, hub="n0")
    with t.span(SPAN_SYNC_INCREMENTAL, **{"sorcha.hub.id": "n0"}):
        t.record_sync("incremental", 0.01, 0, hub="n0")
    with t.span(SPAN_HEARTBEAT):
        t.record_heartbeat_latency(0.004, hub="n0")
    with t.span(SPAN_NOTIFICATION, **{"sorcha.register.version": 7}):
        t.notification_delivered(hub="n0")
    t.notification_failed("sequence_gap", hub="n0")
    with t.span(SPAN_FAILOVER, **{"sorcha.hub.id": "n0", "sorcha.failover.to": "n1"}):
        t.failover("n0", "n1", "missed_heartbeats")
        t.set_connection_status("connected", hub="n1")


# ---------------------------------------------------------------- metrics


def test_every_metric_name_is_read_after_sync_push_and_failover(peer: Telemetry) -> None:
    a_peer_session(peer)
    snap = peer.metrics_snapshot()
    for name, kind in {**ISSUE_METRICS, **HUB_METRIC_KINDS}.items():
        assert name in snap, name
        assert snap[name]["type"] == kind, name
        assert snap[name]["unit"] and snap[name]["description"], name
    assert set(PEER_METRICS) == set(ISSUE_METRICS)
    assert set(HUB_METRICS) == set(HUB_METRIC_KINDS)
    for name in ISSUE_METRICS:
        assert points(snap, name), f"{name} has no data points"

    assert points(snap, "peer.connection.status") == [
        {"attributes": {"sorcha.hub.id": "n1"}, "value": CONNECTION_STATUS_CODES["connected"]}
    ]
    (latency,) = points(snap, "peer.heartbeat.latency")
    assert latency["count"] == 1 and latency["sum"] == pytest.approx(0.004)
    assert latency["min"] == latency["max"] == pytest.approx(0.004)
    assert sum(latency["bucket_counts"]) == 1
    assert len(latency["bucket_counts"]) == len(latency["bounds"]) + 1
    assert snap["peer.heartbeat.latency"]["unit"] == "s"

    durations = {p["attributes"]["sorcha.sync.kind"]: p for p in points(snap, "peer.sync.duration")}
    assert durations["full"]["count"] == 1 and durations["full"]["sum"] == pytest.approx(0.25)
    assert durations["incremental"]["count"] == 1
    blueprints = {
        p["attributes"]["sorcha.sync.kind"]: p["value"]
        for p in points(snap, "peer.sync.blueprints.count")
    }
    assert blueprints == {"full": 3, "incremental": 0}

    assert only_value(snap, "peer.push.notifications.delivered") == 1
    (failed,) = points(snap, "peer.push.notifications.failed")
    assert failed == {
        "attributes": {"sorcha.failure.reason": "sequence_gap", "sorcha.hub.id": "n0"},
        "value": 1,
    }
    (failover,) = points(snap, "peer.failover.count")
    assert failover == {
        "attributes": {
            "sorcha.hub.id": "n0",
            "sorcha.failover.to": "n1",
            "sorcha.failover.reason": "missed_heartbeats",
        },
        "value": 1,
    }
    # a peer reports no hub gauges
    assert points(snap, "hub.peers.connected") == []
    json.dumps(snap)  # what `sorcha-peerctl metrics --json` prints


def test_counters_accumulate_and_gauges_survive_repeated_reads(peer: Telemetry) -> None:
    assert only_value(peer.metrics_snapshot(), "peer.connection.status") == 0  # connecting
    for _ in range(3):
        peer.notification_delivered()
    peer.set_connection_status("isolated")
    first = peer.metrics_snapshot()
    second = peer.metrics_snapshot()
    for snap in (first, second):
        assert only_value(snap, "peer.push.notifications.delivered") == 3
        assert only_value(snap, "peer.connection.status") == 2
    peer.failover("n0", None, "hub_draining")
    (point,) = points(peer.metrics_snapshot(), "peer.failover.count")
    assert point["attributes"]["sorcha.failover.to"] == "none"


def test_hub_metrics() -> None:
    hub = Telemetry("sorcha-peerd", "n0", "hub")
    try:
        snap = hub.metrics_snapshot()
        assert only_value(snap, "hub.peers.connected") == 0
        assert only_value(snap, "hub.subscriptions.active") == 0
        assert points(snap, "peer.connection.status") == []
        hub.set_hub_peers_connected(4)
        hub.set_hub_subscriptions_active(3)
        hub.hub_published(2)
        hub.hub_published()
        snap = hub.metrics_snapshot()
        assert only_value(snap, "hub.peers.connected") == 4
        assert only_value(snap, "hub.subscriptions.active") == 3
        assert only_value(snap, "hub.publishes.count") == 3
    finally:
        hub.shutdown()


def test_bad_recordings_are_refused(peer: Telemetry) -> None:
    with pytest.raises(ValueError, match="unknown connection state"):
        peer.set_connection_status("online")
    with pytest.raises(ValueError, match="sync kind"):
        peer.record_sync("partial", 1.0, 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="blueprints"):
        peer.record_sync("full", 1.0, -1)
    with pytest.raises(ValueError, match="duration"):
        peer.record_heartbeat_latency(float("nan"))
    with pytest.raises(ValueError, match="count"):
        peer.hub_published(-1)


def test_two_telemetry_objects_share_nothing() -> None:
    a_spans, b_spans = InMemorySpanExporter(), InMemorySpanExporter()
    a = Telemetry("sorcha-peerd", "p1", "peer", span_exporter=a_spans)
    b = Telemetry("sorcha-peerd", "p2", "peer", span_exporter=b_spans)
    try:
        a.notification_delivered()
        a.set_connection_status("connected")
        with a.span(SPAN_HEARTBEAT):
            pass
        assert only_value(a.metrics_snapshot(), "peer.push.notifications.delivered") == 1
        b_snap = b.metrics_snapshot()
        assert points(b_snap, "peer.push.notifications.delivered") == []
        assert only_value(b_snap, "peer.connection.status") == 0
        assert len(a_spans.get_finished_spans()) == 1
        assert b_spans.get_finished_spans() == ()
        (span,) = a_spans.get_finished_spans()
        assert span.resource.attributes["service.instance.id"] == "p1"
    finally:
        a.shutdown()
        b.shutdown()


def test_format_metrics_one_line_per_point(peer: Telemetry) -> None:
    a_peer_session(peer)
    lines = format_metrics(peer.metrics_snapshot())
    text = "\n".join(lines)
    assert "peer.connection.status{sorcha.hub.id=n1} 1 {state} (connected)" in lines
    assert "peer.push.notifications.delivered{sorcha.hub.id=n0} 1 {notification}" in lines
    assert "peer.sync.blueprints.count{sorcha.hub.id=n0,sorcha.sync.kind=full} 3" in text
    latency = "peer.heartbeat.latency{sorcha.hub.id=n0} count=1 sum=0.004 min=0.004 max=0.004 s"
    assert latency in lines
    assert "hub.publishes.count (no data)" in lines
    for name in ISSUE_METRICS:
        assert any(line.startswith(name) for line in lines), name
    # two sync kinds: two lines for each sync metric
    assert sum(line.startswith("peer.sync.duration{") for line in lines) == 2
    # peerctl formats the snapshot it received as JSON from the control socket
    assert format_metrics(json.loads(json.dumps(peer.metrics_snapshot()))) == lines


# ---------------------------------------------------------------- spans


def test_every_span_name_is_exported(peer: Telemetry, spans: InMemorySpanExporter) -> None:
    assert set(SPAN_NAMES) == ISSUE_SPANS
    a_peer_session(peer)
    finished = spans.get_finished_spans()
    assert {s.name for s in finished} == ISSUE_SPANS
    for s in finished:
        assert s.status.status_code is StatusCode.UNSET
        assert s.end_time is not None
        assert s.resource.attributes["service.name"] == "sorcha-peerd"
        assert s.resource.attributes["service.instance.id"] == "p1"
        assert s.resource.attributes["sorcha.role"] == "peer"
    (failover,) = (s for s in finished if s.name == SPAN_FAILOVER)
    assert dict(failover.attributes or {}) == {"sorcha.hub.id": "n0", "sorcha.failover.to": "n1"}


def test_exception_marks_span_as_error(peer: Telemetry, spans: InMemorySpanExporter) -> None:
    with pytest.raises(ConnectionError), peer.span(SPAN_CONNECT, hub=None):
        raise ConnectionError("hub n0 unreachable")
    (span,) = spans.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "ConnectionError: hub n0 unreachable"
    assert [e.name for e in span.events] == ["exception"]
    assert dict(span.attributes or {}) == {}  # None attributes are dropped


async def test_cancellation_is_not_an_error(peer: Telemetry, spans: InMemorySpanExporter) -> None:
    with trio.move_on_after(0.01), peer.span(SPAN_SYNC_INCREMENTAL):
        await trio.sleep_forever()
    (span,) = spans.get_finished_spans()
    assert span.status.status_code is StatusCode.UNSET
    assert [e.name for e in span.events] == ["cancelled"]


async def test_spans_in_concurrent_trio_tasks_stay_apart(
    peer: Telemetry, spans: InMemorySpanExporter
) -> None:
    async def heartbeat() -> None:
        with peer.span(SPAN_HEARTBEAT):
            await trio.sleep(0.01)

    async def sync() -> None:
        with peer.span(SPAN_SYNC_FULL) as parent:
            await trio.sleep(0.005)
            with peer.span(SPAN_NOTIFICATION, parent=parent):
                await trio.sleep(0.01)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(heartbeat)
        nursery.start_soon(sync)
    by_name = {s.name: s for s in spans.get_finished_spans()}
    assert by_name[SPAN_HEARTBEAT].parent is None
    assert by_name[SPAN_SYNC_FULL].parent is None
    child = by_name[SPAN_NOTIFICATION]
    assert child.parent is not None
    assert child.parent.span_id == by_name[SPAN_SYNC_FULL].context.span_id
    assert child.context.trace_id == by_name[SPAN_SYNC_FULL].context.trace_id


# ---------------------------------------------------------------- configuration and exporters


def test_from_settings(tmp_path: Path) -> None:
    settings = load_settings(
        {"node.id": "n3", "node.role": "hub"},
        env={},
        hostname="host.example.org",
        cwd=tmp_path,
        system_paths=(),
    )
    t = Telemetry.from_settings(settings)
    try:
        assert t.exporter == "none"
        assert t.resource.attributes["service.instance.id"] == "n3"
        assert t.resource.attributes["sorcha.role"] == "hub"
        assert only_value(t.metrics_snapshot(), "hub.peers.connected") == 0
    finally:
        t.shutdown()


def test_unknown_exporter_is_refused() -> None:
    with pytest.raises(TelemetryConfigError, match="unknown telemetry exporter 'zipkin'"):
        Telemetry("sorcha-peerd", "p1", "peer", exporter="zipkin")


def test_otlp_without_the_package_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    for module in telemetry_module._OTLP_MODULES:
        monkeypatch.setitem(sys.modules, module, None)  # makes `import` fail
    with pytest.raises(TelemetryConfigError, match=r"install sorcha-peerd\[otlp\]"):
        Telemetry("sorcha-peerd", "p1", "peer", exporter="otlp")


def test_shutdown_is_bounded_and_idempotent(
    peer: Telemetry, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()
    finished: list[bool] = []

    def stuck(timeout_millis: int = 30000) -> bool:
        release.wait(30)
        finished.append(True)
        return False

    monkeypatch.setattr(peer._tracer_provider, "force_flush", stuck)
    assert peer.shutdown(timeout=0.2) is False
    assert finished == []  # it gave up on the flush rather than waiting for it
    release.set()
    assert peer.shutdown() is True  # already done
    assert points(peer.metrics_snapshot(), "peer.failover.count") == []


async def test_aclose_from_trio(peer: Telemetry) -> None:
    with trio.fail_after(5):
        assert await peer.aclose() is True


class _Collector(http.server.BaseHTTPRequestHandler):
    """A stand-in OTLP/HTTP collector: remembers which paths were posted to."""

    received: list[str]

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        self.rfile.read(length)
        self.received.append(self.path)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def collector() -> Iterator[tuple[str, list[str]]]:
    received: list[str] = []
    handler = type("Handler", (_Collector,), {"received": received})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()
        server.server_close()


def test_otlp_exports_to_the_configured_endpoint(collector: tuple[str, list[str]]) -> None:
    pytest.importorskip("opentelemetry.exporter.otlp.proto.http.metric_exporter")
    endpoint, received = collector
    t = Telemetry("sorcha-peerd", "p1", "peer", exporter="otlp", endpoint=endpoint)
    a_peer_session(t)
    # the local reading works whatever the exporter
    assert only_value(t.metrics_snapshot(), "peer.failover.count") == 1
    assert t.shutdown(timeout=10) is True
    assert "/v1/traces" in received
    assert "/v1/metrics" in received
