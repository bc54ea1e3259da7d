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
import random
import time
from collections.abc import Callable, Sequence

import attrs
import trio

from sorcha_peerd.config import Settings
from sorcha_peerd.peer.link import HubEndpoint, Link, LinkState, Wait
from sorcha_peerd.peer.replica import Replica
from sorcha_peerd.peer.session import PeerState, PeerTiming, Session, SessionEnd, SyncRequests
from sorcha_peerd.register import Limits
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
    state: PeerState = attrs.field(init=False)
    requests: SyncRequests = attrs.field(init=False, factory=SyncRequests)
    link: Link = attrs.field(init=False)
    session: Session | None = attrs.field(init=False, default=None)

    def __attrs_post_init__(self) -> None:
        self.state = PeerState(self.node_id)
        self.link = Link(
            self.hubs,
            backoff_initial=self.backoff_initial,
            backoff_max=self.backoff_max,
            rng=self.rng,
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.replica.run)
            nursery.start_soon(self._connection_loop)
            task_status.started()

    async def _connection_loop(self) -> None:
        while True:
            step = self.link.next_step(trio.current_time())
            if step is None:  # no hub to dial at all
                await trio.sleep_forever()
            elif isinstance(step, Wait):
                await trio.sleep_until(step.until)
            else:
                await self._dial(step.hub)

    async def _dial(self, hub: HubEndpoint) -> None:
        connected = False
        try:
            async with open_channel(
                hub.host, hub.port, connect_timeout=self.connect_timeout
            ) as channel:
                response = await self._connect(channel)
                self.link.dial_succeeded(trio.current_time())
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
                log.info("hub %s unreachable: %s", hub.id, exc.message or exc.code.name)
                self.link.dial_failed(trio.current_time(), exc.message or exc.code.name)
                return
            self.link.connection_lost(trio.current_time(), str(exc))

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
        session = Session(
            hub,
            channel,
            self.replica,
            self.state,
            self.requests,
            self.timing,
            self.limits,
            self.clock_ms,
        )
        self.session = session
        try:
            end, reason = await session.run()
        finally:
            self.session = None
            self.state.push_up = False
        now = trio.current_time()
        if end is SessionEnd.RECONNECT:
            self.link.reconnect(now, reason)
            return
        if end is SessionEnd.FAILOVER:
            monitor = self.state.monitor
            if monitor is None or monitor.missed == 0:  # a hub that stopped answering gets none
                await self._say_goodbye(channel, pb.DisconnectReason.FAILOVER)
            self.link.failover(trio.current_time(), reason)
            return
        self.link.connection_lost(now, reason)

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
