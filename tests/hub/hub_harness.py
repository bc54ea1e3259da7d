"""An in-process hub (store + HubService + GrpcServer) for tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import attrs
import trio

from sorcha_peerd.hub.service import HubConfig, HubService
from sorcha_peerd.store.base import RegisterStore
from sorcha_peerd.wire.server import GrpcServer


@attrs.frozen
class RunningHub:
    service: HubService
    store: RegisterStore
    port: int


@asynccontextmanager
async def running_hub(store: RegisterStore, **config: object) -> AsyncIterator[RunningHub]:
    settings: dict[str, object] = {
        "node_id": "n0",
        "heartbeat_interval": 0.2,
        "heartbeat_timeout": 0.2,
        "page_size": 7,
    }
    settings.update(config)
    service = HubService(HubConfig(**settings), store)  # type: ignore[arg-type]
    await service.prepare()
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        port = await nursery.start(GrpcServer("127.0.0.1", 0, service.handlers()).serve)
        yield RunningHub(service, store, port)
        nursery.cancel_scope.cancel()
