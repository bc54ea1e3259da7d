"""Where one store test's register lives (imported by conftest.py and the tests)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pymongo
from pymongo.errors import PyMongoError

from sorcha_peerd.store.base import RegisterStore
from sorcha_peerd.store.mongodb import MongoRegisterStore
from sorcha_peerd.store.sqlite import SqliteRegisterStore


class Backend:
    """Where one test's register lives; ``make()`` builds further store objects on it."""

    def __init__(self, kind: str, tmp_path: Path, mongodb_uri: str | None) -> None:
        self.kind = kind
        self.sqlite_path = tmp_path / "register.sqlite3"
        self.mongodb_uri = mongodb_uri
        self.database = f"sorcha_test_{uuid.uuid4().hex[:16]}"

    def make(self, **kwargs: Any) -> RegisterStore:
        kwargs.setdefault("poll_interval", 0.05)
        if self.kind == "sqlite":
            return SqliteRegisterStore(self.sqlite_path, **kwargs)
        assert self.mongodb_uri is not None
        return MongoRegisterStore(self.mongodb_uri, self.database, **kwargs)

    def drop(self) -> None:
        if self.kind == "mongodb" and self.mongodb_uri is not None:
            client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(self.mongodb_uri)
            try:
                client.drop_database(self.database)
            except PyMongoError:
                pass  # best effort; nx-27017's data dir is a temp dir anyway
            finally:
                client.close()
