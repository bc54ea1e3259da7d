#!/usr/bin/env python3
"""Regenerate the betterproto2 messages in sorcha_peerd/wire/generated from proto/.

The generated code is committed; tests/wire/test_generated.py runs this
generator into a temporary directory and fails when the committed files differ.
grpcio-tools and betterproto2-compiler are development dependencies only
(the `test` extra); the daemon never needs them.

    python scripts/gen_proto.py            # rewrite the committed code
    python scripts/gen_proto.py --out DIR  # write elsewhere (used by the test)
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
DEFAULT_OUT = ROOT / "sorcha_peerd" / "wire" / "generated"
PLUGIN_OPTIONS = "client_generation=none,server_generation=none"


def proto_files() -> list[Path]:
    return sorted(PROTO_DIR.rglob("*.proto"))


def generate(out: Path) -> None:
    """Run protoc with the betterproto2 plugin into a fresh ``out`` directory."""
    plugin = shutil.which("protoc-gen-python_betterproto2", path=os.path.dirname(sys.executable))
    if plugin is None:
        plugin = shutil.which("protoc-gen-python_betterproto2")
    if plugin is None:
        sys.exit("gen_proto: protoc-gen-python_betterproto2 not found; pip install -e '.[test]'")
    # The betterproto2 plugin formats its output with `ruff` from PATH; run it
    # from a directory outside the project so our own ruff settings do not
    # leak into the generated code, and pin ruff's version in pyproject.toml.
    env = dict(os.environ, PATH=os.path.dirname(plugin) + os.pathsep + os.environ.get("PATH", ""))
    with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryDirectory() as cwd:
        cmd = [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{PROTO_DIR}",
            f"--plugin=protoc-gen-python_betterproto2={plugin}",
            f"--python_betterproto2_out={tmp}",
            f"--python_betterproto2_opt={PLUGIN_OPTIONS}",
            *(str(p) for p in proto_files()),
        ]
        subprocess.run(cmd, check=True, cwd=cwd, env=env, stdout=subprocess.DEVNULL)
        if out.exists():
            shutil.rmtree(out)
        shutil.copytree(tmp, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    generate(args.out)


if __name__ == "__main__":
    main()
