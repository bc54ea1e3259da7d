"""The peer role: one nursery with the replica's owner, the connection loop and the control socket.

The connection loop asks the sans-I/O :class:`Link` what to do next — dial a
hub, or wait out a backoff — and runs one :class:`Session` per successful
connection. When a session ends it tells the link why (failover, reconnect,
lost), and the link picks the next hub. Whatever happens to the hubs, the
replica keeps being served from its last snapshot: with no hub reachable the
peer reports ``isolated`` and keeps dialing in the background.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack

import attrs
import trio

from sorcha_peerd.config import Settings
from sorcha_peerd.peer.link import HubEndpoint, Link, LinkState, Wait
from sorcha_peerd.peer.replica import Replica
from sorcha_peerd.peer.session import PeerState, PeerTiming, Session, SessionEnd, SyncRequests
from sorcha_peerd.register import Limits
from sorcha_peerd.telemetry import (
    ATTR_FAILOVER_REASON,
    ATTR_HUB,
    SPAN_CONNECT,
    SPAN_FAILOVER,
    Telemetry,
)
from sorcha_peerd.wire import messages as pb
from sorcha_peerd.wire import services
from sorcha_peerd.wire.client import Channel, open_channel
from sorcha_peerd.wire.status import RpcError, StatusCode

log = logging.getLogger(__name__)


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


def dialable_hubs(settings: Settings) -> tuple[HubEndpoint, ...]:
    """The configured hubs, in priority order, without this node itself.

    A peer never dials itself (its own node id or host name in its hub list:
    a copied configuration); such an entry is dropped with a warning.
    """
    me = {
        settings.node.id.lower(),
        settings.node.hostname.lower(),
        settings.node.hostname.split(".")[0].lower(),
    }
    hubs = []
    for hub in settings.hubs:
        if hub.id.lower() in me or hub.address.host.lower() in me:
            log.warning("not dialing hub %s (%s): that is this node", hub.id, hub.address)
            continue
        hubs.append(HubEndpoint(hub.id, hub.address.host, hub.address.port))
    return tuple(hubs)


def session_timing(local: PeerTiming, response: pb.ConnectionResponse) -> PeerTiming:
    """The hub's advertised heartbeat timings, where they are stricter than ours.

    A hub expires a session after its own timeout times misses; a peer beating
    slower than the hub expects would be expired and told to reconnect over
    and over. The wire counts whole seconds, so a sub-second local timing wins.
    """
    interval = response.heartbeat_interval_seconds or math.inf
    timeout = response.config.heartbeat_timeout_seconds if response.config else 0
    return attrs.evolve(
        local,
        heartbeat_interval=min(local.heartbeat_interval, interval),
        heartbeat_timeout=min(local.heartbeat_timeout, timeout or math.inf),
    )


def _telemetry_or_default(value: Telemetry | None) -> Telemetry:
    return value if value is not None else Telemetry("sorcha-peerd", "peer", "peer")


@attrs.define
class Peer:
    """The peer's parts; :meth:`run` drives them until cancelled."""

    node_id: str
    hubs: Sequence[HubEndpoint]
    replica: Replica
    timing: PeerTiming
    connect_timeout: float
    limits: Limits
    listen_port: int = 0
    rng: random.Random = attrs.field(factory=random.Random)
    clock_ms: Callable[[], int] = wall_ms
    backoff_initial: float = 1.0
    backoff_max: float = 60.0
    telemetry: Telemetry = attrs.field(default=None, converter=_telemetry_or_default)
    state: PeerState = attrs.field(init=False)
    requests: SyncRequests = attrs.field(init=False, factory=SyncRequests)
    link: Link = attrs.field(init=False)
    session: Session | None = attrs.field(init=False, default=None)
    _new_link: bool = attrs.field(init=False, default=False)
    _wake: trio.Event = attrs.field(init=False, factory=trio.Event)

    def __attrs_post_init__(self) -> None:
        self.state = PeerState(self.node_id)
        self.link = Link(
            self.hubs,
            backoff_initial=self.backoff_initial,
            backoff_max=self.backoff_max,
            rng=self.rng,
        )

    def _report(self) -> None:
        """The connection status gauge follows the link."""
        hub = self.link.current
        self.telemetry.set_connection_status(
            self.link.state.value, hub=hub.id if hub is not None else None
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._report()
        async with trio.open_nursery() as nursery:
            await nursery.start(self.replica.run)
            nursery.start_soon(self._connection_loop)
            task_status.started()

    def reconfigure(
        self,
        *,
        hubs: Sequence[HubEndpoint],
        timing: PeerTiming,
        connect_timeout: float,
        limits: Limits,
        backoff_initial: float,
        backoff_max: float,
    ) -> None:
        """New live settings (a reload), used from the next connection on."""
        self.timing = timing
        self.connect_timeout = connect_timeout
        self.limits = limits
        changed = (tuple(hubs), backoff_initial, backoff_max) != (
            tuple(self.hubs),
            self.backoff_initial,
            self.backoff_max,
        )
        self.hubs, self.backoff_initial, self.backoff_max = (
            tuple(hubs),
            backoff_initial,
            backoff_max,
        )
        if changed:
            self._new_link = True
            self._wake.set()

    def _fresh_link(self) -> None:
        """Take a reloaded hub list or backoff when not in a session."""
        if self._new_link and self.session is None:
            self._new_link = False
            self.link = Link(
                self.hubs,
                backoff_initial=self.backoff_initial,
                backoff_max=self.backoff_max,
                rng=self.rng,
            )
            log.info("hub list now: %s", ", ".join(h.id for h in self.hubs))

    async def _connection_loop(self) -> None:
        while True:
            self._fresh_link()
            step = self.link.next_step(trio.current_time())
            if step is None:  # no hub to dial at all
                await self._wait_for_reload(math.inf)
            elif isinstance(step, Wait):
                await self._wait_for_reload(step.until)
            else:
                await self._dial(step.hub)

    async def _wait_for_reload(self, until: float) -> None:
        """Sleep until ``until``, or until a reload brings a new hub list."""
        self._wake = trio.Event()
        with trio.move_on_at(until):
            await self._wake.wait()

    async def _dial(self, hub: HubEndpoint) -> None:
        connected = False
        connecting = ExitStack()  # the peer.connection.connect span, until connected or failed
        connecting.enter_context(self.telemetry.span(SPAN_CONNECT, {ATTR_HUB: hub.id}))
        try:
            async with open_channel(
                hub.host, hub.port, connect_timeout=self.connect_timeout
            ) as channel:
                response = await self._connect(channel)
                connecting.close()
                self.link.dial_succeeded(trio.current_time())
                self._report()
                connected = True
                log.info(
                    "connected to hub %s (%s:%d), register at version %d",
                    hub.id,
                    hub.host,
                    hub.port,
                    response.current_system_register_version,
                )
                await self._run_session(hub, channel, response)
        except RpcError as exc:
            if not connected:
                connecting.__exit__(type(exc), exc, exc.__traceback__)
                log.info("hub %s unreachable: %s", hub.id, exc.message or exc.code.name)
                self.link.dial_failed(trio.current_time(), exc.message or exc.code.name)
                self._report()
                return
            self._left(hub, str(exc), lost=True)
        finally:
            connecting.close()

    async def _connect(self, channel: Channel) -> pb.ConnectionResponse:
        request = pb.ConnectRequest(
            peer_id=self.node_id,
            last_known_version=self.replica.view.checkpoint.version,
            connection_time=self.clock_ms(),
            peer_info=pb.PeerInfo(
                node_type="Peer",
                port=self.listen_port,
                supported_protocols=["sorcha.peer.v1"],
                capabilities=pb.PeerCapabilities(
                    supports_push_notifications=True,
                    supports_incremental_sync=True,
                    max_blueprint_size=self.limits.max_document_bytes,
                ),
            ),
        )
        response: pb.ConnectionResponse = await channel.unary(
            services.CONNECT, request, timeout=self.connect_timeout
        )
        if not response.success:
            raise RpcError(StatusCode.UNAVAILABLE, response.message or "connection refused")
        return response

    async def _run_session(
        self, hub: HubEndpoint, channel: Channel, response: pb.ConnectionResponse
    ) -> None:
        self.state.session_id = response.session_id
        self.state.hub_head = response.current_system_register_version
        timing = session_timing(self.timing, response)
        session = Session(
            hub,
            channel,
            self.replica,
            self.state,
            self.requests,
            timing,
            self.limits,
            self.clock_ms,
            self.telemetry,
        )
        self.session = session
        try:
            end, reason = await session.run()
        finally:
            self.session = None
            self.state.push_up = False
        if end is SessionEnd.RECONNECT:
            self.link.reconnect(trio.current_time(), reason)
            self._report()
            return
        if end is SessionEnd.FAILOVER:
            with self.telemetry.span(
                SPAN_FAILOVER, {ATTR_HUB: hub.id, ATTR_FAILOVER_REASON: reason}
            ):
                monitor = self.state.monitor
                if monitor is None or monitor.missed == 0:  # a silent hub gets no goodbye
                    await self._say_goodbye(channel, pb.DisconnectReason.FAILOVER)
            self._left(hub, reason, lost=False)
            return
        self._left(hub, reason, lost=True)

    def _left(self, hub: HubEndpoint, reason: str, *, lost: bool) -> None:
        """The session with ``hub`` is over: on to the next hub, and count it."""
        now = trio.current_time()
        if lost:
            self.link.connection_lost(now, reason)
        else:
            self.link.failover(now, reason)
        target = self.link.target
        self.telemetry.failover(hub.id, target.id if target is not None else None, reason)
        self._report()

    async def _say_goodbye(self, channel: Channel, reason: pb.DisconnectReason) -> None:
        """Best effort: tell the hub we leave (it may be gone already)."""
        if channel.closed:
            return
        request = pb.DisconnectRequest(
            peer_id=self.node_id,
            session_id=self.state.session_id,
            reason=reason,
            disconnect_time=self.clock_ms(),
        )
        with trio.move_on_after(min(1.0, self.timing.call_timeout)):
            try:
                await channel.unary(services.DISCONNECT, request, timeout=self.timing.call_timeout)
            except RpcError as exc:
                log.debug("disconnect from hub not delivered: %s", exc)

    async def shutdown(self) -> None:
        """Tell the connected hub we are shutting down (SIGTERM), before the nursery ends."""
        session = self.session
        if session is not None:
            await self._say_goodbye(session.channel, pb.DisconnectReason.SHUTDOWN)

    # ------------------------------------------------------------------ what status shows

    @property
    def connection_status(self) -> str:
        return self.link.state.value

    @property
    def in_sync(self) -> bool:
        return (
            self.link.state is LinkState.CONNECTED
            and self.replica.view.checkpoint.version >= self.state.hub_head
            and not self.state.last_sync_error
        )
