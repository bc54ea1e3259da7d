"""Concurrent writers against one register: a reader paging by version must miss nothing.

The reader pages with ``read_since(last_seen)`` where ``last_seen`` is the
highest version it has seen, exactly as a peer's incremental sync does. If a
backend ever served a version while a lower one was still uncommitted, the
lower one would be skipped for good and the final check would fail.
"""

from __future__ import annotations

import functools
import json
import random
import sys
import threading
import time
from collections import defaultdict
from contextlib import aclosing
from typing import Any

import pytest
import trio

from sorcha_peerd.register import Entry
from sorcha_peerd.store.base import RegisterStore
from sorcha_peerd.store.mongodb import MongoRegisterStore, horizon_of
from tests.store.store_backends import Backend

PUBLISHERS = 4
IDS_PER_PUBLISHER = 50


def doc(**fields: object) -> bytes:
    return json.dumps(fields, sort_keys=True).encode()


class Reader:
    """Pages like a peer: version > last_seen, checking order as it goes."""

    def __init__(self, store: RegisterStore) -> None:
        self.store = store
        self.last_seen = 0
        self.seen: dict[str, int] = {}

    async def read_once(self, limit: int = 17) -> int:
        page = await self.store.read_since(self.last_seen, limit)
        for e in page:
            assert e.version > self.last_seen, "versions must be strictly increasing"
            self.last_seen = e.version
            self.seen[e.blueprint_id] = e.version
        return len(page)

    async def catch_up(self) -> None:
        while await self.read_once():
            pass


class JitteryStore(MongoRegisterStore):
    """Widens the window between taking a version and writing the entry, as a
    loaded server or a GC pause would, so that writers really do commit out of
    version order."""

    def __init__(self, *args: Any, seed: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rng = random.Random(seed)

    def _write_entry(self, current: Entry | None, entry: Entry) -> bool:
        time.sleep(self._rng.choice((0.0, 0.0, 0.001, 0.004)))
        return super()._write_entry(current, entry)


def publisher_store(backend: Backend, n: int) -> RegisterStore:
    if backend.kind == "mongodb":
        assert backend.mongodb_uri is not None
        return JitteryStore(backend.mongodb_uri, backend.database, seed=n)
    return backend.make()


async def test_concurrent_publishers_reader_misses_nothing(backend: Backend) -> None:
    acked: dict[str, list[int]] = defaultdict(list)
    stores = [publisher_store(backend, n) for n in range(PUBLISHERS)]
    for s in stores:
        await s.open()
    try:
        async with backend.make() as reader_store:
            reader = Reader(reader_store)
            done = trio.Event()

            async def publisher(n: int, s: RegisterStore) -> None:
                for j in range(IDS_PER_PUBLISHER):
                    e = await s.publish(f"p{n}-{j}", doc(n=n, j=j), published_by=f"hub{n}")
                    acked[e.blueprint_id].append(e.version)
                    if j % 5 == 0:  # racing updates of ids shared by every publisher
                        shared = f"shared-{j % 3}"
                        e = await s.publish(shared, doc(n=n, j=j), published_by=f"hub{n}")
                        acked[shared].append(e.version)
                    if j % 10 == 9:  # and a deprecation of one of its own
                        e = await s.deprecate(f"p{n}-{j - 3}", deprecated_by=f"hub{n}")
                        acked[e.blueprint_id].append(e.version)

            async def read_until_done() -> None:
                while not done.is_set():
                    if not await reader.read_once():
                        await trio.sleep(0.002)

            with trio.fail_after(50):
                async with trio.open_nursery() as outer:
                    outer.start_soon(read_until_done)
                    async with trio.open_nursery() as writers:
                        for n, s in enumerate(stores):
                            writers.start_soon(publisher, n, s)
                    done.set()
                await reader.catch_up()

            assert len(acked) == PUBLISHERS * IDS_PER_PUBLISHER + 3
            for bid, versions in acked.items():
                final = await reader_store.get(bid)
                assert final is not None
                assert final.version >= max(versions)
                assert reader.seen.get(bid) == final.version, f"reader missed {bid}"
            assert await reader_store.counts() == (len(acked) - PUBLISHERS * 5, len(acked))
    finally:
        for s in stores:
            await s.aclose()


_CHILD = """
import sys, trio
from pathlib import Path
from sorcha_peerd.store import open_store

async def main(kind, where, db):
    store = open_store(kind, sqlite_path=Path(where) if kind == "sqlite" else None,
                       mongodb_uri=where if kind == "mongodb" else None, mongodb_database=db)
    async with store:
        for i in range(20):
            await store.publish(f"child-{i}", b'{"i": %d}' % i, published_by="child")

trio.run(main, *sys.argv[1:])
"""


async def test_writes_from_another_process_reach_watch(backend: Backend) -> None:
    where = str(backend.sqlite_path) if backend.kind == "sqlite" else backend.mongodb_uri
    async with backend.make(poll_interval=0.02) as s:
        await s.publish("parent", doc(), published_by="p")  # schema exists before the child
        got: dict[str, int] = {}
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                argv = [sys.executable, "-c", _CHILD, backend.kind, str(where), backend.database]
                nursery.start_soon(functools.partial(trio.run_process, argv))
                async with aclosing(s.watch(1, page_size=7)) as feed:
                    async for batch in feed:
                        got.update((e.blueprint_id, e.version) for e in batch)
                        if len(got) == 20:
                            break
        assert sorted(got.values()) == list(range(2, 22))


# --------------------------------------------------------------------------- MongoDB: the real race


class GatedStore(MongoRegisterStore):
    """A MongoDB store whose next publish stops right after taking its version.

    That is the window the pending list exists for: a slow (or crashed) writer
    holding version v while others commit v+1, v+2...
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hold = True
        self.allocated = threading.Event()
        self.gate = threading.Event()
        self.held_version = 0

    def _allocate_version(self) -> int:
        v = super()._allocate_version()
        if self.hold:
            self.hold = False
            self.held_version = v
            self.allocated.set()
            if not self.gate.wait(timeout=20):
                raise RuntimeError("test gate never opened")
        return v


def gated(backend: Backend, **kw: Any) -> GatedStore:
    assert backend.mongodb_uri is not None
    return GatedStore(backend.mongodb_uri, backend.database, poll_interval=0.05, **kw)


def mongo(backend: Backend, **kw: Any) -> MongoRegisterStore:
    store = backend.make(**kw)
    assert isinstance(store, MongoRegisterStore)
    return store


async def test_slow_writer_holds_back_later_versions(mongo_backend: Backend) -> None:
    async with (
        gated(mongo_backend) as slow,
        mongo(mongo_backend) as fast,
        mongo(mongo_backend) as reader,
    ):
        await fast.publish("base", doc(), published_by="p")  # v1
        results: list[Entry] = []
        async with trio.open_nursery() as nursery:

            async def slow_publish() -> None:
                results.append(await slow.publish("slow", doc(s=1), published_by="slow"))

            nursery.start_soon(slow_publish)
            try:
                await trio.to_thread.run_sync(slow.allocated.wait, 10)
                assert slow.held_version == 2
                fast_entry = await fast.publish("fast", doc(f=1), published_by="fast")
                assert fast_entry.version == 3  # acknowledged...
                # ...but not served: version 2 is still in flight
                assert await reader.head_version() == 1
                assert [e.version for e in await reader.read_since(0, 10)] == [1]
                assert await reader.read_since(1, 10) == []
            finally:
                slow.gate.set()
        assert results[0].version == 2
        assert await reader.head_version() == 3
        got = await reader.read_since(1, 10)
        assert [(e.blueprint_id, e.version) for e in got] == [("slow", 2), ("fast", 3)]


async def test_lease_reaps_slow_writer_which_restamps(mongo_backend: Backend) -> None:
    lease = 0.3
    async with (
        gated(mongo_backend, lease=lease) as slow,
        mongo(mongo_backend, lease=lease) as fast,
        mongo(mongo_backend, lease=lease) as reader_store,
    ):
        reader = Reader(reader_store)
        await fast.publish("base", doc(), published_by="p")  # v1
        results: list[Entry] = []
        async with trio.open_nursery() as nursery:

            async def slow_publish() -> None:
                results.append(await slow.publish("slow", doc(s=1), published_by="slow"))

            nursery.start_soon(slow_publish)
            try:
                await trio.to_thread.run_sync(slow.allocated.wait, 10)
                await fast.publish("fast", doc(f=1), published_by="fast")  # v3
                await reader.catch_up()
                assert reader.seen == {"base": 1}
                await trio.sleep(lease + 0.2)
                # the lease expired: the reader reaps v2 and moves past it
                await reader.catch_up()
                assert reader.seen == {"base": 1, "fast": 3}
            finally:
                slow.gate.set()
        # the slow writer found v2 reaped and re-stamped its entry above the cursor
        assert results[0].version > 3
        stored = await reader_store.get("slow")
        assert stored is not None and stored.version == results[0].version
        await reader.catch_up()
        assert reader.seen["slow"] == results[0].version


async def test_crashed_writer_blocks_readers_only_for_the_lease(mongo_backend: Backend) -> None:
    lease = 0.3
    async with (
        mongo(mongo_backend, lease=lease) as crashed,
        mongo(mongo_backend, lease=lease) as fast,
        mongo(mongo_backend, lease=lease) as reader,
    ):
        orphan = await trio.to_thread.run_sync(crashed._allocate_version)  # never released
        e = await fast.publish("after-crash", doc(), published_by="p")
        assert e.version == orphan + 1
        assert await reader.read_since(0, 10) == []
        assert await reader.head_version() == orphan - 1
        with trio.fail_after(5):
            async with aclosing(reader.watch(0)) as feed:
                batch = await feed.__anext__()
        assert [x.version for x in batch] == [orphan + 1]
        assert await reader.head_version() == orphan + 1


@pytest.mark.parametrize(
    ("counter", "horizon"),
    [
        ({"next": 0, "pending": {}}, 0),
        ({"next": 9, "pending": {}}, 9),
        ({"next": 9, "pending": {"7": 1, "9": 2}}, 6),
        ({"next": 9, "pending": {"10": 1, "8": 2}}, 7),  # numeric, not string, order
        ({"next": 3}, 3),
    ],
)
def test_horizon_of(counter: dict[str, Any], horizon: int) -> None:
    assert horizon_of(counter) == horizon
