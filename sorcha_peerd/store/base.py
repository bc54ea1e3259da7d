"""The register store interface, and the pieces every backend shares.

A store holds the system register durably: one row per blueprint id at its
newest version, one version counter for the whole register, and a small
key/value table for node state. Backends (SQLite, MongoDB) differ only in how
they allocate a version and commit a change atomically; *what* a publish or a
deprecation does is decided here, in plain synchronous functions
(:class:`PublishChange`, :class:`DeprecateChange`), so both backends behave
identically and the decision is testable without I/O.

Every method that touches the database runs its blocking work in a worker
thread (``trio.to_thread.run_sync``): sqlite3 and pymongo block.
"""

from __future__ import annotations

import abc
import json
import time
import uuid
from collections.abc import AsyncGenerator, Mapping, Sequence
from types import TracebackType
from typing import Self

import attrs
import trio

from sorcha_peerd import register
from sorcha_peerd.register import ChangeType, Entry


class StoreError(Exception):
    """The store cannot do what was asked: backend unreachable, corrupt, closed..."""

    #: a gRPC handler failing on the store answers UNAVAILABLE (it is passing)
    grpc_status = 14


class NotFound(StoreError):
    """The blueprint id is not in the register."""

    grpc_status = 5  # NOT_FOUND

    def __init__(self, blueprint_id: str) -> None:
        super().__init__(f"blueprint {blueprint_id!r} is not in the register")
        self.blueprint_id = blueprint_id


def now_ms() -> int:
    """Wall-clock time in Unix milliseconds (the protocol's time unit)."""
    return time.time_ns() // 1_000_000


def metadata_to_json(metadata: Mapping[str, str]) -> str:
    """Canonical JSON text of a metadata map (sorted keys), as both backends store it."""
    return json.dumps(dict(metadata), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def metadata_from_json(text: str | bytes) -> dict[str, str]:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise StoreError(f"stored metadata is not a JSON object: {text!r}")
    return {str(k): str(v) for k, v in value.items()}


# --------------------------------------------------------------------------- changes


@attrs.frozen
class PublishChange:
    """A validated publish request, and what it does to the entry currently held."""

    blueprint_id: str
    document: bytes
    published_by: str
    metadata: Mapping[str, str]
    published_at: int
    transaction_id: str
    create_only: bool

    def unchanged(self, current: Entry | None) -> Entry | None:
        """The entry to return as is (no new version), or None when a write is due.

        An active entry with the same document and metadata means a retried
        publish: answering it again keeps a client's retry from minting versions.
        """
        if current is None:
            return None
        if self.create_only:
            return current
        if (
            current.is_active
            and current.document == self.document
            and dict(current.metadata) == dict(self.metadata)
        ):
            return current
        return None

    def build(self, current: Entry | None, version: int) -> Entry:
        return Entry(
            blueprint_id=self.blueprint_id,
            version=version,
            document=self.document,
            published_at=self.published_at,
            published_by=self.published_by,
            is_active=True,
            publication_transaction_id=self.transaction_id,
            checksum=register.compute_checksum(self.document),
            metadata=self.metadata,
            change=ChangeType.PUBLISHED if current is None else ChangeType.UPDATED,
        )


@attrs.frozen
class DeprecateChange:
    """A deprecation: the entry keeps its document and becomes inactive."""

    blueprint_id: str
    deprecated_by: str
    published_at: int
    transaction_id: str

    def unchanged(self, current: Entry | None) -> Entry | None:
        if current is None:
            raise NotFound(self.blueprint_id)
        return None if current.is_active else current

    def build(self, current: Entry | None, version: int) -> Entry:
        if current is None:  # unchanged() already refused this
            raise NotFound(self.blueprint_id)
        return attrs.evolve(
            current,
            version=version,
            published_at=self.published_at,
            published_by=self.deprecated_by,
            is_active=False,
            publication_transaction_id=self.transaction_id,
            change=ChangeType.DEPRECATED,
        )


Change = PublishChange | DeprecateChange


def make_publish(
    blueprint_id: str,
    document: bytes,
    *,
    published_by: str,
    metadata: Mapping[str, str] | None,
    published_at: int | None,
    transaction_id: str | None,
    create_only: bool,
) -> PublishChange:
    """Validate a publish (raising register.ValidationError) and fill in defaults."""
    register.validate_blueprint_id(blueprint_id)
    doc = register.validate_document(document)
    register.validate_published_by(published_by)
    meta = dict(register.validate_metadata(metadata or {}))
    return PublishChange(
        blueprint_id=blueprint_id,
        document=doc,
        published_by=published_by,
        metadata=meta,
        published_at=now_ms() if published_at is None else published_at,
        transaction_id=uuid.uuid4().hex if transaction_id is None else transaction_id,
        create_only=create_only,
    )


def make_deprecate(
    blueprint_id: str, *, deprecated_by: str, published_at: int | None
) -> DeprecateChange:
    register.validate_blueprint_id(blueprint_id)
    register.validate_published_by(deprecated_by)
    return DeprecateChange(
        blueprint_id=blueprint_id,
        deprecated_by=deprecated_by,
        published_at=now_ms() if published_at is None else published_at,
        transaction_id=uuid.uuid4().hex,
    )


# --------------------------------------------------------------------------- the interface


class RegisterStore(abc.ABC):
    """A durable system register. See docs/stores.md for the guarantees.

    Versions served to readers never have holes *behind* them: once
    ``read_since`` has returned version ``v``, no entry with a version below
    ``v`` can appear later (a change always gets a version above every one
    served so far). That is what lets a reader page by ``version > last_seen``.
    """

    def __init__(self, *, poll_interval: float = 0.5) -> None:
        if poll_interval <= 0:
            raise ValueError("poll_interval must be positive")
        self.poll_interval = poll_interval
        # Created lazily inside the trio run that watches; set and dropped on
        # every local commit so that watchers of this object wake at once.
        self._commit_event: trio.Event | None = None

    # -- lifecycle

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect, create the schema if missing. Raises StoreError."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Release connections. Idempotent."""

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- writes

    async def publish(
        self,
        blueprint_id: str,
        document: bytes,
        *,
        published_by: str,
        metadata: Mapping[str, str] | None = None,
        published_at: int | None = None,
        transaction_id: str | None = None,
        create_only: bool = False,
    ) -> Entry:
        """Publish or update a blueprint; returns the entry as now stored.

        An identical re-publish of an active entry, or ``create_only`` on an
        existing id, returns the stored entry without a new version.
        """
        change = make_publish(
            blueprint_id,
            document,
            published_by=published_by,
            metadata=metadata,
            published_at=published_at,
            transaction_id=transaction_id,
            create_only=create_only,
        )
        return await self._commit(change)

    async def deprecate(
        self, blueprint_id: str, *, deprecated_by: str, published_at: int | None = None
    ) -> Entry:
        """Mark a blueprint inactive at a new version. NotFound if unknown."""
        return await self._commit(
            make_deprecate(blueprint_id, deprecated_by=deprecated_by, published_at=published_at)
        )

    async def _commit(self, change: Change) -> Entry:
        entry, wrote = await self._apply_change(change)
        if wrote:
            self._notify_local_commit()
        return entry

    @abc.abstractmethod
    async def _apply_change(self, change: Change) -> tuple[Entry, bool]:
        """Apply a change atomically; returns (entry now stored, whether a version was used)."""

    @abc.abstractmethod
    async def apply_replica(self, entries: Sequence[Entry], meta: Mapping[str, str]) -> None:
        """Write hub entries as given (newer version wins per id) and meta, in one transaction."""

    # -- full-sync staging (a peer's replica; see docs/stores.md)
    #
    # A full sync replaces the whole replica, but arrives as a stream of pages
    # too large for one transaction. Pages go to a staging area that readers
    # never see; one transaction then swaps it in with the checkpoint. A crash
    # before that leaves the old replica and its checkpoint untouched.

    async def stage_begin(self) -> None:
        """Start a staging area, discarding any left over (e.g. by a crash)."""
        raise NotImplementedError(f"{type(self).__name__} cannot hold a replica")

    async def stage_entries(self, entries: Sequence[Entry]) -> None:
        """Add hub entries to the staging area (newer version wins per id), one transaction."""
        raise NotImplementedError(f"{type(self).__name__} cannot hold a replica")

    async def stage_commit(self, meta: Mapping[str, str]) -> None:
        """In ONE transaction: entries := the staged ones, write meta, end the staging.

        The version counter becomes the highest staged version (0 if none).
        Raises StoreError when no staging was begun.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot hold a replica")

    async def stage_abort(self) -> None:
        """Discard the staging area, if any; the replica is untouched."""
        raise NotImplementedError(f"{type(self).__name__} cannot hold a replica")

    # -- reads

    @abc.abstractmethod
    async def get(self, blueprint_id: str) -> Entry | None: ...

    @abc.abstractmethod
    async def head_version(self) -> int:
        """The highest version a reader may be served (0 when empty)."""

    @abc.abstractmethod
    async def counts(self) -> tuple[int, int]:
        """(active entries, all entries)."""

    @abc.abstractmethod
    async def read_since(
        self, after_version: int, limit: int, *, active_only: bool = False
    ) -> list[Entry]:
        """Entries with after_version < version <= head_version(), ascending, at most limit."""

    async def iter_since(
        self,
        after_version: int,
        *,
        page_size: int = 500,
        active_only: bool = False,
        max_entries: int | None = None,
    ) -> AsyncGenerator[list[Entry], None]:
        """Pages of ``read_since`` by keyset pagination on version, until exhausted.

        Each page is bounded by the head at the time it is read. An entry that
        changes during the iteration moves to a version above every one served
        so far, so it is either still ahead of the cursor or reaches the caller
        through the next incremental read: nothing is lost.
        """
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        cursor = after_version
        remaining = max_entries
        while remaining is None or remaining > 0:
            want = page_size if remaining is None else min(page_size, remaining)
            page = await self.read_since(cursor, want, active_only=active_only)
            if not page:
                return
            yield page
            cursor = page[-1].version
            if remaining is not None:
                remaining -= len(page)
            if len(page) < want:
                return

    async def watch(
        self, after_version: int, *, page_size: int = 500
    ) -> AsyncGenerator[list[Entry], None]:
        """Endless change feed: non-empty batches with version > cursor, ascending.

        Polls every ``poll_interval`` seconds and wakes at once when this store
        object commits. One row per id means an id changed twice between two
        polls is seen once, at its newest version (coalescing). Use it inside
        ``contextlib.aclosing`` (or let the consuming task's nursery end).
        """
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        cursor = after_version
        while True:
            # Take the event before reading, so a commit landing between the
            # read and the wait still wakes us.
            woken = self._commit_waiter()
            batch = await self.read_since(cursor, page_size)
            if batch:
                yield batch
                cursor = batch[-1].version
                continue
            with trio.move_on_after(self.poll_interval):
                await woken.wait()

    # -- node state

    @abc.abstractmethod
    async def get_meta(self, key: str) -> str | None: ...

    @abc.abstractmethod
    async def set_meta(self, key: str, value: str) -> None: ...

    # -- local wake-up

    def _commit_waiter(self) -> trio.Event:
        if self._commit_event is None:
            self._commit_event = trio.Event()
        return self._commit_event

    def _notify_local_commit(self) -> None:
        event, self._commit_event = self._commit_event, None
        if event is not None:
            event.set()
