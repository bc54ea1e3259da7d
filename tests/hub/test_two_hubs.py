"""Two hubs on one MongoDB serve one register (wire-protocol server from tests/conftest.py)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

from sorcha_peerd.store.mongodb import MongoRegisterStore
from sorcha_peerd.wire import messages as pb
from sorcha_peerd.wire import services
from sorcha_peerd.wire.client import open_channel
from tests.hub.hub_harness import RunningHub, running_hub
from tests.waiting import wait_until


@pytest.fixture
async def two_hubs(mongodb_uri: str) -> AsyncIterator[tuple[RunningHub, RunningHub]]:
    database = f"sorcha_two_hubs_{uuid.uuid4().hex[:12]}"
    async with (
        MongoRegisterStore(mongodb_uri, database, poll_interval=0.05) as store_a,
        MongoRegisterStore(mongodb_uri, database, poll_interval=0.05) as store_b,
        running_hub(store_a, node_id="n0") as a,
        running_hub(store_b, node_id="n1") as b,
    ):
        yield a, b


async def test_a_publish_through_one_hub_is_pushed_by_the_other(
    two_hubs: tuple[RunningHub, RunningHub],
) -> None:
    a, b = two_hubs
    got: list[Any] = []
    async with open_channel("127.0.0.1", b.port, connect_timeout=5) as ch:
        request = pb.SubscriptionRequest(peer_id="p-on-b")
        async with ch.server_stream(services.SUBSCRIBE, request, timeout=20) as notes:
            await wait_until(lambda: len(b.service.fanout) == 1)
            await a.store.publish("via-a", b'{"id": "via-a"}', published_by="ops")
            await a.store.deprecate("via-a", deprecated_by="ops")
            async for note in notes:
                got.append((note.blueprint_id, note.type, note.sequence_number))
                if note.type == pb.NotificationType.BLUEPRINT_DEPRECATED:
                    break
    # an id changed twice between two polls may be seen once, at its newest version
    assert got[-1] == ("via-a", pb.NotificationType.BLUEPRINT_DEPRECATED, len(got))


async def test_incremental_paging_misses_nothing_while_both_hubs_publish(
    two_hubs: tuple[RunningHub, RunningHub],
) -> None:
    a, b = two_hubs
    per_hub = 40
    published: dict[str, int] = {}
    done = trio.Event()

    async def publisher(hub: RunningHub, prefix: str) -> None:
        for i in range(per_hub):
            entry = await hub.store.publish(f"{prefix}-{i}", b"{}", published_by=prefix)
            published[entry.blueprint_id] = entry.version

    seen: dict[str, int] = {}
    versions: list[int] = []

    async def pager() -> None:
        async with open_channel("127.0.0.1", b.port, connect_timeout=5) as ch:
            last = 0
            while True:
                finished = done.is_set()
                request = pb.SyncRequest(peer_id="pager", last_known_version=last, max_blueprints=5)
                async with ch.server_stream(services.INCREMENTAL_SYNC, request, timeout=10) as page:
                    batch = [e async for e in page]
                for e in batch:
                    seen[e.blueprint_id] = e.version
                    versions.append(e.version)
                    last = e.version
                if finished and not batch:
                    return
                if not batch:
                    await trio.sleep(0.01)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(pager)
        async with trio.open_nursery() as publishers:
            publishers.start_soon(publisher, a, "a")
            publishers.start_soon(publisher, b, "b")
        done.set()
    assert versions == sorted(set(versions)), "versions came out of order or twice"
    missing = {bid for bid, v in published.items() if seen.get(bid) != v}
    assert not missing, f"the pager skipped {sorted(missing)}"
    assert len(published) == 2 * per_hub
