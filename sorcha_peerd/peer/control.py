"""The peer's answers on the control socket: its connection, its replica, and syncs on demand.

Everything is read from the current immutable snapshot and the peer's state,
so a status or a listing never waits for a sync in progress. Publishing is a
hub's job: a peer refuses it and says where to go.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import attrs
import trio

from sorcha_peerd.control.backend import DaemonOperations, NotSupported, SyncFailed
from sorcha_peerd.peer.link import LinkState
from sorcha_peerd.peer.node import Peer
from sorcha_peerd.register import Entry


@attrs.frozen
class PeerControl(DaemonOperations):
    """A :class:`sorcha_peerd.control.ControlBackend` for a peer."""

    peer: Peer
    reload_hook: Callable[..., Awaitable[Mapping[str, Any]]] | None = None
    metrics_hook: Callable[[], Mapping[str, Any]] | None = None
    sync_timeout: float = 300.0

    async def status(self) -> Mapping[str, Any]:
        p = self.peer
        view = p.replica.view
        monitor = p.state.monitor
        now = trio.current_time()
        hub = p.link.current
        return {
            "role": "peer",
            "node_id": p.node_id,
            "status": p.connection_status,
            "hub": hub.id if hub is not None else None,
            "version": view.checkpoint.version,
            "hub_version": p.state.hub_head,
            "in_sync": p.in_sync,
            "blueprints": view.snapshot.active_count,
            "entries": view.snapshot.count,
            "digest": view.snapshot.digest,
            "missed_heartbeats": monitor.missed if monitor is not None and hub else 0,
            "last_sync": p.state.last_sync_ms or None,
            "last_sync_error": p.state.last_sync_error or None,
            "synced_from": view.checkpoint.hub_id or None,
            "push": "subscribed" if p.state.push_up else "down",
            "rejected_entries": p.state.rejected_entries,
            "notifications": p.state.notifications,
            "failovers": p.link.failovers,
            "active_peers": [
                {
                    "hub": h.hub.id,
                    "address": f"{h.hub.host}:{h.hub.port}",
                    "connected": hub is not None and h.hub == hub,
                    "attempts": h.attempts,
                    "failures": h.failures,
                    "last_failure": h.last_failure_reason or None,
                    "seconds_since_attempt": (
                        round(now - h.last_attempt, 1) if h.last_attempt is not None else None
                    ),
                    "last_heartbeat_ack_seconds": (
                        round(now - monitor.last_ack, 1)
                        if hub is not None
                        and h.hub == hub
                        and monitor is not None
                        and monitor.last_ack is not None
                        else None
                    ),
                    "last_synced_version": (
                        view.checkpoint.version if view.checkpoint.hub_id == h.hub.id else None
                    ),
                }
                for h in p.link.history()
            ],
        }

    async def list_blueprints(
        self, *, include_inactive: bool, after_version: int, limit: int
    ) -> Sequence[Entry]:
        entries = self.peer.replica.view.snapshot.entries.values()
        chosen = sorted(
            (e for e in entries if e.version > after_version and (include_inactive or e.is_active)),
            key=lambda e: e.version,
        )
        return chosen[:limit]

    async def get_blueprint(self, blueprint_id: str) -> Entry | None:
        return self.peer.replica.view.snapshot.get(blueprint_id)

    async def publish(
        self, blueprint_id: str, document: bytes, *, publisher: str, metadata: Mapping[str, str]
    ) -> Entry:
        raise NotSupported("this node is a peer: publish on a hub")

    async def deprecate(self, blueprint_id: str, *, deprecated_by: str) -> Entry:
        raise NotSupported("this node is a peer: deprecate on a hub")

    async def sync(self, *, full: bool) -> Mapping[str, Any]:
        p = self.peer
        if p.link.state is not LinkState.CONNECTED:
            raise SyncFailed(f"not connected to any hub ({p.connection_status})")
        before = p.replica.view.checkpoint.version
        generation = p.requests.want(full=full)
        with trio.move_on_after(self.sync_timeout):
            error = await p.requests.wait_served(generation)
            if error:
                raise SyncFailed(error)
            view = p.replica.view
            return {
                "version": view.checkpoint.version,
                "previous_version": before,
                "full": full,
                "hub": view.checkpoint.hub_id,
                "blueprints": view.snapshot.active_count,
            }
        raise SyncFailed(f"no sync completed within {self.sync_timeout:.0f} s")
