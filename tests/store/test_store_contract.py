"""The register store contract, run against every backend (SQLite and MongoDB)."""

from __future__ import annotations

import json
from contextlib import aclosing
from pathlib import Path

import pytest
import trio

from sorcha_peerd import register
from sorcha_peerd.register import ChangeType, Entry
from sorcha_peerd.store import open_store
from sorcha_peerd.store.base import NotFound, RegisterStore
from sorcha_peerd.store.mongodb import MongoRegisterStore
from sorcha_peerd.store.sqlite import SqliteRegisterStore
from tests.store.store_backends import Backend


def doc(**fields: object) -> bytes:
    return json.dumps(fields, sort_keys=True).encode()


async def collect(store: RegisterStore, after: int = 0, **kw: object) -> list[list[Entry]]:
    pages = []
    async for page in store.iter_since(after, **kw):  # type: ignore[arg-type]
        pages.append(page)
    return pages


# --------------------------------------------------------------------------- writes


async def test_publish_update_deprecate_versions_and_changes(store: RegisterStore) -> None:
    assert await store.head_version() == 0
    a1 = await store.publish("bp-a", doc(n=1), published_by="alice", metadata={"k": "v"})
    assert (a1.version, a1.change, a1.is_active) == (1, ChangeType.PUBLISHED, True)
    assert a1.checksum == register.compute_checksum(doc(n=1))
    assert a1.metadata == {"k": "v"}
    assert len(a1.publication_transaction_id) == 32
    b1 = await store.publish("bp-b", doc(n=1), published_by="bob")
    assert (b1.version, b1.change) == (2, ChangeType.PUBLISHED)
    a2 = await store.publish("bp-a", doc(n=2), published_by="alice")
    assert (a2.version, a2.change, a2.is_active) == (3, ChangeType.UPDATED, True)
    assert a2.metadata == {}
    a3 = await store.deprecate("bp-a", deprecated_by="carol", published_at=1234)
    assert (a3.version, a3.change, a3.is_active) == (4, ChangeType.DEPRECATED, False)
    assert (a3.document, a3.checksum, a3.published_by, a3.published_at) == (
        a2.document,
        a2.checksum,
        "carol",
        1234,
    )
    assert await store.get("bp-a") == a3
    assert await store.get("bp-b") == b1
    assert await store.get("nope") is None
    assert await store.head_version() == 4
    assert await store.counts() == (1, 2)


async def test_given_times_and_transaction_id_are_kept(store: RegisterStore) -> None:
    e = await store.publish("bp", doc(), published_by="p", published_at=42, transaction_id="tx-1")
    assert (e.published_at, e.publication_transaction_id) == (42, "tx-1")
    assert await store.get("bp") == e


async def test_identical_republish_is_idempotent(store: RegisterStore) -> None:
    e1 = await store.publish("bp", doc(x=1), published_by="p", metadata={"a": "1"})
    again = await store.publish("bp", doc(x=1), published_by="someone", metadata={"a": "1"})
    assert again == e1
    assert await store.head_version() == 1
    # a metadata change is a change
    e2 = await store.publish("bp", doc(x=1), published_by="p", metadata={"a": "2"})
    assert (e2.version, e2.change) == (2, ChangeType.UPDATED)


async def test_create_only_returns_existing(store: RegisterStore) -> None:
    first = await store.publish("default", doc(v=1), published_by="seed", create_only=True)
    assert first.version == 1
    other = await store.publish("default", doc(v=2), published_by="seed", create_only=True)
    assert other == first
    await store.deprecate("default", deprecated_by="op")
    kept = await store.publish("default", doc(v=3), published_by="seed", create_only=True)
    assert kept.is_active is False
    assert await store.head_version() == 2


async def test_create_only_races_between_two_store_objects(backend: Backend) -> None:
    async with backend.make() as s1, backend.make() as s2:
        results: list[Entry] = []

        async def seed(s: RegisterStore, n: int) -> None:
            results.append(
                await s.publish("default", doc(hub=n), published_by=f"hub{n}", create_only=True)
            )

        async with trio.open_nursery() as nursery:
            for i in range(3):
                nursery.start_soon(seed, s1, i)
                nursery.start_soon(seed, s2, i + 10)
        assert len({(e.version, e.document) for e in results}) == 1
        assert await s1.counts() == (1, 1)


async def test_republish_reactivates_deprecated(store: RegisterStore) -> None:
    e1 = await store.publish("bp", doc(x=1), published_by="p")
    await store.deprecate("bp", deprecated_by="p")
    # same document again: not idempotent, because the entry is inactive
    e3 = await store.publish("bp", doc(x=1), published_by="p")
    assert (e3.version, e3.change, e3.is_active) == (3, ChangeType.UPDATED, True)
    assert e3.document == e1.document
    assert await store.counts() == (1, 1)


async def test_deprecate_unknown_and_twice(store: RegisterStore) -> None:
    with pytest.raises(NotFound):
        await store.deprecate("ghost", deprecated_by="p")
    await store.publish("bp", doc(), published_by="p")
    d1 = await store.deprecate("bp", deprecated_by="p")
    d2 = await store.deprecate("bp", deprecated_by="q")
    assert d2 == d1
    assert await store.head_version() == 2


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"blueprint_id": "bad id!"}, "blueprint_id"),
        ({"blueprint_id": ""}, "blueprint_id"),
        ({"blueprint_id": "x" * 256}, "blueprint_id"),
        ({"document": b"not json"}, "blueprint_document"),
        ({"document": b""}, "blueprint_document"),
        ({"document": b"\xff\xfe"}, "blueprint_document"),
        ({"published_by": ""}, "published_by"),
        ({"metadata": {"k": "v" * 5000}}, "metadata"),
        ({"metadata": {"": "v"}}, "metadata"),
    ],
)
async def test_validation_errors_change_nothing(
    store: RegisterStore, kwargs: dict[str, object], field: str
) -> None:
    await store.publish("bp", doc(), published_by="p")
    args: dict[str, object] = {
        "blueprint_id": "bp",
        "document": doc(changed=True),
        "published_by": "p",
        "metadata": None,
    }
    args.update(kwargs)
    with pytest.raises(register.ValidationError) as info:
        await store.publish(
            args.pop("blueprint_id"),  # type: ignore[arg-type]
            args.pop("document"),  # type: ignore[arg-type]
            **args,  # type: ignore[arg-type]
        )
    assert info.value.field == field
    with pytest.raises(register.ValidationError):
        await store.deprecate("bp", deprecated_by="")
    assert await store.head_version() == 1
    assert await store.counts() == (1, 1)
    assert (await store.get("bp")) is not None


# --------------------------------------------------------------------------- reads


async def _fill(store: RegisterStore, n: int) -> None:
    for i in range(n):
        await store.publish(f"bp-{i:03d}", doc(i=i), published_by="p")


async def test_read_since_and_active_only(store: RegisterStore) -> None:
    await _fill(store, 6)  # versions 1..6
    await store.deprecate("bp-001", deprecated_by="p")  # -> 7
    await store.publish("bp-003", doc(i=33), published_by="p")  # -> 8
    got = await store.read_since(0, 100)
    assert [e.version for e in got] == [1, 3, 5, 6, 7, 8]
    assert [e.blueprint_id for e in got] == [
        "bp-000", "bp-002", "bp-004", "bp-005", "bp-001", "bp-003",
    ]  # fmt: skip
    assert [e.version for e in await store.read_since(5, 2)] == [6, 7]
    active = await store.read_since(0, 100, active_only=True)
    assert [e.version for e in active] == [1, 3, 5, 6, 8]
    assert all(isinstance(e.is_active, bool) for e in got)
    assert await store.read_since(8, 10) == []
    assert await store.read_since(0, 0) == []


async def test_iter_since_pages(store: RegisterStore) -> None:
    await _fill(store, 11)
    await store.deprecate("bp-000", deprecated_by="p")  # v12
    pages = await collect(store, page_size=4)
    assert [[e.version for e in p] for p in pages] == [
        [2, 3, 4, 5], [6, 7, 8, 9], [10, 11, 12],
    ]  # fmt: skip
    full = await collect(store, page_size=5, active_only=True)
    assert [len(p) for p in full] == [5, 5]
    assert all(e.is_active for p in full for e in p)
    incremental = await collect(store, 9, page_size=2)
    assert [e.version for p in incremental for e in p] == [10, 11, 12]
    capped = await collect(store, page_size=4, max_entries=6)
    assert [len(p) for p in capped] == [4, 2]
    exact = await collect(store, page_size=4, max_entries=8)
    assert [len(p) for p in exact] == [4, 4]
    assert await collect(store, 12) == []


async def test_counts_and_head_empty(store: RegisterStore) -> None:
    assert await store.counts() == (0, 0)
    assert await store.head_version() == 0
    assert await store.read_since(0, 10) == []
    assert await collect(store) == []


async def test_documents_round_trip_exactly(store: RegisterStore) -> None:
    raw = '{"name": "caf\u00e9",  "n": [1, 2.5, null], "deep": {"a": true}}'.encode()
    meta = {"a.b": "1", "$x": "2", "unicode": "\u00e9\u4e2d"}
    e = await store.publish("bp", raw, published_by="p", metadata=meta)
    got = await store.get("bp")
    assert got == e
    assert got is not None and got.document == raw and dict(got.metadata) == meta
    assert got.checksum_ok()


# --------------------------------------------------------------------------- watch


async def test_watch_sees_local_commits_promptly(backend: Backend) -> None:
    # a long poll interval: only the local wake-up can deliver within the timeout
    async with backend.make(poll_interval=30.0) as s:
        await s.publish("old", doc(), published_by="p")
        seen: list[Entry] = []
        async with trio.open_nursery() as nursery:

            async def watcher() -> None:
                async with aclosing(s.watch(1)) as feed:
                    async for batch in feed:
                        seen.extend(batch)
                        if ("a", 4) in [(e.blueprint_id, e.version) for e in seen]:
                            nursery.cancel_scope.cancel()

            nursery.start_soon(watcher)
            await trio.sleep(0.05)
            with trio.fail_after(5):
                await s.publish("a", doc(), published_by="p")
                await s.publish("b", doc(), published_by="p")
                await s.deprecate("a", deprecated_by="p")
                await trio.sleep_forever()
        assert [(e.blueprint_id, e.version) for e in seen][-1] == ("a", 4)
        versions = [e.version for e in seen]
        assert versions == sorted(versions) and versions[0] > 1


async def test_watch_sees_commits_of_another_store_object(backend: Backend) -> None:
    async with backend.make(poll_interval=0.05) as watcher, backend.make() as writer:
        got: list[Entry] = []
        with trio.fail_after(10):
            async with aclosing(watcher.watch(0, page_size=2)) as feed:
                await writer.publish("x1", doc(), published_by="hub2")
                await writer.publish("x2", doc(), published_by="hub2")
                await writer.publish("x3", doc(), published_by="hub2")
                async for batch in feed:
                    assert 0 < len(batch) <= 2
                    got.extend(batch)
                    if len(got) == 3:
                        break
        assert [e.version for e in got] == [1, 2, 3]


async def test_watch_coalesces_an_id_changed_twice(backend: Backend) -> None:
    async with backend.make(poll_interval=0.05) as watcher, backend.make() as writer:
        await writer.publish("x", doc(n=1), published_by="p")
        await writer.publish("x", doc(n=2), published_by="p")
        with trio.fail_after(5):
            async with aclosing(watcher.watch(0)) as feed:
                batch = await feed.__anext__()
        assert [(e.blueprint_id, e.version) for e in batch] == [("x", 2)]


# --------------------------------------------------------------------------- meta and replica


async def test_meta_get_set(backend: Backend) -> None:
    async with backend.make() as s1, backend.make() as s2:
        assert await s1.get_meta("checkpoint") is None
        await s1.set_meta("checkpoint", "17")
        await s1.set_meta("checkpoint", "18")
        await s1.set_meta("hub", "n0")
        assert await s2.get_meta("checkpoint") == "18"
        assert await s2.get_meta("hub") == "n0"
    async with backend.make() as s3:  # durable across reopen
        assert await s3.get_meta("checkpoint") == "18"


def hub_entry(bid: str, version: int, *, active: bool = True, n: int = 0) -> Entry:
    return Entry(
        blueprint_id=bid,
        version=version,
        document=doc(id=bid, n=n),
        published_at=1000 + version,
        published_by="hub",
        is_active=active,
        publication_transaction_id=f"tx{version}",
        metadata={"v": str(version)},
        change=ChangeType.PUBLISHED if active else ChangeType.DEPRECATED,
    ).with_checksum()


async def test_apply_replica(backend: Backend) -> None:
    async with backend.make() as s:
        batch = [hub_entry("a", 5), hub_entry("b", 9), hub_entry("c", 12, active=False)]
        if isinstance(s, MongoRegisterStore):
            with pytest.raises(NotImplementedError):
                await s.apply_replica(batch, {"checkpoint": "12"})
            return
        await s.apply_replica(batch, {"checkpoint": "12", "hub": "n1"})
        assert await s.get("a") == batch[0]
        assert await s.get("c") == batch[2]
        assert await s.get_meta("checkpoint") == "12"
        assert await s.counts() == (2, 3)
        assert await s.head_version() == 12
        # an older version of an id never replaces a newer one; a newer one does
        await s.apply_replica([hub_entry("a", 3, n=9), hub_entry("b", 15, n=1)], {})
        assert await s.get("a") == batch[0]
        b = await s.get("b")
        assert b is not None and b.version == 15
        assert [e.version for e in await s.read_since(0, 10)] == [5, 12, 15]
        # an invalid entry rejects the whole call and changes nothing
        bad = attrs_evolve_checksum(hub_entry("d", 20))
        with pytest.raises(register.ValidationError):
            await s.apply_replica([hub_entry("e", 19), bad], {"checkpoint": "20"})
        assert await s.get("e") is None
        assert await s.get_meta("checkpoint") == "12"
        # local publishing after replication continues above the replica's head
        e = await s.publish("local", doc(), published_by="p")
        assert e.version == 16


def attrs_evolve_checksum(e: Entry) -> Entry:
    import attrs

    return attrs.evolve(e, checksum="sha256:" + "0" * 64)


async def test_apply_replica_is_one_transaction(tmp_path: Path) -> None:
    async with SqliteRegisterStore(tmp_path / "r.db") as s:
        await s.apply_replica([hub_entry("a", 1)], {"checkpoint": "1"})
        # a version already held by another id breaks the UNIQUE constraint mid-batch
        with pytest.raises(Exception, match="UNIQUE"):
            await s.apply_replica([hub_entry("b", 2), hub_entry("c", 1)], {"checkpoint": "2"})
        assert await s.get("b") is None
        assert await s.get_meta("checkpoint") == "1"


# --------------------------------------------------------------------------- factory and lifecycle


async def test_factory(tmp_path: Path, mongodb_uri: str) -> None:
    s = open_store("sqlite", sqlite_path=tmp_path / "f.db", mongodb_uri=None, mongodb_database=None)
    assert isinstance(s, SqliteRegisterStore)
    async with s:
        await s.publish("bp", doc(), published_by="p")
    m = open_store("mongodb", sqlite_path=None, mongodb_uri=mongodb_uri, mongodb_database="f")
    assert isinstance(m, MongoRegisterStore)
    for bad in ("postgres", ""):
        with pytest.raises(ValueError, match="backend"):
            open_store(bad, sqlite_path=tmp_path / "x", mongodb_uri=None, mongodb_database=None)
    with pytest.raises(ValueError):
        open_store("sqlite", sqlite_path=None, mongodb_uri=None, mongodb_database=None)
    with pytest.raises(ValueError):
        open_store("mongodb", sqlite_path=None, mongodb_uri=mongodb_uri, mongodb_database=None)


async def test_closed_store_raises_store_error(backend: Backend) -> None:
    from sorcha_peerd.store.base import StoreError

    s = backend.make()
    with pytest.raises(StoreError):
        await s.get("x")
    async with s:
        await s.publish("x", doc(), published_by="p")
    with pytest.raises(StoreError):
        await s.head_version()
    async with s:  # reopening works and sees the data
        assert (await s.get("x")) is not None


async def test_unreachable_mongodb_is_store_error() -> None:
    from sorcha_peerd.store.base import StoreError

    s = MongoRegisterStore(
        "mongodb://127.0.0.1:1/?directConnection=true", "x", server_selection_timeout=0.2
    )
    with pytest.raises(StoreError):
        await s.open()
