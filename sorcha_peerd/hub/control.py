"""The hub's answers on the control socket: status, the register, publish, deprecate.

Publishes and deprecations go straight to the store; the hub's change feed
then notifies subscribers, exactly as for a change made through another hub.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import attrs

from sorcha_peerd.control.backend import DaemonOperations, NotSupported
from sorcha_peerd.hub.service import HubService
from sorcha_peerd.register import Entry, validate_document


@attrs.frozen
class HubControl(DaemonOperations):
    """A :class:`sorcha_peerd.control.ControlBackend` for a hub."""

    service: HubService
    listen: str
    store_backend: str
    reload_hook: Callable[..., Awaitable[Mapping[str, Any]]] | None = None
    metrics_hook: Callable[[], Mapping[str, Any]] | None = None

    async def status(self) -> Mapping[str, Any]:
        await self.service.refresh_state()
        st = self.service.state
        return {
            "role": "hub",
            "node_id": self.service.config.node_id,
            "status": "draining" if self.service.draining else "serving",
            "version": st.head_version,
            "blueprints": st.active_blueprints,
            "entries": st.total_entries,
            "peers": len(self.service.sessions),
            "subscriptions": len(self.service.fanout),
            "last_publish": st.last_publish_ms,
            "listen": self.listen,
            "max_document_bytes": self.service.config.limits.max_document_bytes,
            "store": self.store_backend,
            "uptime_seconds": self.service.uptime(),
            "connected_peers": [
                {
                    "peer_id": s.peer_id,
                    "address": s.address,
                    "connected_at": s.connected_at_ms,
                    "last_heartbeat": s.last_heartbeat_ms,
                    "last_sync_version": s.last_sync_version,
                    "state": s.state.name.lower(),
                }
                for s in self.service.sessions.sessions()
            ],
        }

    async def list_blueprints(
        self, *, include_inactive: bool, after_version: int, limit: int
    ) -> Sequence[Entry]:
        return await self.service.store.read_since(
            after_version, limit, active_only=not include_inactive
        )

    async def get_blueprint(self, blueprint_id: str) -> Entry | None:
        return await self.service.store.get(blueprint_id)

    async def publish(
        self, blueprint_id: str, document: bytes, *, publisher: str, metadata: Mapping[str, str]
    ) -> Entry:
        validate_document(document, self.service.config.limits)  # this node's own limit
        return await self.service.store.publish(
            blueprint_id, document, published_by=publisher, metadata=metadata
        )

    async def deprecate(self, blueprint_id: str, *, deprecated_by: str) -> Entry:
        return await self.service.store.deprecate(blueprint_id, deprecated_by=deprecated_by)

    async def sync(self, *, full: bool) -> Mapping[str, Any]:
        raise NotSupported("this node is a hub: it is the source of the register, not a replica")
