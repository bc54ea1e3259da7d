"""The hub's gRPC services: connection, heartbeat, sync and push, over one store.

Handlers translate messages to calls on the sans-I/O :class:`SessionTable` and
the :class:`PushFanout`, and stream from the store page by page. All of them
run on the one trio thread, and none awaits between reading and updating the
session table, so the table needs no lock: it is owned by this object and
changed only in those synchronous steps.

Two background duties run beside the server (:meth:`HubService.run`): the
*feed* follows the store's change feed (so a change committed through another
hub on the same MongoDB, or written straight into the store, reaches our
subscribers too) and hands each batch to the fan-out; the *reaper* expires
sessions that stopped beating.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import aclosing
from typing import Any

import attrs
import stamina
import trio

from sorcha_peerd.hub.push import Filters, PushFanout
from sorcha_peerd.hub.sessions import Action, PeerState, Session, SessionTable, TooManyPeers
from sorcha_peerd.register import Entry, Limits, validate_peer_id
from sorcha_peerd.store.base import RegisterStore, StoreError
from sorcha_peerd.telemetry import Telemetry
from sorcha_peerd.wire import messages as pb
from sorcha_peerd.wire import services
from sorcha_peerd.wire.server import CallContext
from sorcha_peerd.wire.status import RpcError, StatusCode

log = logging.getLogger(__name__)


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


@attrs.frozen
class HubConfig:
    """What the hub's services need from the settings (passed in, never global)."""

    node_id: str
    heartbeat_interval: float = 30.0
    heartbeat_timeout: float = 30.0
    missed_heartbeats_for_failover: int = 2
    sync_interval: float = 300.0
    page_size: int = 500
    max_peers: int = 1000
    max_concurrent_syncs: int = 4
    push_queue_size: int = 1000
    limits: Limits = attrs.field(factory=Limits)


@attrs.frozen
class HubState:
    """An immutable snapshot of what the hub reports (status, control socket)."""

    head_version: int
    active_blueprints: int
    total_entries: int
    last_publish_ms: int


def _whole_seconds(value: float) -> int:
    return max(1, math.ceil(value))


class HubService:
    """The gRPC handlers of a hub, and the duties that keep them fed."""

    def __init__(
        self,
        config: HubConfig,
        store: RegisterStore,
        *,
        telemetry: Telemetry | None = None,
        monotonic: Callable[[], float] = trio.current_time,
        clock_ms: Callable[[], int] = wall_ms,
    ) -> None:
        self.config = config
        self.store = store
        self.sessions = SessionTable(
            config.heartbeat_timeout, config.missed_heartbeats_for_failover, config.max_peers
        )
        self.fanout = PushFanout(config.push_queue_size)
        self.draining = False
        self.state = HubState(0, 0, 0, 0)
        self._monotonic = monotonic
        self._clock_ms = clock_ms
        self._started: float | None = None
        self._feed_cursor = 0
        self.telemetry = telemetry or Telemetry("sorcha-peerd", config.node_id, "hub")

    # ------------------------------------------------------------------ duties

    async def prepare(self, last_publish_ms: int = 0) -> None:
        """Read the register's head before serving, so the first answers are right."""
        self._started = self._monotonic()
        self._feed_cursor = await self.store.head_version()
        self.state = attrs.evolve(self.state, last_publish_ms=last_publish_ms)
        await self.refresh_state()

    async def refresh_state(self) -> None:
        active, total = await self.store.counts()
        head = max(await self.store.head_version(), self.state.head_version)
        self.state = attrs.evolve(
            self.state, head_version=head, active_blueprints=active, total_entries=total
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the feed and the reaper until cancelled."""
        if self._started is None:
            await self.prepare()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._feed)
            nursery.start_soon(self._reap)
            task_status.started()

    async def _feed(self) -> None:
        """Follow the store's change feed; a store outage is waited out, not fatal.

        The cursor only moves past what was handed to the fan-out, so after
        an outage the feed resumes where it stopped and no change is skipped.
        """
        retries = stamina.retry_context(
            on=StoreError, attempts=None, timeout=None, wait_initial=0.5, wait_max=30.0
        )
        async for attempt in retries:
            with attempt:
                if attempt.num > 1:
                    log.warning("change feed: the store failed; retry %d", attempt.num - 1)
                await self._follow()

    async def _follow(self) -> None:
        # A batch is offered to every queue at once: keep batches well below
        # the queue size, so that a burst alone never cuts off a subscriber
        # that is reading, and let subscribers run between batches.
        batch_size = max(1, min(self.config.page_size, self.config.push_queue_size // 2))
        async with aclosing(self.store.watch(self._feed_cursor, page_size=batch_size)) as batches:
            async for batch in batches:
                self._feed_cursor = batch[-1].version
                last_publish = max(e.published_at for e in batch)
                self.state = attrs.evolve(
                    self.state,
                    head_version=max(self.state.head_version, self._feed_cursor),
                    last_publish_ms=max(self.state.last_publish_ms, last_publish),
                )
                self.fanout.publish(batch)
                self.telemetry.hub_published(len(batch))
                await self.refresh_state()
                await trio.lowlevel.checkpoint()

    async def _reap(self) -> None:
        period = max(0.05, min(self.config.heartbeat_timeout, self.config.heartbeat_interval) / 2)
        while True:
            await trio.sleep(period)
            self._gauges()
            for session in self.sessions.expire(self._monotonic()):
                log.info(
                    "session of peer %s expired: no heartbeat for %.1f s",
                    session.peer_id,
                    self.sessions.expiry_after,
                )

    def reconfigure(self, config: HubConfig) -> None:
        """New live settings (a reload): timings and limits; the node id stays."""
        self.config = attrs.evolve(config, node_id=self.config.node_id)
        self.sessions.heartbeat_timeout = config.heartbeat_timeout
        self.sessions.missed_for_expiry = config.missed_heartbeats_for_failover
        self.sessions.max_peers = config.max_peers
        self.fanout.queue_size = config.push_queue_size

    def _gauges(self) -> None:
        self.telemetry.set_hub_peers_connected(len(self.sessions))
        self.telemetry.set_hub_subscriptions_active(len(self.fanout))

    def drain(self) -> None:
        """Stop accepting peers, send the connected ones away, end push streams."""
        self.draining = True
        self.fanout.close_all()

    # ------------------------------------------------------------------ helpers

    def uptime(self) -> int:
        return 0 if self._started is None else int(self._monotonic() - self._started)

    def _session_for(self, peer_id: str, session_id: str) -> Session:
        session = self.sessions.get(session_id)
        if session is None or session.peer_id != peer_id:
            raise RpcError(StatusCode.NOT_FOUND, f"no session {session_id!r} for peer {peer_id!r}")
        return session

    def _check_clock(self, field: str, sent_ms: int) -> None:
        skew = abs(self._clock_ms() - sent_ms) / 1000
        if skew > self.config.limits.max_clock_skew:
            raise RpcError(
                StatusCode.INVALID_ARGUMENT,
                f"{field}: clock skew of {skew:.0f} s exceeds "
                f"±{self.config.limits.max_clock_skew:.0f} s",
            )

    def handlers(self) -> Mapping[services.Method, Callable[..., Any]]:
        return {
            services.CONNECT: self.connect,
            services.DISCONNECT: self.disconnect,
            services.GET_STATUS: self.get_status,
            services.SEND_HEARTBEAT: self.send_heartbeat,
            services.MONITOR_HEARTBEAT: self.monitor_heartbeat,
            services.GET_HEARTBEAT_STATUS: self.get_heartbeat_status,
            services.FULL_SYNC: self.full_sync,
            services.INCREMENTAL_SYNC: self.incremental_sync,
            services.SUBSCRIBE: self.subscribe,
            services.GET_CHECKPOINT: self.get_checkpoint,
        }

    # ------------------------------------------------------------------ CentralNodeConnection

    async def connect(self, request: pb.ConnectRequest, ctx: CallContext) -> pb.ConnectionResponse:
        validate_peer_id(request.peer_id, self.config.limits)
        info = request.peer_info or pb.PeerInfo()
        if info.node_type.strip().lower() == "central":
            log.error(
                "configuration error: hub %s asked to connect to this hub (%s); "
                "hubs never connect to hubs",
                request.peer_id,
                ctx.peer,
            )
            raise RpcError(
                StatusCode.FAILED_PRECONDITION,
                "node_type Central: hubs never connect to hubs (check its hub list)",
            )
        if self.draining:
            raise RpcError(StatusCode.UNAVAILABLE, "hub is draining: connect to the next hub")
        if request.last_known_version < 0:
            raise RpcError(StatusCode.INVALID_ARGUMENT, "last_known_version: must not be negative")
        if not 0 <= info.port <= 65535:
            raise RpcError(StatusCode.INVALID_ARGUMENT, "peer_info.port: must be 0-65535")
        try:
            session = self.sessions.connect(
                request.peer_id,
                info.address or ctx.peer,
                info.port,
                request.last_known_version,
                now=self._monotonic(),
                now_ms=self._clock_ms(),
            )
        except TooManyPeers as exc:
            raise RpcError(StatusCode.RESOURCE_EXHAUSTED, str(exc)) from None
        self._gauges()
        log.info(
            "peer %s connected from %s (session %s...)",
            request.peer_id,
            ctx.peer,
            session.session_id[:8],
        )
        c = self.config
        return pb.ConnectionResponse(
            success=True,
            message="connected",
            session_id=session.session_id,
            central_node_id=c.node_id,
            current_system_register_version=self.state.head_version,
            connected_at=session.connected_at_ms,
            heartbeat_interval_seconds=_whole_seconds(c.heartbeat_interval),
            config=pb.ConnectionConfig(
                heartbeat_timeout_seconds=_whole_seconds(c.heartbeat_timeout),
                periodic_sync_interval_minutes=_whole_seconds(c.sync_interval / 60),
                push_notifications_enabled=True,
                max_concurrent_syncs=c.max_concurrent_syncs,
            ),
        )

    async def disconnect(
        self, request: pb.DisconnectRequest, ctx: CallContext
    ) -> pb.DisconnectionResponse:
        validate_peer_id(request.peer_id, self.config.limits)
        session = self.sessions.get(request.session_id)
        if session is None or session.peer_id != request.peer_id:
            return pb.DisconnectionResponse(
                success=False, message="no such session", disconnected_at=self._clock_ms()
            )
        self.sessions.disconnect(request.session_id)
        self._gauges()
        reason = pb.DisconnectReason(request.reason).name if request.reason else "UNKNOWN"
        log.info("peer %s disconnected (%s)", request.peer_id, reason)
        return pb.DisconnectionResponse(
            success=True, message="disconnected", disconnected_at=self._clock_ms()
        )

    async def get_status(self, request: pb.StatusRequest, ctx: CallContext) -> pb.CentralNodeStatus:
        if request.peer_id:
            validate_peer_id(request.peer_id, self.config.limits)
        health = pb.NodeHealth.MAINTENANCE if self.draining else pb.NodeHealth.HEALTHY
        peers = []
        if request.include_peer_list:
            peers = [
                pb.ConnectedPeerInfo(
                    peer_id=s.peer_id,
                    session_id=s.session_id,
                    connected_at=s.connected_at_ms,
                    last_heartbeat_at=s.last_heartbeat_ms,
                    last_sync_version=s.last_sync_version,
                    status=pb.PeerConnectionStatus(int(s.state)),
                )
                for s in self.sessions.sessions()
            ]
        st = self.state
        return pb.CentralNodeStatus(
            node_id=self.config.node_id,
            health=health,
            current_system_register_version=st.head_version,
            total_blueprints=st.active_blueprints,
            active_peer_count=len(self.sessions),
            last_blueprint_published_at=st.last_publish_ms,
            uptime_seconds=self.uptime(),
            connected_peers=peers,
        )

    # ------------------------------------------------------------------ Heartbeat

    def _answer(self, hb: pb.HeartbeatMessage) -> pb.HeartbeatAcknowledgement:
        received_ms = self._clock_ms()
        answer = self.sessions.heartbeat(
            peer_id=hb.peer_id,
            session_id=hb.session_id,
            last_sync_version=hb.last_sync_version,
            sent_ms=hb.timestamp,
            now=self._monotonic(),
            now_ms=received_ms,
            head_version=self.state.head_version,
            draining=self.draining,
        )
        if answer.action is Action.RECONNECT:
            log.info("heartbeat from %s with unknown session: asked to reconnect", hb.peer_id)
        return pb.HeartbeatAcknowledgement(
            success=answer.success,
            timestamp=received_ms,
            central_node_id=self.config.node_id,
            current_system_register_version=self.state.head_version,
            message=answer.message,
            recommended_action=pb.RecommendedAction(int(answer.action)),
            server_latency_ms=max(0, received_ms - hb.timestamp),
        )

    async def send_heartbeat(
        self, hb: pb.HeartbeatMessage, ctx: CallContext
    ) -> pb.HeartbeatAcknowledgement:
        validate_peer_id(hb.peer_id, self.config.limits)
        self._check_clock("timestamp", hb.timestamp)
        return self._answer(hb)

    async def monitor_heartbeat(
        self, heartbeats: AsyncIterator[pb.HeartbeatMessage], ctx: CallContext
    ) -> AsyncIterator[pb.HeartbeatAcknowledgement]:
        """One acknowledgement per heartbeat; a bad one is refused in its ack, not by ending."""
        async for hb in heartbeats:
            try:
                validate_peer_id(hb.peer_id, self.config.limits)
                self._check_clock("timestamp", hb.timestamp)
            except (ValueError, RpcError) as exc:
                yield pb.HeartbeatAcknowledgement(
                    success=False,
                    timestamp=self._clock_ms(),
                    central_node_id=self.config.node_id,
                    current_system_register_version=self.state.head_version,
                    message=str(exc),
                )
                continue
            yield self._answer(hb)

    async def get_heartbeat_status(
        self, request: pb.HeartbeatStatusRequest, ctx: CallContext
    ) -> pb.HeartbeatStatus:
        validate_peer_id(request.peer_id, self.config.limits)
        session = self._session_for(request.peer_id, request.session_id)
        missed = self.sessions.missed_heartbeats(session, self._monotonic())
        healths = [pb.HeartbeatHealthStatus.HEALTHY, pb.HeartbeatHealthStatus.WARNING]
        health = healths[missed] if missed < 2 else pb.HeartbeatHealthStatus.CRITICAL
        lag = max(0, self.state.head_version - session.last_sync_version)
        return pb.HeartbeatStatus(
            peer_id=session.peer_id,
            session_id=session.session_id,
            last_heartbeat_time=session.last_heartbeat_ms,
            missed_heartbeats=missed,
            is_healthy=missed == 0,
            status_message="healthy" if missed == 0 else f"{missed} heartbeat(s) missed",
            total_heartbeats_received=session.heartbeats_received,
            total_heartbeats_missed=missed,
            average_latency_ms=session.average_latency_ms,
            last_known_sync_version=session.last_sync_version,
            version_lag=lag,
            health_status=health,
        )

    # ------------------------------------------------------------------ SystemRegisterSync

    def _check_sync(self, request: pb.SyncRequest) -> int | None:
        validate_peer_id(request.peer_id, self.config.limits)
        if request.last_known_version < 0:
            raise RpcError(StatusCode.INVALID_ARGUMENT, "last_known_version: must not be negative")
        if request.max_blueprints < 0:
            raise RpcError(StatusCode.INVALID_ARGUMENT, "max_blueprints: must not be negative")
        return request.max_blueprints or None

    async def _stream(
        self, request: pb.SyncRequest, after: int, active_only: bool
    ) -> AsyncIterator[Entry]:
        limit = self._check_sync(request)
        last = after
        pages = self.store.iter_since(
            after, page_size=self.config.page_size, active_only=active_only, max_entries=limit
        )
        self.sessions.set_syncing(request.session_id, True)
        try:
            async with aclosing(pages):
                async for page in pages:
                    for entry in page:
                        yield entry
                    last = page[-1].version
        finally:
            self.sessions.set_syncing(request.session_id, False)
        if request.session_id:
            self.sessions.note_sync(request.session_id, last, self._clock_ms())

    def full_sync(self, request: pb.SyncRequest, ctx: CallContext) -> AsyncIterator[Entry]:
        """Every active entry, oldest version first."""
        return self._stream(request, 0, active_only=True)

    def incremental_sync(self, request: pb.SyncRequest, ctx: CallContext) -> AsyncIterator[Entry]:
        """Every entry, active or not, newer than ``last_known_version``, oldest first."""
        return self._stream(request, request.last_known_version, active_only=False)

    async def subscribe(
        self, request: pb.SubscriptionRequest, ctx: CallContext
    ) -> AsyncIterator[bytes]:
        validate_peer_id(request.peer_id, self.config.limits)
        if self.draining:
            raise RpcError(StatusCode.UNAVAILABLE, "hub is draining: subscribe to the next hub")
        if len(self.fanout) >= 2 * self.config.max_peers:
            raise RpcError(
                StatusCode.RESOURCE_EXHAUSTED,
                f"this hub already holds {len(self.fanout)} push subscriptions",
            )
        subscription = self.fanout.subscribe(Filters.from_wire(request.filters))
        self._gauges()

        def ended() -> None:
            if subscription.cut_off:
                ctx.abort(
                    StatusCode.RESOURCE_EXHAUSTED,
                    "subscriber fell too far behind: catch up by incremental sync",
                )
            else:
                ctx.abort(StatusCode.UNAVAILABLE, "hub is draining: subscribe to the next hub")

        subscription.on_end = ended
        try:
            async for prefix in subscription.receive:
                yield subscription.next_message(prefix)
        finally:
            self.fanout.unsubscribe(subscription)
            self._gauges()

    async def get_checkpoint(
        self, request: pb.CheckpointRequest, ctx: CallContext
    ) -> pb.SyncCheckpoint:
        validate_peer_id(request.peer_id, self.config.limits)
        session = self._session_for(request.peer_id, request.session_id)
        head = self.state.head_version
        if session.last_sync_version >= head:
            status = pb.CheckpointStatus.UP_TO_DATE
        elif session.state is PeerState.SYNCING:
            status = pb.CheckpointStatus.SYNCING
        else:
            status = pb.CheckpointStatus.BEHIND
        last_sync = session.last_sync_ms
        due = (last_sync or session.connected_at_ms) + int(self.config.sync_interval * 1000)
        return pb.SyncCheckpoint(
            peer_id=session.peer_id,
            current_version=session.last_sync_version,
            last_sync_time=last_sync,
            total_blueprints=self.state.active_blueprints,
            central_node_id=self.config.node_id,
            next_sync_due=due,
            status=status,
        )
