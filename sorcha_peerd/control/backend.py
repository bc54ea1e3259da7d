"""What the control server needs from a role: the :class:`ControlBackend` protocol.

The server is role-agnostic: it speaks varlink and maps exceptions to errors;
the hub and the peer each hand it an object that answers the five questions
below from their own state. A role that cannot do something (a peer asked to
publish) raises :class:`NotSupported` rather than pretending.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

from sorcha_peerd.register import Entry


class NotSupported(Exception):
    """This node's role cannot do what was asked; ``reason`` tells the operator where to go."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SyncFailed(Exception):
    """A sync asked for on the control socket could not be done (no hub, hub refused...)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ConfigInvalid(Exception):
    """A reload found a configuration that does not validate; nothing was changed."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class ControlBackend(Protocol):
    """The role's side of the control socket.

    Errors: ``register.ValidationError`` (bad argument), ``store.NotFound``,
    :class:`NotSupported` and ``store.StoreError`` are reported to the client as
    such; anything else becomes an opaque ``InternalError`` (and is logged).
    """

    async def status(self) -> Mapping[str, Any]:
        """JSON-able state: at least role, node_id, status, version and blueprints."""
        ...

    async def list_blueprints(
        self, *, include_inactive: bool, after_version: int, limit: int
    ) -> Sequence[Entry]:
        """At most ``limit`` entries with version > ``after_version``, in version order."""
        ...

    async def get_blueprint(self, blueprint_id: str) -> Entry | None: ...

    async def publish(
        self,
        blueprint_id: str,
        document: bytes,
        *,
        publisher: str,
        metadata: Mapping[str, str],
    ) -> Entry: ...

    async def deprecate(self, blueprint_id: str, *, deprecated_by: str) -> Entry: ...

    async def sync(self, *, full: bool) -> Mapping[str, Any]:
        """Synchronise with the hub now and report how it went (a peer; a hub is the source)."""
        ...

    async def reload(self, *, check: bool) -> Mapping[str, Any]:
        """Re-read the configuration; apply what can change live unless ``check``.

        Raises :class:`ConfigInvalid` (and changes nothing) when it does not validate.
        """
        ...

    async def metrics(self) -> Mapping[str, Any]:
        """The current metric values, JSON-able."""
        ...


class DaemonOperations:
    """``reload`` and ``metrics`` for a role's backend: both belong to the daemon, not the role.

    A backend that mixes this in has ``reload_hook`` (the daemon's reload,
    shared with SIGHUP) and ``metrics_hook`` (the telemetry snapshot).
    """

    reload_hook: Callable[..., Awaitable[Mapping[str, Any]]] | None
    metrics_hook: Callable[[], Mapping[str, Any]] | None

    async def reload(self, *, check: bool) -> Mapping[str, Any]:
        if self.reload_hook is None:
            raise NotSupported("this daemon was started without a configuration to reload")
        return await self.reload_hook(check=check)

    async def metrics(self) -> Mapping[str, Any]:
        return self.metrics_hook() if self.metrics_hook is not None else {}
