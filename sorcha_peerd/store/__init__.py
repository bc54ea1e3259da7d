"""Register stores: the interface, the SQLite and MongoDB backends, and a factory."""

from __future__ import annotations

from pathlib import Path

from sorcha_peerd.store.base import NotFound, RegisterStore, StoreError

__all__ = ["BACKENDS", "NotFound", "RegisterStore", "StoreError", "open_store"]

BACKENDS = ("sqlite", "mongodb")


def open_store(
    backend: str,
    *,
    sqlite_path: Path | None = None,
    mongodb_uri: str | None = None,
    mongodb_database: str | None = None,
    poll_interval: float = 0.5,
    mongodb_timeout: float = 10.0,
) -> RegisterStore:
    """Build (not yet open) the store a configuration names; ``async with`` it to open.

    Raises ValueError for an unknown backend or a missing setting it needs.
    """
    if backend == "sqlite":
        if sqlite_path is None:
            raise ValueError("the sqlite store needs sqlite_path")
        from sorcha_peerd.store.sqlite import SqliteRegisterStore

        return SqliteRegisterStore(Path(sqlite_path), poll_interval=poll_interval)
    if backend == "mongodb":
        if not mongodb_uri or not mongodb_database:
            raise ValueError("the mongodb store needs mongodb_uri and mongodb_database")
        from sorcha_peerd.store.mongodb import MongoRegisterStore

        return MongoRegisterStore(
            mongodb_uri,
            mongodb_database,
            poll_interval=poll_interval,
            server_selection_timeout=mongodb_timeout,
        )
    raise ValueError(f"unknown store backend {backend!r}: expected one of {', '.join(BACKENDS)}")
