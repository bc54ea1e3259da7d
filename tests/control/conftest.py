"""Fixtures for the control socket tests: a real SQLite store behind a tiny backend.

The hub's and the peer's real backends come later; :class:`StoreBackend` is
the least that answers the control interface from a store, so the server is
exercised against real entries, real validation and real store errors.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import trio

from sorcha_peerd.control import ControlServer, NotSupported, SyncFailed
from sorcha_peerd.register import Entry
from sorcha_peerd.store.sqlite import SqliteRegisterStore


class StoreBackend:
    """A ControlBackend over a RegisterStore; as a "peer" it refuses writes."""

    def __init__(self, store: SqliteRegisterStore, *, role: str = "hub", node_id: str = "n0"):
        self.store = store
        self.role = role
        self.node_id = node_id

    async def status(self) -> Mapping[str, Any]:
        active, total = await self.store.counts()
        return {
            "role": self.role,
            "node_id": self.node_id,
            "status": "ok",
            "version": await self.store.head_version(),
            "blueprints": active,
            "store": {"backend": "sqlite", "entries": total},
        }

    async def list_blueprints(
        self, *, include_inactive: bool, after_version: int, limit: int
    ) -> Sequence[Entry]:
        return await self.store.read_since(after_version, limit, active_only=not include_inactive)

    async def get_blueprint(self, blueprint_id: str) -> Entry | None:
        return await self.store.get(blueprint_id)

    async def publish(
        self, blueprint_id: str, document: bytes, *, publisher: str, metadata: Mapping[str, str]
    ) -> Entry:
        if self.role != "hub":
            raise NotSupported("this node is a peer; publish on a hub")
        return await self.store.publish(
            blueprint_id, document, published_by=publisher, metadata=metadata
        )

    async def deprecate(self, blueprint_id: str, *, deprecated_by: str) -> Entry:
        if self.role != "hub":
            raise NotSupported("this node is a peer; deprecate on a hub")
        return await self.store.deprecate(blueprint_id, deprecated_by=deprecated_by)

    async def sync(self, *, full: bool) -> Mapping[str, Any]:
        if self.role == "hub":
            raise NotSupported("this node is a hub")
        if self.node_id == "isolated":
            raise SyncFailed("no hub reachable")
        return {"version": await self.store.head_version(), "applied": 0, "full": full}


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A short directory for sockets: pytest's tmp_path can exceed the 107-byte sun_path."""
    path = Path(tempfile.mkdtemp(prefix="spc-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteRegisterStore]:
    async with SqliteRegisterStore(tmp_path / "register.sqlite3") as s:
        yield s


@pytest.fixture
def backend(store: SqliteRegisterStore) -> StoreBackend:
    return StoreBackend(store)


@pytest.fixture
async def server(nursery: trio.Nursery, sock_dir: Path, backend: StoreBackend) -> ControlServer:
    """A running server on ``sock_dir/run/control.sock`` (the directory is created by it)."""
    srv = ControlServer(sock_dir / "run" / "control.sock", backend)
    await nursery.start(srv.serve)
    return srv
