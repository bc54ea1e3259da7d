"""The top-level nursery of each role: what runs, in which order, and how it stops.

A hub opens its store, refuses to serve a corrupted register, seeds the
default blueprint, then runs in one nursery: the hub's feed and reaper, the
gRPC server (bound to exactly the configured address) and the control socket.
SIGTERM or SIGINT drains it: heartbeats answer FAILOVER, new connections get
UNAVAILABLE, push streams end, and once every connected peer has left or been
answered FAILOVER (or one heartbeat interval, capped by
``timing.shutdown_timeout``, has passed) it exits 0.

Exit statuses: 0 after a clean stop; 1 when it cannot start (store
unreachable, address or control socket in use); 65 (EX_DATAERR) when the
register fails its integrity check; 78 is the CLI's for configuration errors.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import AsyncIterator, Callable, Sequence

import trio

from sorcha_peerd.config import Settings
from sorcha_peerd.control import ControlServer, ControlSocketError, ServiceInfo
from sorcha_peerd.hub.control import HubControl
from sorcha_peerd.hub.seed import IntegrityError, check_integrity, seed_default
from sorcha_peerd.hub.service import HubConfig, HubService
from sorcha_peerd.peer.control import PeerControl
from sorcha_peerd.peer.link import HubEndpoint
from sorcha_peerd.peer.node import Peer, dialable_hubs
from sorcha_peerd.peer.replica import Replica, ReplicaView
from sorcha_peerd.peer.session import PeerTiming
from sorcha_peerd.store import StoreError, open_store
from sorcha_peerd.store.base import RegisterStore
from sorcha_peerd.store.sqlite import SqliteRegisterStore
from sorcha_peerd.wire.server import BindError, GrpcServer

log = logging.getLogger(__name__)

EX_OK = 0
EX_START_FAILED = 1
EX_DATAERR = 65


class StartError(Exception):
    """The daemon cannot start; the message says why, the code is the exit status."""

    def __init__(self, message: str, code: int = EX_START_FAILED) -> None:
        super().__init__(message)
        self.code = code


def hub_config(settings: Settings) -> HubConfig:
    t, lim = settings.timing, settings.limits
    return HubConfig(
        node_id=settings.node.id,
        heartbeat_interval=t.heartbeat_interval,
        heartbeat_timeout=t.heartbeat_timeout,
        missed_heartbeats_for_failover=t.missed_heartbeats_for_failover,
        sync_interval=t.sync_interval,
        page_size=lim.max_page_size,
        max_peers=lim.max_peers,
        max_concurrent_syncs=lim.max_concurrent_syncs,
        push_queue_size=lim.push_queue_size,
        limits=lim.register_limits(),
    )


def make_store(settings: Settings) -> RegisterStore:
    s = settings.store
    return open_store(
        s.backend,
        sqlite_path=s.sqlite_path,
        mongodb_uri=s.mongodb_uri,
        mongodb_database=s.mongodb_database,
        poll_interval=s.poll_interval,
    )


async def run_hub(
    settings: Settings, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve as a hub until cancelled or signalled; ``task_status`` gets the gRPC port.

    Raises :class:`StartError` when it cannot start.
    """
    settings.node.state_dir.mkdir(parents=True, exist_ok=True)
    # From the very start, so that a SIGTERM during start-up is a clean stop
    # (served by the drain right after) rather than Python's default death.
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        await _run_hub(settings, signals, task_status)


async def _run_hub(
    settings: Settings, signals: AsyncIterator[int], task_status: trio.TaskStatus[int]
) -> None:
    try:
        async with make_store(settings) as store:
            try:
                report = await check_integrity(store, page_size=settings.limits.max_page_size)
            except IntegrityError as exc:
                raise StartError(f"refusing to serve: {exc}", EX_DATAERR) from None
            seeded = await seed_default(store)
            log.info(
                "integrity check passed: %d entries up to version %d; %s is at version %d",
                report.entries,
                max(report.head_version, seeded.version),
                seeded.blueprint_id,
                seeded.version,
            )
            last_publish = max(report.last_published_at, seeded.published_at)
            await _serve_hub(settings, store, signals, last_publish, task_status)
    except StoreError as exc:
        raise StartError(f"store unavailable: {exc}") from None


async def _serve_hub(
    settings: Settings,
    store: RegisterStore,
    signals: AsyncIterator[int],
    last_publish_ms: int,
    task_status: trio.TaskStatus[int],
) -> None:
    service = HubService(hub_config(settings), store)
    await service.prepare(last_publish_ms)
    listen = settings.grpc.listen
    grpc_server = GrpcServer(listen.host, listen.port, service.handlers())
    control = ControlServer(
        settings.control.socket,
        HubControl(service, str(listen), settings.store.backend),
        info=ServiceInfo(product="sorcha-peerd", version=_version()),
    )
    async with trio.open_nursery() as nursery:
        try:
            port = await nursery.start(grpc_server.serve)
        except BindError as exc:
            raise StartError(str(exc)) from None
        try:
            await nursery.start(control.serve)
        except ControlSocketError as exc:
            raise StartError(str(exc)) from None
        await nursery.start(service.run)
        log.info(
            "hub %s serving the system register on %s:%d (store: %s, version %d)",
            settings.node.id,
            listen.host,
            port,
            settings.store.backend,
            service.state.head_version,
        )
        task_status.started(port)
        await _first_signal(signals)
        log.info("draining: sending peers to their next hub")
        service.drain()
        grace = min(settings.timing.heartbeat_interval, settings.timing.shutdown_timeout)
        with trio.move_on_after(grace):
            await _until(service.sessions.all_sent_away)
        nursery.cancel_scope.cancel()
    log.info("hub %s stopped", settings.node.id)


async def _first_signal(signals: AsyncIterator[int]) -> None:
    async for signum in signals:
        log.info("received %s", signal.Signals(signum).name)
        return


async def _until(predicate: Callable[[], bool], interval: float = 0.05) -> None:
    while not predicate():  # noqa: ASYNC110 - session table state has no event of its own
        await trio.sleep(interval)


def _version() -> str:
    from sorcha_peerd import __version__

    return __version__


def peer_timing(settings: Settings) -> PeerTiming:
    t = settings.timing
    return PeerTiming(
        heartbeat_interval=t.heartbeat_interval,
        heartbeat_timeout=t.heartbeat_timeout,
        missed_for_failover=t.missed_heartbeats_for_failover,
        sync_interval=t.sync_interval,
        call_timeout=t.call_timeout,
        page_size=settings.limits.max_page_size,
    )


async def run_peer(
    settings: Settings, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Keep and serve a replica until cancelled or signalled. Raises :class:`StartError`."""
    settings.node.state_dir.mkdir(parents=True, exist_ok=True)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        if settings.store.backend != "sqlite":
            log.warning(
                "a peer keeps its replica in the embedded store; store.backend "
                "%r applies to hubs only",
                settings.store.backend,
            )
        hubs = dialable_hubs(settings)
        if not hubs:
            raise StartError("a peer needs at least one hub to dial: add [[hubs]] entries")
        try:
            async with SqliteRegisterStore(
                settings.store.sqlite_path, poll_interval=settings.store.poll_interval
            ) as store:
                replica = Replica(store, page_size=settings.limits.max_page_size)
                view = await replica.load()
                await _serve_peer(settings, hubs, replica, view, signals, task_status)
        except StoreError as exc:
            raise StartError(f"replica store unavailable: {exc}") from None


async def _serve_peer(
    settings: Settings,
    hubs: Sequence[HubEndpoint],
    replica: Replica,
    view: ReplicaView,
    signals: AsyncIterator[int],
    task_status: trio.TaskStatus[None],
) -> None:
    t = settings.timing
    peer = Peer(
        settings.node.id,
        hubs,
        replica,
        peer_timing(settings),
        t.connect_timeout,
        settings.limits.register_limits(),
        backoff_initial=t.backoff_initial,
        backoff_max=t.backoff_max,
    )
    control = ControlServer(
        settings.control.socket,
        PeerControl(peer),
        info=ServiceInfo(product="sorcha-peerd", version=_version()),
    )
    async with trio.open_nursery() as nursery:
        try:
            await nursery.start(control.serve)
        except ControlSocketError as exc:
            raise StartError(str(exc)) from None
        await nursery.start(peer.run)
        log.info(
            "peer %s serving its replica (version %d, %d blueprints); hubs: %s",
            settings.node.id,
            view.checkpoint.version,
            view.snapshot.active_count,
            ", ".join(f"{h.id}={h.host}:{h.port}" for h in hubs),
        )
        task_status.started()
        await _first_signal(signals)
        log.info("stopping: telling the hub")
        await peer.shutdown()
        nursery.cancel_scope.cancel()
    log.info("peer %s stopped", settings.node.id)


def run_daemon(settings: Settings) -> int:
    """Run the role the settings name; returns the exit status."""
    role = run_hub if settings.node.effective_role == "hub" else run_peer
    failure: StartError | None = None
    try:
        trio.run(role, settings)
    except* StartError as group:  # raised in the role's nursery, so it arrives grouped
        failure = _first(group)
    if failure is not None:
        log.critical("cannot start: %s", failure)
        return failure.code
    return EX_OK


def _first(group: BaseExceptionGroup[StartError]) -> StartError:
    leaf: BaseException = group
    while isinstance(leaf, BaseExceptionGroup):
        leaf = leaf.exceptions[0]
    assert isinstance(leaf, StartError)
    return leaf
