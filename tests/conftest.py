"""Fixtures shared by every test directory."""

from __future__ import annotations

import importlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pymongo
import pytest
from pymongo.errors import PyMongoError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def grpcio_contract(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[ModuleType, ModuleType]:
    """(pb2, pb2_grpc) for grpcio, compiled from the tests' own copy of the contract.

    ``tests/interop/contract/sorcha_peer_v1.proto`` is written independently of
    ``proto/`` (one file, every message renamed), so whatever talks to it is a
    client or server of another implementation. protobuf's descriptor pool is
    global: this one copy serves every test in the process.
    """
    contract = ROOT / "tests" / "interop" / "contract"
    out = tmp_path_factory.mktemp("grpcio_contract")
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{contract}", f"--python_out={out}",
         f"--grpc_python_out={out}", str(contract / "sorcha_peer_v1.proto")],
        check=True,
    )  # fmt: skip
    sys.path.insert(0, str(out))
    try:
        pb2 = importlib.import_module("sorcha_peer_v1_pb2")
        pb2_grpc = importlib.import_module("sorcha_peer_v1_pb2_grpc")
    finally:
        sys.path.remove(str(out))
    return pb2, pb2_grpc


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
