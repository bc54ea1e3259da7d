"""The top-level nursery of each role: what runs, in which order, and how it stops.

A hub opens its store, refuses to serve a corrupted register, seeds the
default blueprint, then runs in one nursery: the hub's feed and reaper, the
gRPC server (bound to exactly the configured address), the control socket and
the read-only status socket. A peer loads its replica and runs the replica's
owner, its connection loop and the same two sockets.

Only once the listeners are bound does the daemon tell systemd READY=1; it
keeps STATUS= current, pings the watchdog, and reloads on SIGHUP
(:mod:`sorcha_peerd.runtime`). SIGTERM or SIGINT stops it: a hub drains —
heartbeats answer FAILOVER, new connections get UNAVAILABLE, push streams
end, and once every connected peer has left or been answered FAILOVER (or one
heartbeat interval, capped by ``timing.shutdown_timeout``, has passed) it
exits 0; a peer tells its hub it is shutting down and exits 0.

Exit statuses: 0 after a clean stop; 1 when it cannot start (store
unreachable, address or control socket in use); 65 (EX_DATAERR) when the
register fails its integrity check; 78 is the CLI's for configuration errors.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import TypeVar

import trio

from sorcha_peerd.config import Settings
from sorcha_peerd.hub.control import HubControl
from sorcha_peerd.hub.seed import IntegrityError, check_integrity, seed_default
from sorcha_peerd.hub.service import HubConfig, HubService
from sorcha_peerd.peer.control import PeerControl
from sorcha_peerd.peer.link import HubEndpoint
from sorcha_peerd.peer.node import Peer, dialable_hubs
from sorcha_peerd.peer.replica import Replica, ReplicaView
from sorcha_peerd.peer.session import PeerTiming
from sorcha_peerd.register import Limits
from sorcha_peerd.runtime import DaemonContext, Runtime, StartError, open_signals
from sorcha_peerd.store import StoreError, open_store
from sorcha_peerd.store.base import RegisterStore
from sorcha_peerd.store.sqlite import SqliteRegisterStore
from sorcha_peerd.wire.server import BindError, GrpcServer

log = logging.getLogger(__name__)
E = TypeVar("E", bound=BaseException)

EX_OK = 0
EX_START_FAILED = 1
EX_DATAERR = 65


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
        mongodb_timeout=s.mongodb_timeout,
    )


async def run_hub(
    settings: Settings,
    context: DaemonContext | None = None,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve as a hub until cancelled or signalled; ``task_status`` gets the gRPC port.

    Raises :class:`StartError` when it cannot start.
    """
    runtime = Runtime(settings, context or DaemonContext())
    settings.node.state_dir.mkdir(parents=True, exist_ok=True)
    # From the very start, so that a SIGTERM during start-up is a clean stop
    # (served by the drain right after) rather than Python's default death.
    with open_signals() as signals:
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
                await _serve_hub(runtime, store, signals, last_publish, task_status)
        except StoreError as exc:
            raise StartError(f"store unavailable: {exc}") from None


async def _serve_hub(
    runtime: Runtime,
    store: RegisterStore,
    signals: AsyncIterator[int],
    last_publish_ms: int,
    task_status: trio.TaskStatus[int],
) -> None:
    settings = runtime.settings
    service = HubService(hub_config(settings), store, telemetry=runtime.telemetry)
    await service.prepare(last_publish_ms)
    listen = settings.grpc.listen
    grpc_server = GrpcServer(listen.host, listen.port, service.handlers())
    backend = HubControl(
        service,
        str(listen),
        settings.store.backend,
        runtime.reload,
        runtime.telemetry.metrics_snapshot,
    )

    def apply(new: Settings, keys: Iterable[str]) -> None:
        service.reconfigure(hub_config(new))

    runtime.on_reload(apply)
    runtime.status_from(
        lambda: (
            f"hub {settings.node.id}: {'draining' if service.draining else 'serving'}, "
            f"version {service.state.head_version}, {service.state.active_blueprints} "
            f"blueprints, {len(service.sessions)} peers"
        )
    )
    async with trio.open_nursery() as nursery:
        try:
            port = await nursery.start(grpc_server.serve)
        except BindError as exc:
            raise StartError(str(exc)) from None
        await runtime.serve_controls(nursery, backend)
        await nursery.start(service.run)
        log.info(
            "hub %s serving the system register on %s:%d (store: %s, version %d)",
            settings.node.id,
            listen.host,
            port,
            settings.store.backend,
            service.state.head_version,
        )
        runtime.ready(nursery)
        task_status.started(port)
        await runtime.supervise(signals)
        log.info("draining: sending peers to their next hub")
        service.drain()
        runtime.send_status()
        timing = runtime.reloader.current.timing
        with trio.move_on_after(min(timing.heartbeat_interval, timing.shutdown_timeout)):
            await _until(service.sessions.all_sent_away)
        nursery.cancel_scope.cancel()
    await runtime.telemetry.aclose()
    log.info("hub %s stopped", settings.node.id)


async def _until(predicate: Callable[[], bool], interval: float = 0.05) -> None:
    while not predicate():  # noqa: ASYNC110 - session table state has no event of its own
        await trio.sleep(interval)


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
    settings: Settings,
    context: DaemonContext | None = None,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Keep and serve a replica until cancelled or signalled. Raises :class:`StartError`."""
    runtime = Runtime(settings, context or DaemonContext())
    settings.node.state_dir.mkdir(parents=True, exist_ok=True)
    with open_signals() as signals:
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
                await _serve_peer(runtime, hubs, replica, view, signals, task_status)
        except StoreError as exc:
            raise StartError(f"replica store unavailable: {exc}") from None


async def _serve_peer(
    runtime: Runtime,
    hubs: Sequence[HubEndpoint],
    replica: Replica,
    view: ReplicaView,
    signals: AsyncIterator[int],
    task_status: trio.TaskStatus[None],
) -> None:
    settings = runtime.settings
    t = settings.timing
    peer = Peer(
        settings.node.id,
        hubs,
        replica,
        peer_timing(settings),
        t.connect_timeout,
        # what a replica accepts is the contract's limits, whatever this node
        # would accept for publishing: a hub's valid entry must never stall it
        Limits(),
        backoff_initial=t.backoff_initial,
        backoff_max=t.backoff_max,
        telemetry=runtime.telemetry,
    )

    def apply(new: Settings, keys: Iterable[str]) -> None:
        nt = new.timing
        peer.reconfigure(
            hubs=dialable_hubs(new),
            timing=peer_timing(new),
            connect_timeout=nt.connect_timeout,
            limits=Limits(),
            backoff_initial=nt.backoff_initial,
            backoff_max=nt.backoff_max,
        )

    def check(new: Settings) -> list[str]:
        if not dialable_hubs(new):
            return ["hubs: no hub left to dial (this node itself is never dialed)"]
        return []

    runtime.check_with(check)
    runtime.on_reload(apply)
    runtime.status_from(lambda: peer_status_line(peer))
    async with trio.open_nursery() as nursery:
        await runtime.serve_controls(
            nursery, PeerControl(peer, runtime.reload, runtime.telemetry.metrics_snapshot)
        )
        await nursery.start(peer.run)
        log.info(
            "peer %s serving its replica (version %d, %d blueprints); hubs: %s",
            settings.node.id,
            view.checkpoint.version,
            view.snapshot.active_count,
            ", ".join(f"{h.id}={h.host}:{h.port}" for h in hubs),
        )
        runtime.ready(nursery)
        task_status.started()
        await runtime.supervise(signals)
        log.info("stopping: telling the hub")
        await peer.shutdown()
        nursery.cancel_scope.cancel()
    await runtime.telemetry.aclose()
    log.info("peer %s stopped", settings.node.id)


def peer_status_line(peer: Peer) -> str:
    view = peer.replica.view
    hub = peer.link.current
    where = f"connected to {hub.id}" if hub is not None else peer.connection_status
    sync = "in sync" if peer.in_sync else "behind"
    return (
        f"peer {peer.node_id}: {where}, version {view.checkpoint.version} ({sync}), "
        f"{view.snapshot.active_count} blueprints"
    )


def run_daemon(settings: Settings, context: DaemonContext | None = None) -> int:
    """Run the role the settings name; returns the exit status."""
    role = run_hub if settings.node.effective_role == "hub" else run_peer
    failure: StartError | None = None
    try:
        trio.run(role, settings, context)
    except* StartError as group:  # raised in the role's nursery, so it arrives grouped
        failure = _first(group)
    except* StoreError as group:  # the store failed for good while serving
        failure = StartError(f"store unavailable: {_first(group)}")
    if failure is not None:
        log.critical("cannot start: %s", failure)
        return failure.code
    return EX_OK


def _first(group: BaseExceptionGroup[E]) -> E:
    """The first leaf of a group that ``except*`` already filtered to one type."""
    leaf: BaseException = group
    while isinstance(leaf, BaseExceptionGroup):
        leaf = leaf.exceptions[0]
    return leaf  # type: ignore[return-value]
