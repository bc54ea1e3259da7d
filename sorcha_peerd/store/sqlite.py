"""The embedded register store: one SQLite file, no outside service.

Why it is safe to page by version: a version is allocated and the entry
written in ONE ``BEGIN IMMEDIATE`` transaction (SQLite's single writer lock),
so no reader can ever see version ``v+1`` committed while ``v`` is still in
flight. The counter lives in its own row and only grows: versions are never
reused even though an entry's row moves to a newer version on every change.

``synchronous=FULL`` in WAL mode makes an acknowledged commit durable across
power loss. Several threads and processes may share the file: each thread
borrows its own connection from a small pool, writers queue on SQLite's lock
(``busy_timeout``), readers work on WAL snapshots and do not block anyone.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import trio

from sorcha_peerd import register
from sorcha_peerd.register import ChangeType, Entry
from sorcha_peerd.store.base import (
    Change,
    RegisterStore,
    StoreError,
    metadata_from_json,
    metadata_to_json,
)

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    blueprint_id TEXT PRIMARY KEY,
    version INTEGER NOT NULL UNIQUE,
    document BLOB NOT NULL,
    published_at INTEGER NOT NULL,
    published_by TEXT NOT NULL,
    is_active INTEGER NOT NULL,
    publication_transaction_id TEXT NOT NULL,
    checksum TEXT NOT NULL,
    metadata TEXT NOT NULL,
    change INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_active_version ON entries (is_active, version);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS counter (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL
);
INSERT OR IGNORE INTO counter (id, version) VALUES (1, 0);
"""

_COLUMNS = (
    "blueprint_id, version, document, published_at, published_by, is_active,"
    " publication_transaction_id, checksum, metadata, change"
)

_UPSERT = f"""
INSERT INTO entries ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (blueprint_id) DO UPDATE SET
    version = excluded.version, document = excluded.document,
    published_at = excluded.published_at, published_by = excluded.published_by,
    is_active = excluded.is_active,
    publication_transaction_id = excluded.publication_transaction_id,
    checksum = excluded.checksum, metadata = excluded.metadata, change = excluded.change
WHERE excluded.version > entries.version
"""


_STAGING = "replica_staging"

# Same shape as ``entries``, so a commit is one INSERT ... SELECT.
_STAGING_SCHEMA = f"""
CREATE TABLE {_STAGING} (
    blueprint_id TEXT PRIMARY KEY,
    version INTEGER NOT NULL UNIQUE,
    document BLOB NOT NULL,
    published_at INTEGER NOT NULL,
    published_by TEXT NOT NULL,
    is_active INTEGER NOT NULL,
    publication_transaction_id TEXT NOT NULL,
    checksum TEXT NOT NULL,
    metadata TEXT NOT NULL,
    change INTEGER NOT NULL
)
"""

_STAGING_UPSERT = f"""
INSERT INTO {_STAGING} ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (blueprint_id) DO UPDATE SET
    version = excluded.version, document = excluded.document,
    published_at = excluded.published_at, published_by = excluded.published_by,
    is_active = excluded.is_active,
    publication_transaction_id = excluded.publication_transaction_id,
    checksum = excluded.checksum, metadata = excluded.metadata, change = excluded.change
WHERE excluded.version > {_STAGING}.version
"""


def _require_staging(conn: sqlite3.Connection) -> None:
    found = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (_STAGING,)
    ).fetchone()
    if found is None:
        raise StoreError("no full-sync staging in progress: call stage_begin first")


def _row(entry: Entry) -> tuple[Any, ...]:
    return (
        entry.blueprint_id,
        entry.version,
        entry.document,
        entry.published_at,
        entry.published_by,
        int(entry.is_active),
        entry.publication_transaction_id,
        entry.checksum,
        metadata_to_json(entry.metadata),
        int(entry.change),
    )


def _entry(row: Sequence[Any]) -> Entry:
    return Entry(
        blueprint_id=row[0],
        version=int(row[1]),
        document=bytes(row[2]),
        published_at=int(row[3]),
        published_by=row[4],
        is_active=bool(row[5]),
        publication_transaction_id=row[6],
        checksum=row[7],
        metadata=metadata_from_json(row[8]),
        change=ChangeType(int(row[9])),
    )


class SqliteRegisterStore(RegisterStore):
    """The register in one SQLite file (WAL, synchronous=FULL)."""

    def __init__(
        self, path: Path, *, poll_interval: float = 0.5, busy_timeout: float = 30.0
    ) -> None:
        super().__init__(poll_interval=poll_interval)
        self.path = Path(path)
        self.busy_timeout = busy_timeout
        self._lock = threading.Lock()
        self._idle: list[sqlite3.Connection] = []
        self._open = False

    # -- connections

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False
        )
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
        conn.execute("PRAGMA synchronous = FULL")
        return conn

    @contextmanager
    def _conn(self) -> Iterator[sqlite3.Connection]:
        """Borrow a connection for the current thread; one thread per connection at a time."""
        with self._lock:
            if not self._open:
                raise StoreError(f"store {self.path} is not open")
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = self._connect()
        try:
            yield conn
        finally:
            if conn.in_transaction:
                conn.rollback()
            with self._lock:
                keep = self._open
                if keep:
                    self._idle.append(conn)
            if not keep:  # the store was closed while this connection was lent out
                conn.close()

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def work() -> T:
            try:
                with self._conn() as conn:
                    return fn(conn)
            except sqlite3.Error as exc:
                raise StoreError(f"sqlite store {self.path}: {exc}") from exc

        return await trio.to_thread.run_sync(work)

    @contextmanager
    def _write_txn(self, conn: sqlite3.Connection) -> Iterator[None]:
        """``BEGIN IMMEDIATE``: take the write lock first, so read-then-write cannot race."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            conn.rollback()
            raise
        conn.execute("COMMIT")

    # -- lifecycle

    async def open(self) -> None:
        def setup() -> None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                conn = self._connect()
                try:
                    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                    if str(mode).lower() != "wal":
                        raise StoreError(f"{self.path}: cannot switch to WAL (got {mode})")
                    conn.executescript(_SCHEMA)
                finally:
                    conn.close()
            except (sqlite3.Error, OSError) as exc:
                raise StoreError(f"cannot open sqlite store {self.path}: {exc}") from exc

        await trio.to_thread.run_sync(setup)
        with self._lock:
            self._open = True

    async def aclose(self) -> None:
        with self._lock:
            self._open = False
            idle, self._idle = self._idle, []
        # Connections lent out right now are closed by _conn() when returned.
        for conn in idle:
            conn.close()

    # -- writes

    async def _apply_change(self, change: Change) -> tuple[Entry, bool]:
        def txn(conn: sqlite3.Connection) -> tuple[Entry, bool]:
            with self._write_txn(conn):
                row = conn.execute(
                    f"SELECT {_COLUMNS} FROM entries WHERE blueprint_id = ?",
                    (change.blueprint_id,),
                ).fetchone()
                current = None if row is None else _entry(row)
                keep = change.unchanged(current)
                if keep is not None:
                    return keep, False
                (counter,) = conn.execute("SELECT version FROM counter WHERE id = 1").fetchone()
                entry = change.build(current, int(counter) + 1)
                conn.execute("UPDATE counter SET version = ? WHERE id = 1", (entry.version,))
                conn.execute(
                    f"INSERT OR REPLACE INTO entries ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?)",
                    _row(entry),
                )
                return entry, True

        return await self._run(txn)

    async def apply_replica(self, entries: Sequence[Entry], meta: Mapping[str, str]) -> None:
        for e in entries:
            register.validate_entry(e)
        items = [(str(k), str(v)) for k, v in meta.items()]
        rows = [_row(e) for e in entries]
        top = max((e.version for e in entries), default=0)

        def txn(conn: sqlite3.Connection) -> None:
            with self._write_txn(conn):
                conn.executemany(_UPSERT, rows)
                conn.executemany(
                    "INSERT INTO meta (key, value) VALUES (?, ?)"
                    " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    items,
                )
                conn.execute("UPDATE counter SET version = max(version, ?) WHERE id = 1", (top,))

        await self._run(txn)
        if rows:
            self._notify_local_commit()

    # -- full-sync staging (a peer's replica)
    #
    # The staging table exists only while a full sync is being staged (or was
    # left by a crash): stage_begin drops and recreates it, stage_commit and
    # stage_abort drop it. Readers only ever read ``entries``.

    async def stage_begin(self) -> None:
        def txn(conn: sqlite3.Connection) -> None:
            with self._write_txn(conn):
                conn.execute(f"DROP TABLE IF EXISTS {_STAGING}")
                conn.execute(_STAGING_SCHEMA)

        await self._run(txn)

    async def stage_entries(self, entries: Sequence[Entry]) -> None:
        for e in entries:
            register.validate_entry(e)
        rows = [_row(e) for e in entries]

        def txn(conn: sqlite3.Connection) -> None:
            with self._write_txn(conn):
                _require_staging(conn)
                conn.executemany(_STAGING_UPSERT, rows)

        await self._run(txn)

    async def stage_commit(self, meta: Mapping[str, str]) -> None:
        items = [(str(k), str(v)) for k, v in meta.items()]

        def txn(conn: sqlite3.Connection) -> None:
            with self._write_txn(conn):
                _require_staging(conn)
                conn.execute("DELETE FROM entries")
                conn.execute(f"INSERT INTO entries ({_COLUMNS}) SELECT {_COLUMNS} FROM {_STAGING}")
                conn.executemany(
                    "INSERT INTO meta (key, value) VALUES (?, ?)"
                    " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    items,
                )
                conn.execute(
                    "UPDATE counter SET version ="
                    " (SELECT coalesce(max(version), 0) FROM entries) WHERE id = 1"
                )
                conn.execute(f"DROP TABLE {_STAGING}")

        await self._run(txn)
        self._notify_local_commit()

    async def stage_abort(self) -> None:
        def txn(conn: sqlite3.Connection) -> None:
            with self._write_txn(conn):
                conn.execute(f"DROP TABLE IF EXISTS {_STAGING}")

        await self._run(txn)

    # -- reads

    async def get(self, blueprint_id: str) -> Entry | None:
        def q(conn: sqlite3.Connection) -> Entry | None:
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM entries WHERE blueprint_id = ?", (blueprint_id,)
            ).fetchone()
            return None if row is None else _entry(row)

        return await self._run(q)

    async def head_version(self) -> int:
        def q(conn: sqlite3.Connection) -> int:
            return int(conn.execute("SELECT version FROM counter WHERE id = 1").fetchone()[0])

        return await self._run(q)

    async def counts(self) -> tuple[int, int]:
        def q(conn: sqlite3.Connection) -> tuple[int, int]:
            active, total = conn.execute(
                "SELECT (SELECT count(*) FROM entries WHERE is_active = 1),"
                " (SELECT count(*) FROM entries)"
            ).fetchone()
            return int(active), int(total)

        return await self._run(q)

    async def read_since(
        self, after_version: int, limit: int, *, active_only: bool = False
    ) -> list[Entry]:
        if limit < 1:
            return []
        # Every committed row is at or below the counter: no horizon needed.
        where = "is_active = 1 AND version > ?" if active_only else "version > ?"

        def q(conn: sqlite3.Connection) -> list[Entry]:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM entries WHERE {where} ORDER BY version LIMIT ?",
                (after_version, limit),
            ).fetchall()
            return [_entry(r) for r in rows]

        return await self._run(q)

    # -- node state

    async def get_meta(self, key: str) -> str | None:
        def q(conn: sqlite3.Connection) -> str | None:
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
            return None if row is None else str(row[0])

        return await self._run(q)

    async def set_meta(self, key: str, value: str) -> None:
        def q(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

        await self._run(q)
