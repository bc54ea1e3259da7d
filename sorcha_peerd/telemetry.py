"""OpenTelemetry metrics and spans of one daemon, readable locally whatever the exporter.

Why it is shaped like this:

- One :class:`Telemetry` per daemon owns its own SDK ``MeterProvider`` and
  ``TracerProvider``; nothing is installed as OpenTelemetry's global provider,
  so tests (and a hub and a peer in one process) can hold several side by side
  without sharing a single value.
- An ``InMemoryMetricReader`` is always attached, so the control socket
  (``sorcha-peerctl metrics [--json]``) reads the current values from
  :meth:`Telemetry.metrics_snapshot` even when nothing is exported. With
  ``exporter = "otlp"`` metrics and spans are additionally pushed over OTLP/HTTP;
  that exporter is an optional extra (``pip install 'sorcha-peerd[otlp]'``),
  imported only when asked for.
- Gauges are *observable*: the daemon sets plain values (thread-safe single
  assignments) and the SDK reads them at each collection. The SDK's synchronous
  gauge forgets its value after one collection, which would make a second
  ``sorcha-peerctl metrics`` show no connection status at all.
- Spans never touch the current context (no ``start_as_current_span``, no
  ``attach``): in trio, a span that is "current" in one task is invisible in the
  tasks it starts and can leak across a ``with`` that spans a checkpoint. A span
  is started explicitly, optionally under an explicit ``parent``, and ended in
  the same ``with``.

Metric names, units and encodings (see docs/configuration.md, ``[telemetry]``):

=================================== ========= ============== ===========================
name                                kind      unit           attributes
=================================== ========= ============== ===========================
peer.connection.status              gauge     {state}        sorcha.hub.id (if known)
peer.heartbeat.latency              histogram s              sorcha.hub.id
peer.sync.duration                  histogram s              sorcha.sync.kind, hub id
peer.sync.blueprints.count          counter   {blueprint}    sorcha.sync.kind, hub id
peer.push.notifications.delivered   counter   {notification} sorcha.hub.id
peer.push.notifications.failed      counter   {notification} sorcha.failure.reason, hub
peer.failover.count                 counter   {failover}     sorcha.hub.id (from), reason,
                                                             sorcha.failover.to
hub.peers.connected                 gauge     {peer}
hub.subscriptions.active            gauge     {subscription}
hub.publishes.count                 counter   {blueprint}
=================================== ========= ============== ===========================

``peer.connection.status`` encodes the link state: 0 connecting, 1 connected,
2 isolated (:data:`CONNECTION_STATUS_CODES`).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import math
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Final, Literal

import attrs
import trio
from opentelemetry import metrics as otel_metrics
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    Gauge,
    Histogram,
    HistogramDataPoint,
    InMemoryMetricReader,
    MetricExporter,
    MetricReader,
    NumberDataPoint,
    PeriodicExportingMetricReader,
    Sum,
)
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.trace import Span, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from sorcha_peerd import __version__

if TYPE_CHECKING:
    from sorcha_peerd.config import Settings

__all__ = [
    "ATTR_FAILOVER_REASON",
    "ATTR_FAILOVER_TO",
    "ATTR_FAILURE_REASON",
    "ATTR_HUB",
    "ATTR_SYNC_KIND",
    "CONNECTION_STATUS_CODES",
    "EXPORTERS",
    "HUB_METRICS",
    "METRIC_FAILOVER_COUNT",
    "METRIC_HEARTBEAT_LATENCY",
    "METRIC_HUB_PEERS_CONNECTED",
    "METRIC_HUB_PUBLISHES",
    "METRIC_HUB_SUBSCRIPTIONS_ACTIVE",
    "METRIC_NOTIFICATIONS_DELIVERED",
    "METRIC_NOTIFICATIONS_FAILED",
    "METRIC_PEER_CONNECTION_STATUS",
    "METRIC_SYNC_BLUEPRINTS",
    "METRIC_SYNC_DURATION",
    "OTLP_EXTRA_HINT",
    "PEER_METRICS",
    "SPAN_CONNECT",
    "SPAN_FAILOVER",
    "SPAN_HEARTBEAT",
    "SPAN_NAMES",
    "SPAN_NOTIFICATION",
    "SPAN_SYNC_FULL",
    "SPAN_SYNC_INCREMENTAL",
    "Telemetry",
    "TelemetryConfigError",
    "format_metrics",
]

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- names

METRIC_PEER_CONNECTION_STATUS: Final = "peer.connection.status"
METRIC_HEARTBEAT_LATENCY: Final = "peer.heartbeat.latency"
METRIC_SYNC_DURATION: Final = "peer.sync.duration"
METRIC_SYNC_BLUEPRINTS: Final = "peer.sync.blueprints.count"
METRIC_NOTIFICATIONS_DELIVERED: Final = "peer.push.notifications.delivered"
METRIC_NOTIFICATIONS_FAILED: Final = "peer.push.notifications.failed"
METRIC_FAILOVER_COUNT: Final = "peer.failover.count"
METRIC_HUB_PEERS_CONNECTED: Final = "hub.peers.connected"
METRIC_HUB_SUBSCRIPTIONS_ACTIVE: Final = "hub.subscriptions.active"
METRIC_HUB_PUBLISHES: Final = "hub.publishes.count"

PEER_METRICS: Final = (
    METRIC_PEER_CONNECTION_STATUS,
    METRIC_HEARTBEAT_LATENCY,
    METRIC_SYNC_DURATION,
    METRIC_SYNC_BLUEPRINTS,
    METRIC_NOTIFICATIONS_DELIVERED,
    METRIC_NOTIFICATIONS_FAILED,
    METRIC_FAILOVER_COUNT,
)
HUB_METRICS: Final = (
    METRIC_HUB_PEERS_CONNECTED,
    METRIC_HUB_SUBSCRIPTIONS_ACTIVE,
    METRIC_HUB_PUBLISHES,
)

SPAN_CONNECT: Final = "peer.connection.connect"
SPAN_FAILOVER: Final = "peer.connection.failover"
SPAN_SYNC_FULL: Final = "peer.sync.full"
SPAN_SYNC_INCREMENTAL: Final = "peer.sync.incremental"
SPAN_HEARTBEAT: Final = "peer.heartbeat.send"
SPAN_NOTIFICATION: Final = "peer.notification.receive"
SPAN_NAMES: Final = (
    SPAN_CONNECT,
    SPAN_FAILOVER,
    SPAN_SYNC_FULL,
    SPAN_SYNC_INCREMENTAL,
    SPAN_HEARTBEAT,
    SPAN_NOTIFICATION,
)

#: ``peer.connection.status`` values: the link states of ``peer.link.LinkState``.
CONNECTION_STATUS_CODES: Final[Mapping[str, int]] = {
    "connecting": 0,
    "connected": 1,
    "isolated": 2,
}
_STATUS_NAMES: Final = {code: name for name, code in CONNECTION_STATUS_CODES.items()}

#: The ``[telemetry] exporter`` values.
EXPORTERS: Final = ("none", "otlp")
Exporter = Literal["none", "otlp"]
SyncKind = Literal["full", "incremental"]

#: Attribute keys (for spans: ``telemetry.span(SPAN_CONNECT, **{ATTR_HUB: hub_id})``).
ATTR_HUB: Final = "sorcha.hub.id"
ATTR_SYNC_KIND: Final = "sorcha.sync.kind"
ATTR_FAILOVER_REASON: Final = "sorcha.failover.reason"
ATTR_FAILOVER_TO: Final = "sorcha.failover.to"
ATTR_FAILURE_REASON: Final = "sorcha.failure.reason"

OTLP_EXTRA_HINT: Final = (
    'telemetry.exporter = "otlp" needs the OTLP exporter package '
    "(opentelemetry-exporter-otlp-proto-http): install sorcha-peerd[otlp]"
)

#: Heartbeat round trips: a millisecond on a LAN up to the 30 s default timeout.
_HEARTBEAT_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
#: Syncs: an empty incremental sync up to a full sync of a large register.
_SYNC_BUCKETS: Final = (
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
)  # fmt: skip

_OTLP_MODULES: Final = (
    "opentelemetry.exporter.otlp.proto.http.metric_exporter",
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
)


class TelemetryConfigError(Exception):
    """Telemetry cannot start as configured (unknown exporter, exporter package missing)."""


@attrs.frozen
class _Instrument:
    name: str
    kind: Literal["counter", "gauge", "histogram"]
    unit: str
    description: str


_INSTRUMENTS: Final = (
    _Instrument(
        METRIC_PEER_CONNECTION_STATUS,
        "gauge",
        "{state}",
        "Link to the hub: 0 connecting, 1 connected, 2 isolated",
    ),
    _Instrument(
        METRIC_HEARTBEAT_LATENCY,
        "histogram",
        "s",
        "Round trip of a heartbeat to the hub, in seconds",
    ),
    _Instrument(METRIC_SYNC_DURATION, "histogram", "s", "Duration of a sync, in seconds"),
    _Instrument(
        METRIC_SYNC_BLUEPRINTS,
        "counter",
        "{blueprint}",
        "Blueprints received by syncs",
    ),
    _Instrument(
        METRIC_NOTIFICATIONS_DELIVERED,
        "counter",
        "{notification}",
        "Push notifications received and applied",
    ),
    _Instrument(
        METRIC_NOTIFICATIONS_FAILED,
        "counter",
        "{notification}",
        "Push stream failures and notification sequence gaps (each forces a catch-up sync)",
    ),
    _Instrument(METRIC_FAILOVER_COUNT, "counter", "{failover}", "Failovers to another hub"),
    _Instrument(METRIC_HUB_PEERS_CONNECTED, "gauge", "{peer}", "Peer sessions this hub holds"),
    _Instrument(
        METRIC_HUB_SUBSCRIPTIONS_ACTIVE,
        "gauge",
        "{subscription}",
        "Open push subscriptions on this hub",
    ),
    _Instrument(
        METRIC_HUB_PUBLISHES,
        "counter",
        "{blueprint}",
        "Blueprints published to the register and fanned out to this hub's subscribers",
    ),
)
_BY_NAME: Final = {i.name: i for i in _INSTRUMENTS}


def _attributes(values: Mapping[str, str | None]) -> dict[str, AttributeValue]:
    """Attributes with the unknown (None) ones left out."""
    return {key: v for key, v in values.items() if v is not None}


def _load_otlp(endpoint: str | None, timeout: float) -> tuple[MetricExporter, SpanExporter]:
    """The OTLP/HTTP exporters, imported only now: the package is an optional extra.

    ``endpoint`` is the collector's base URL (as ``OTEL_EXPORTER_OTLP_ENDPOINT``);
    None leaves the exporters to their own default and ``OTEL_EXPORTER_OTLP_*``.
    """
    try:
        metric_module, trace_module = (importlib.import_module(m) for m in _OTLP_MODULES)
    except ImportError as exc:
        raise TelemetryConfigError(f"{OTLP_EXTRA_HINT} ({exc})") from None
    base = endpoint.rstrip("/") if endpoint else None
    metric_exporter: MetricExporter = metric_module.OTLPMetricExporter(
        endpoint=f"{base}/v1/metrics" if base else None, timeout=timeout
    )
    span_exporter: SpanExporter = trace_module.OTLPSpanExporter(
        endpoint=f"{base}/v1/traces" if base else None, timeout=timeout
    )
    return metric_exporter, span_exporter


class Telemetry:
    """The metrics and spans of one daemon (a hub or a peer).

    Recording methods are cheap and never raise for a valid argument; call them
    from trio tasks freely. Values are also read by an OTLP export thread, so
    gauge state is kept as plain attributes replaced in one assignment.
    """

    def __init__(
        self,
        service_name: str,
        node_id: str,
        role: str,
        *,
        exporter: str = "none",
        endpoint: str | None = None,
        span_exporter: SpanExporter | None = None,
        export_interval: float = 60.0,
        export_timeout: float = 10.0,
    ) -> None:
        if exporter not in EXPORTERS:
            raise TelemetryConfigError(
                f"unknown telemetry exporter {exporter!r}: must be one of {', '.join(EXPORTERS)}"
            )
        self.role = role
        self.exporter = exporter
        self._shutdown_done = False
        self.resource = Resource.create(
            {"service.name": service_name, "service.instance.id": node_id, "sorcha.role": role}
        )

        self._reader = InMemoryMetricReader()
        readers: list[MetricReader] = [self._reader]
        otlp_spans: SpanExporter | None = None
        if exporter == "otlp":
            otlp_metrics, otlp_spans = _load_otlp(endpoint, export_timeout)
            readers.append(
                PeriodicExportingMetricReader(
                    otlp_metrics,
                    export_interval_millis=export_interval * 1000,
                    export_timeout_millis=export_timeout * 1000,
                )
            )
        self._meter_provider = MeterProvider(
            resource=self.resource,
            metric_readers=readers,
            views=[
                View(
                    instrument_name=METRIC_HEARTBEAT_LATENCY,
                    aggregation=ExplicitBucketHistogramAggregation(_HEARTBEAT_BUCKETS),
                ),
                View(
                    instrument_name=METRIC_SYNC_DURATION,
                    aggregation=ExplicitBucketHistogramAggregation(_SYNC_BUCKETS),
                ),
            ],
            shutdown_on_exit=False,
        )
        self._tracer_provider = TracerProvider(resource=self.resource, shutdown_on_exit=False)
        if span_exporter is not None:
            self._tracer_provider.add_span_processor(SimpleSpanProcessor(span_exporter))
        if otlp_spans is not None:
            self._tracer_provider.add_span_processor(
                BatchSpanProcessor(otlp_spans, export_timeout_millis=export_timeout * 1000)
            )
        self._tracer = self._tracer_provider.get_tracer("sorcha_peerd", __version__)

        # Gauge state: (value, attributes) or None for "not reported".
        self._connection_status: tuple[int, dict[str, AttributeValue]] | None = None
        self._hub_peers: int | None = None
        self._hub_subscriptions: int | None = None
        if role == "peer":
            self._connection_status = (CONNECTION_STATUS_CODES["connecting"], {})
        elif role == "hub":
            self._hub_peers = 0
            self._hub_subscriptions = 0

        meter = self._meter_provider.get_meter("sorcha_peerd", __version__)

        def spec(name: str) -> _Instrument:
            return _BY_NAME[name]

        def gauge(name: str, read: Callable[[], Iterable[Observation]]) -> None:
            i = spec(name)

            def callback(_options: CallbackOptions) -> Iterable[Observation]:
                return list(read())

            meter.create_observable_gauge(i.name, [callback], i.unit, i.description)

        def counter(name: str) -> otel_metrics.Counter:
            i = spec(name)
            return meter.create_counter(i.name, i.unit, i.description)

        def histogram(name: str) -> otel_metrics.Histogram:
            i = spec(name)
            return meter.create_histogram(i.name, i.unit, i.description)

        gauge(METRIC_PEER_CONNECTION_STATUS, self._observe_connection_status)
        self._heartbeat_latency = histogram(METRIC_HEARTBEAT_LATENCY)
        self._sync_duration = histogram(METRIC_SYNC_DURATION)
        self._sync_blueprints = counter(METRIC_SYNC_BLUEPRINTS)
        self._notifications_delivered = counter(METRIC_NOTIFICATIONS_DELIVERED)
        self._notifications_failed = counter(METRIC_NOTIFICATIONS_FAILED)
        self._failovers = counter(METRIC_FAILOVER_COUNT)
        gauge(METRIC_HUB_PEERS_CONNECTED, lambda: self._observe_int(self._hub_peers))
        gauge(METRIC_HUB_SUBSCRIPTIONS_ACTIVE, lambda: self._observe_int(self._hub_subscriptions))
        self._hub_publishes = counter(METRIC_HUB_PUBLISHES)

    @classmethod
    def from_settings(
        cls, settings: Settings, *, span_exporter: SpanExporter | None = None
    ) -> Telemetry:
        """The telemetry ``settings.telemetry`` asks for, identified by the node's id and role."""
        t = settings.telemetry
        return cls(
            t.service_name,
            settings.node.id,
            settings.node.effective_role,
            exporter=t.exporter,
            endpoint=t.endpoint,
            span_exporter=span_exporter,
        )

    # ------------------------------------------------------------------ gauges

    def _observe_connection_status(self) -> Iterator[Observation]:
        status = self._connection_status
        if status is not None:
            yield Observation(status[0], status[1])

    @staticmethod
    def _observe_int(value: int | None) -> Iterator[Observation]:
        if value is not None:
            yield Observation(value)

    def set_connection_status(self, state: str, *, hub: str | None = None) -> None:
        """The peer's link state: "connecting", "connected" or "isolated" (``LinkState.value``)."""
        try:
            code = CONNECTION_STATUS_CODES[state]
        except KeyError:
            raise ValueError(
                f"unknown connection state {state!r}: one of {', '.join(CONNECTION_STATUS_CODES)}"
            ) from None
        self._connection_status = (code, _attributes({ATTR_HUB: hub}))

    def set_hub_peers_connected(self, count: int) -> None:
        """Hub: how many peer sessions it holds now."""
        self._hub_peers = count

    def set_hub_subscriptions_active(self, count: int) -> None:
        """Hub: how many push subscriptions are open now."""
        self._hub_subscriptions = count

    # ------------------------------------------------------------------ peer events

    def record_heartbeat_latency(self, seconds: float, *, hub: str | None = None) -> None:
        """One answered heartbeat's round trip, in seconds."""
        self._heartbeat_latency.record(_non_negative(seconds), _attributes({ATTR_HUB: hub}))

    def record_sync(
        self, kind: SyncKind, seconds: float, blueprints: int, *, hub: str | None = None
    ) -> None:
        """One finished sync: its duration, and the blueprints it brought (may be 0)."""
        if kind not in ("full", "incremental"):
            raise ValueError(f"sync kind must be 'full' or 'incremental', got {kind!r}")
        if blueprints < 0:
            raise ValueError(f"blueprints must be >= 0, got {blueprints}")
        attributes = _attributes({ATTR_SYNC_KIND: kind, ATTR_HUB: hub})
        self._sync_duration.record(_non_negative(seconds), attributes)
        self._sync_blueprints.add(blueprints, attributes)

    def notification_delivered(self, *, hub: str | None = None) -> None:
        """A push notification was received and acted on."""
        self._notifications_delivered.add(1, _attributes({ATTR_HUB: hub}))

    def notification_failed(self, reason: str = "stream_failed", *, hub: str | None = None) -> None:
        """The push feed failed; ``reason``: a fixed word ("stream_failed", "sequence_gap")."""
        self._notifications_failed.add(1, _attributes({ATTR_FAILURE_REASON: reason, ATTR_HUB: hub}))

    def failover(self, from_hub: str, to_hub: str | None, reason: str) -> None:
        """The peer left ``from_hub`` for ``to_hub`` (None: no other hub to try).

        ``reason`` should be one of a few fixed words, as it is a metric attribute
        (so are both hub ids: a few hubs make few series). The work of failing
        over goes in a ``peer.connection.failover`` span, which the caller opens.
        """
        self._failovers.add(
            1,
            _attributes(
                {
                    ATTR_HUB: from_hub,
                    ATTR_FAILOVER_TO: to_hub if to_hub is not None else "none",
                    ATTR_FAILOVER_REASON: reason,
                }
            ),
        )

    # ------------------------------------------------------------------ hub events

    def hub_published(self, count: int = 1) -> None:
        """Hub: ``count`` blueprints were published and fanned out to subscribers."""
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        self._hub_publishes.add(count)

    # ------------------------------------------------------------------ spans

    @contextlib.contextmanager
    def span(
        self,
        name: str,
        /,
        attributes: Mapping[str, AttributeValue | None] | None = None,
        *,
        parent: Span | None = None,
        **more: AttributeValue | None,
    ) -> Iterator[Span]:
        """A span around the ``with`` body, ended when it exits.

        Never made "current" (safe across trio tasks and checkpoints); nest spans
        by passing ``parent=``. An exception escaping the body is recorded on the
        span and sets its status to ERROR; a cancellation (``trio.Cancelled``, any
        other BaseException) only adds a "cancelled" event. None attributes are dropped.
        """
        attributes = {**(attributes or {}), **more}  # dotted keys come in the mapping
        context = trace.set_span_in_context(parent, Context()) if parent is not None else Context()
        span = self._tracer.start_span(
            name,
            context=context,
            attributes={k: v for k, v in attributes.items() if v is not None},
            record_exception=False,
            set_status_on_exception=False,
        )
        try:
            yield span
        except Exception as exc:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
            raise
        except BaseException as exc:
            span.add_event("cancelled", {"exception.type": type(exc).__qualname__})
            raise
        finally:
            span.end()

    # ------------------------------------------------------------------ reading

    def metrics_snapshot(self) -> dict[str, Any]:
        """Every instrument's current values, JSON-able, keyed by metric name.

        Each value is ``{"type", "unit", "description", "points"}``; a counter or
        gauge point is ``{"attributes", "value"}``, a histogram point
        ``{"attributes", "count", "sum", "min", "max", "bounds", "bucket_counts"}``.
        Instruments with nothing recorded yet (and all, after :meth:`shutdown`)
        have no points. Counters are totals since the daemon started.
        """
        points: dict[str, list[dict[str, Any]]] = {i.name: [] for i in _INSTRUMENTS}
        data = None if self._shutdown_done else self._reader.get_metrics_data()
        for resource_metrics in data.resource_metrics if data is not None else ():
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    if metric.name not in points:
                        continue
                    if isinstance(metric.data, Histogram):
                        rows = [_histogram_point(p) for p in metric.data.data_points]
                    elif isinstance(metric.data, Sum | Gauge):
                        rows = [_number_point(p) for p in metric.data.data_points]
                    else:  # pragma: no cover - no other kind is created
                        continue
                    points[metric.name].extend(rows)
        return {
            i.name: {
                "type": i.kind,
                "unit": i.unit,
                "description": i.description,
                "points": sorted(points[i.name], key=lambda p: sorted(p["attributes"].items())),
            }
            for i in _INSTRUMENTS
        }

    # ------------------------------------------------------------------ stopping

    def shutdown(self, timeout: float = 5.0) -> bool:
        """Flush and stop the exporters, giving up after ``timeout`` seconds.

        Runs in a daemon thread joined with a deadline, so an unreachable
        collector never holds up the daemon's stop. Idempotent. Blocking: from
        trio, use :meth:`aclose`. Returns False if the deadline passed.
        """
        if self._shutdown_done:
            return True
        self._shutdown_done = True
        millis = max(timeout, 0.0) * 1000

        def stop() -> None:
            try:
                self._tracer_provider.force_flush(int(millis))
                self._tracer_provider.shutdown()
                self._meter_provider.shutdown(timeout_millis=millis)
            except Exception:
                log.exception("telemetry shutdown failed")

        worker = threading.Thread(target=stop, name="telemetry-shutdown", daemon=True)
        worker.start()
        worker.join(timeout)
        if worker.is_alive():
            log.warning("telemetry exporters did not finish flushing within %.1fs", timeout)
            return False
        return True

    async def aclose(self, timeout: float = 5.0) -> bool:
        """:meth:`shutdown` without blocking the trio event loop."""
        return await trio.to_thread.run_sync(self.shutdown, timeout)


def _non_negative(seconds: float) -> float:
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"a duration must be a finite number >= 0, got {seconds}")
    return float(seconds)


def _plain(attributes: Mapping[str, Any] | None) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in (attributes or {}).items()}


def _number_point(point: object) -> dict[str, Any]:
    assert isinstance(point, NumberDataPoint)
    return {"attributes": _plain(point.attributes), "value": point.value}


def _histogram_point(point: object) -> dict[str, Any]:
    assert isinstance(point, HistogramDataPoint)
    empty = point.count == 0
    return {
        "attributes": _plain(point.attributes),
        "count": point.count,
        "sum": point.sum,
        "min": None if empty else point.min,
        "max": None if empty else point.max,
        "bounds": list(point.explicit_bounds),
        "bucket_counts": list(point.bucket_counts),
    }


def _number(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def format_metrics(snapshot: Mapping[str, Any]) -> list[str]:
    """Human lines for ``sorcha-peerctl metrics``: one per data point.

    ``name{attr=value,...} value unit``; a histogram shows count, sum, min and
    max; the connection status also its name; an instrument without data
    points shows ``(no data)``.
    """
    lines: list[str] = []
    for name, metric in snapshot.items():
        unit = metric.get("unit", "")
        points = metric.get("points", [])
        if not points:
            lines.append(f"{name} (no data)")
            continue
        for point in points:
            attributes = point.get("attributes", {})
            label = (
                "{" + ",".join(f"{k}={v}" for k, v in sorted(attributes.items())) + "}"
                if attributes
                else ""
            )
            if metric.get("type") == "histogram":
                text = (
                    f"count={point['count']} sum={_number(point['sum'])} "
                    f"min={_number(point['min'])} max={_number(point['max'])} {unit}"
                )
            else:
                text = f"{_number(point['value'])} {unit}"
                if name == METRIC_PEER_CONNECTION_STATUS:
                    text += f" ({_STATUS_NAMES.get(point['value'], 'unknown')})"
            lines.append(f"{name}{label} {text}".rstrip())
    return lines
