"""Run the real ``sorcha-peerd`` as a subprocess, as an operator would, for tests."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import attrs

_SERVING = re.compile(r"serving the system register on [^ ]+:(\d+)|peer \S+ serving its replica")


@attrs.define
class Daemon:
    proc: subprocess.Popen[str]
    state_dir: Path
    socket: Path
    port: int = 0
    output: list[str] = attrs.field(factory=list)
    reader: threading.Thread | None = None

    def peerctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "sorcha_peerd.cli.peerctl", "--socket", str(self.socket), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.reader is not None:
            self.reader.join(timeout=5)
        elif self.proc.stdout is not None:
            self.output.append(self.proc.stdout.read())
        return self.proc.returncode

    @property
    def log(self) -> str:
        return "".join(self.output)


def start_daemon(
    state_dir: Path,
    *args: str,
    wait: bool = True,
    config: str | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 20,
    role: str = "hub",
    node_id: str = "n0",
) -> Daemon:
    """Start a daemon (a hub on a free loopback port by default); with ``wait``, return once it
    serves.

    ``config`` is TOML text for a ``--config`` file (flags still win over it).
    """
    if config is not None:
        state_dir.mkdir(parents=True, exist_ok=True)
        path = state_dir / "sorcha-peerd.toml"
        path.write_text(config)
        args = ("--config", str(path), *args)
    # unix socket paths are limited to 107 bytes: keep the socket in a short directory
    sock_dir = Path(tempfile.mkdtemp(prefix="sp-", dir="/tmp"))
    socket = sock_dir / "control.sock"
    cmd: Sequence[str] = [
        sys.executable,
        "-m",
        "sorcha_peerd.cli.daemon",
        "--role",
        role,
        "--node-id",
        node_id,
        "--listen",
        "127.0.0.1:0",
        "--state-dir",
        str(state_dir),
        "--control-socket",
        str(socket),
        *args,
    ]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
    )
    daemon = Daemon(proc, state_dir, socket)
    if not wait:
        return daemon
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        daemon.output.append(line)
        match = _SERVING.search(line)
        if match:
            daemon.port = int(match.group(1) or 0)
            # keep reading its output, or a full pipe would block its logging
            daemon.reader = threading.Thread(target=_drain, args=(daemon,), daemon=True)
            daemon.reader.start()
            return daemon
    daemon.stop()
    raise RuntimeError(f"sorcha-peerd did not start:\n{daemon.log}")


def _drain(daemon: Daemon) -> None:
    assert daemon.proc.stdout is not None
    for line in daemon.proc.stdout:
        daemon.output.append(line)


@contextmanager
def running_daemon(
    state_dir: Path, *args: str, config: str | None = None, role: str = "hub", node_id: str = "n0"
) -> Iterator[Daemon]:
    daemon = start_daemon(state_dir, *args, config=config, role=role, node_id=node_id)
    try:
        yield daemon
    finally:
        daemon.stop()
