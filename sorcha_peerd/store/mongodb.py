"""The shared register store: one MongoDB database behind several hubs.

The problem this module solves (docs/stores.md tells it in full): MongoDB
(standalone) has no multi-document transactions, so "take the next version"
and "write the entry" are two writes. With a plain ``$inc`` counter, writer A
takes 7, writer B takes 8 and commits first; a reader paging by
``version > last_seen`` serves 8, moves past it, and never sees 7.

The counter document therefore also records which allocated versions are not
yet committed::

    {_id: "register", next: N, pending: {"<version>": <allocated at, Unix ms>}}

- allocate: compare-and-swap on ``next`` that sets ``next = N+1`` AND adds
  ``pending.<N+1>`` in the same single-document (hence atomic) update;
- write the entry, conditional on the previous version of that id (so two
  updates of one id serialise); a lost race releases the version and retries;
- release: atomically remove ``pending.<v>`` if it is still there.

Readers serve only versions <= the *horizon*: ``min(pending) - 1`` when
anything is pending, else ``next``. A writer that dies leaves its version
pending; anyone who sees a pending version older than the lease removes it
(reaping), so readers are never blocked for longer than the lease. A writer
that finds its version already reaped when releasing re-stamps its entry with
a fresh version: a reader may have moved past the reaped one.

``pending`` is a sub-document keyed by version rather than an array of
``{v, at}`` because nx-27017 (the test stand-in) mangles ``$push``/``$pull`` of
sub-documents; ``$set``/``$unset`` of one key is atomic on both servers.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import attrs
import pymongo
import trio
from pymongo.collection import Collection
from pymongo.errors import DuplicateKeyError, PyMongoError

from sorcha_peerd.register import ChangeType, Entry
from sorcha_peerd.store.base import (
    Change,
    RegisterStore,
    StoreError,
    metadata_from_json,
    metadata_to_json,
    now_ms,
)

T = TypeVar("T")
Doc = dict[str, Any]

ENTRIES = "system_register"
COUNTER = "system_register_counter"
META = "node_meta"
_COUNTER_ID = "register"
#: compare-and-swap tries before a publish gives up (each loses only to a commit elsewhere)
_CAS_ATTEMPTS = 1000


def entry_to_doc(entry: Entry) -> Doc:
    # metadata is JSON text: its keys are arbitrary strings ("a.b", "$x"),
    # which MongoDB restricts as field names in updates.
    return {
        "_id": entry.blueprint_id,
        "version": entry.version,
        "document": entry.document,
        "published_at": entry.published_at,
        "published_by": entry.published_by,
        "is_active": bool(entry.is_active),
        "publication_transaction_id": entry.publication_transaction_id,
        "checksum": entry.checksum,
        "metadata": metadata_to_json(entry.metadata),
        "change": int(entry.change),
    }


def doc_to_entry(doc: Mapping[str, Any]) -> Entry:
    """Normalise on read: nx-27017 returns booleans it stored by ``$set`` as 0/1."""
    try:
        return Entry(
            blueprint_id=str(doc["_id"]),
            version=int(doc["version"]),
            document=bytes(doc["document"]),
            published_at=int(doc["published_at"]),
            published_by=str(doc["published_by"]),
            is_active=bool(doc["is_active"]),
            publication_transaction_id=str(doc["publication_transaction_id"]),
            checksum=str(doc["checksum"]),
            metadata=metadata_from_json(doc["metadata"]),
            change=ChangeType(int(doc["change"])),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise StoreError(f"corrupt register entry {doc.get('_id')!r}: {exc!r}") from exc


def horizon_of(counter: Mapping[str, Any]) -> int:
    """The highest version that can be served: below the oldest pending one."""
    pending = [int(v) for v in counter.get("pending") or {}]
    return min(pending) - 1 if pending else int(counter.get("next", 0))


class MongoRegisterStore(RegisterStore):
    """The register in a MongoDB database, safe for several hubs at once."""

    def __init__(
        self,
        uri: str,
        database: str,
        *,
        poll_interval: float = 0.5,
        lease: float = 30.0,
        server_selection_timeout: float = 10.0,
    ) -> None:
        super().__init__(poll_interval=poll_interval)
        if lease <= 0:
            raise ValueError("lease must be positive")
        self.uri = uri
        self.database = database
        self.lease = lease
        self.server_selection_timeout = server_selection_timeout
        self._client: pymongo.MongoClient[Doc] | None = None

    # -- plumbing

    def _coll(self, name: str) -> Collection[Doc]:
        if self._client is None:
            raise StoreError(f"mongodb store {self.database} is not open")
        return self._client[self.database][name]

    async def _run(self, fn: Callable[[], T]) -> T:
        def work() -> T:
            try:
                return fn()
            except PyMongoError as exc:
                raise StoreError(f"mongodb store {self.database}: {exc}") from exc

        return await trio.to_thread.run_sync(work)

    # -- lifecycle

    async def open(self) -> None:
        def setup() -> None:
            client: pymongo.MongoClient[Doc] = pymongo.MongoClient(
                self.uri,
                serverSelectionTimeoutMS=int(self.server_selection_timeout * 1000),
            )
            try:
                client.admin.command("ping")
                db = client[self.database]
                entries = db[ENTRIES]
                entries.create_index("version", unique=True, name="version_unique")
                entries.create_index([("published_at", pymongo.DESCENDING)], name="published_at")
                entries.create_index([("is_active", 1), ("version", 1)], name="active_version")
                try:
                    db[COUNTER].update_one(
                        {"_id": _COUNTER_ID},
                        {"$setOnInsert": {"next": 0, "pending": {}}},
                        upsert=True,
                    )
                except DuplicateKeyError:
                    pass  # another hub created it at the same instant
            except BaseException:
                client.close()
                raise
            self._client = client

        await self._run(setup)

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await trio.to_thread.run_sync(client.close)

    # -- version allocation (blocking; called in worker threads)

    def _read_counter(self) -> Doc:
        """The counter document, with pending versions older than the lease reaped."""
        counters = self._coll(COUNTER)
        doc = counters.find_one({"_id": _COUNTER_ID})
        if doc is None:
            raise StoreError(f"{self.database}.{COUNTER} has no counter document")
        pending: dict[str, Any] = dict(doc.get("pending") or {})
        deadline = now_ms() - int(self.lease * 1000)
        for key, at in list(pending.items()):
            if int(at) < deadline:
                # Conditional on the same allocation time: removes exactly the
                # stale record, whoever else is reaping or releasing it.
                counters.update_one(
                    {"_id": _COUNTER_ID, f"pending.{key}": at}, {"$unset": {f"pending.{key}": ""}}
                )
                del pending[key]
        doc["pending"] = pending
        return doc

    def _allocate_version(self) -> int:
        """Take ``next + 1`` and mark it pending, in one compare-and-swap."""
        counters = self._coll(COUNTER)
        for attempt in range(_CAS_ATTEMPTS):
            n = int(self._read_counter()["next"])
            v = n + 1
            res = counters.update_one(
                {"_id": _COUNTER_ID, "next": n},
                {"$set": {"next": v, f"pending.{v}": now_ms()}},
            )
            if res.matched_count == 1:
                return v
            # lost the CAS to another writer: read again, backing off a little
            # (with jitter) so that many contending hubs do not spin in step
            time.sleep(random.uniform(0, min(0.05, 0.001 * 2 ** min(attempt, 6))))
        raise StoreError(f"could not allocate a version after {_CAS_ATTEMPTS} contended tries")

    def _release_version(self, version: int) -> bool:
        """Remove ``version`` from pending; False when a reaper removed it first."""
        key = f"pending.{version}"
        before = self._coll(COUNTER).find_one_and_update(
            {"_id": _COUNTER_ID, key: {"$exists": True}}, {"$unset": {key: ""}}
        )
        return before is not None

    def _write_entry(self, current: Entry | None, entry: Entry) -> bool:
        """Insert, or update conditional on the version read; False on a lost race."""
        entries = self._coll(ENTRIES)
        doc = entry_to_doc(entry)
        if current is None:
            try:
                entries.insert_one(doc)
            except DuplicateKeyError:
                return False  # the id was published concurrently
            return True
        del doc["_id"]
        res = entries.update_one(
            {"_id": entry.blueprint_id, "version": current.version}, {"$set": doc}
        )
        return res.matched_count == 1

    def _restamp(self, entry: Entry) -> Entry:
        """Move an entry whose version was reaped to a fresh, pending-protected version."""
        while True:
            v = self._allocate_version()
            res = self._coll(ENTRIES).update_one(
                {"_id": entry.blueprint_id, "version": entry.version}, {"$set": {"version": v}}
            )
            if res.matched_count == 0:
                # A newer change of this id superseded ours; it carries its own version.
                self._release_version(v)
                return entry
            entry = attrs.evolve(entry, version=v)
            if self._release_version(v):
                return entry

    def _apply_change_sync(self, change: Change) -> tuple[Entry, bool]:
        entries = self._coll(ENTRIES)
        while True:
            doc = entries.find_one({"_id": change.blueprint_id})
            current = None if doc is None else doc_to_entry(doc)
            keep = change.unchanged(current)
            if keep is not None:
                return keep, False
            version = self._allocate_version()
            entry = change.build(current, version)
            # If the write fails with an unknown outcome, the version stays
            # pending and the lease reaps it: releasing it now could let a
            # reader pass it while the write is still in flight.
            if not self._write_entry(current, entry):
                self._release_version(version)
                continue
            if self._release_version(version):
                return entry, True
            return self._restamp(entry), True

    async def _apply_change(self, change: Change) -> tuple[Entry, bool]:
        return await self._run(lambda: self._apply_change_sync(change))

    async def apply_replica(self, entries: Sequence[Entry], meta: Mapping[str, str]) -> None:
        raise NotImplementedError(
            "apply_replica needs one atomic transaction over entries and meta, which a "
            "standalone MongoDB cannot give; peer replicas use the SQLite store"
        )

    # -- reads

    def _horizon(self) -> int:
        return horizon_of(self._read_counter())

    async def get(self, blueprint_id: str) -> Entry | None:
        def q() -> Entry | None:
            doc = self._coll(ENTRIES).find_one({"_id": blueprint_id})
            return None if doc is None else doc_to_entry(doc)

        return await self._run(q)

    async def head_version(self) -> int:
        return await self._run(self._horizon)

    async def counts(self) -> tuple[int, int]:
        def q() -> tuple[int, int]:
            entries = self._coll(ENTRIES)
            return entries.count_documents({"is_active": True}), entries.count_documents({})

        return await self._run(q)

    async def read_since(
        self, after_version: int, limit: int, *, active_only: bool = False
    ) -> list[Entry]:
        if limit < 1:
            return []

        def q() -> list[Entry]:
            # The horizon must be read BEFORE the entries: every version at or
            # below it was committed (or abandoned) by the time it was read.
            horizon = self._horizon()
            if horizon <= after_version:
                return []
            filt: Doc = {"version": {"$gt": after_version, "$lte": horizon}}
            if active_only:
                filt["is_active"] = True
            cursor = self._coll(ENTRIES).find(filt).sort("version", 1).limit(limit)
            return [doc_to_entry(d) for d in cursor]

        return await self._run(q)

    # -- node state

    async def get_meta(self, key: str) -> str | None:
        def q() -> str | None:
            doc = self._coll(META).find_one({"_id": key})
            return None if doc is None else str(doc["value"])

        return await self._run(q)

    async def set_meta(self, key: str, value: str) -> None:
        def q() -> None:
            self._coll(META).update_one({"_id": key}, {"$set": {"value": value}}, upsert=True)

        await self._run(q)
