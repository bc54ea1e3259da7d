"""Fixtures for the store contract suite: a real MongoDB wire server, and one store per backend.

No mock of pymongo anywhere: the MongoDB backend is tested against nx-27017
(a MongoDB wire-protocol server over SQLite) started here on a free loopback
port, or against the real MongoDB named by ``SORCHA_TEST_MONGODB_URI``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pymongo
import pytest
from pymongo.errors import PyMongoError

from sorcha_peerd.store.base import RegisterStore
from tests.store.store_backends import Backend

BACKENDS = ["sqlite", "mongodb"]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _nx_command() -> list[str]:
    script = Path(sys.executable).with_name("nx-27017")
    if script.exists():
        return [str(script)]
    found = shutil.which("nx-27017")
    if found:
        return [found]
    return [sys.executable, "-m", "nx_27017.nx_27017"]


def _wait_for_ping(uri: str, proc: subprocess.Popen[bytes] | None, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"nx-27017 exited with {proc.returncode}")
        client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
            uri, serverSelectionTimeoutMS=300
        )
        try:
            client.admin.command("ping")
        except PyMongoError as exc:
            last = exc
        else:
            return
        finally:
            client.close()
        time.sleep(0.1)
    raise RuntimeError(f"no MongoDB answered on {uri} within {timeout}s: {last}")


@pytest.fixture(scope="session")
def mongodb_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A MongoDB to test against: $SORCHA_TEST_MONGODB_URI, else a fresh nx-27017."""
    external = os.environ.get("SORCHA_TEST_MONGODB_URI")
    if external:
        _wait_for_ping(external, None, 10.0)
        yield external
        return
    workdir = tmp_path_factory.mktemp("nx27017")
    for _attempt in range(3):
        port = _free_port()
        log = (workdir / "stdout.log").open("ab")
        proc = subprocess.Popen(
            [
                *_nx_command(),
                "--host", "127.0.0.1",
                "--port", str(port),
                "--data-dir", str(workdir / "data"),
                "--pid-file", str(workdir / f"nx-{port}.pid"),
                "--log-file", str(workdir / "nx.log"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        uri = f"mongodb://127.0.0.1:{port}/?directConnection=true"
        try:
            _wait_for_ping(uri, proc, 20.0)
        except RuntimeError:
            proc.kill()
            proc.wait()
            log.close()
            continue  # most likely the port was taken between bind and start
        try:
            yield uri
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()
        return
    raise RuntimeError(f"could not start nx-27017; see {workdir}")


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
