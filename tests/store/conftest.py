"""Fixtures for the store contract suite: a real MongoDB wire server, and one store per backend.

No mock of pymongo anywhere: the MongoDB backend is tested against nx-27017
(a MongoDB wire-protocol server over SQLite) that tests/conftest.py starts on a
free loopback port, or against the real MongoDB named by ``SORCHA_TEST_MONGODB_URI``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from sorcha_peerd.store.base import RegisterStore
from tests.store.store_backends import Backend

BACKENDS = ["sqlite", "mongodb"]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    uri = request.getfixturevalue("mongodb_uri") if request.param == "mongodb" else None
    b = Backend(request.param, tmp_path, uri)
    yield b
    b.drop()


@pytest.fixture
def mongo_backend(tmp_path: Path, mongodb_uri: str) -> Iterator[Backend]:
    b = Backend("mongodb", tmp_path, mongodb_uri)
    yield b
    b.drop()


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[RegisterStore]:
    async with backend.make() as s:
        yield s
