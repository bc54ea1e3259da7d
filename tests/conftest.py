"""Fixtures shared by every test directory."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def grpcio_modules(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ModuleType]:
    """The contract compiled by grpcio-tools for grpcio and protobuf: an independent implementation.

    Returns modules by short name: connection_pb2, connection_pb2_grpc, heartbeat_pb2, ...
    """
    out = tmp_path_factory.mktemp("grpcio_gen")
    protos = sorted((ROOT / "proto").rglob("*.proto"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{ROOT / 'proto'}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            *map(str, protos),
        ],
        check=True,
    )
    sys.path.insert(0, str(out))
    try:
        modules = {}
        for proto in protos:
            stem = proto.stem
            modules[f"{stem}_pb2"] = importlib.import_module(f"sorcha.peer.v1.{stem}_pb2")
            modules[f"{stem}_pb2_grpc"] = importlib.import_module(f"sorcha.peer.v1.{stem}_pb2_grpc")
        return modules
    finally:
        sys.path.remove(str(out))
