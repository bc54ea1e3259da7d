"""Shared by push_latency.py and failover_time.py: a real ``sorcha-peerd`` hub as a subprocess.

The hub gets a TOML configuration with the given ``[timing]`` (so the benches
can run with sub-second heartbeats), its own control socket in a short
directory under /tmp (unix socket paths are limited to 107 bytes) and its
output in a log file. It is ready once it logs ``hub ID serving the system
register on HOST:PORT``; the port is read from that line.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
READY = re.compile(r"hub (\S+) serving the system register on (\S+):(\d+)")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def timing_toml(timing: Mapping[str, float | int]) -> str:
    return "[timing]\n" + "".join(f"{k} = {v}\n" for k, v in timing.items())


def proc_cpu(pid: int) -> float:
    """CPU seconds (utime + stime, all threads) of a live process."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


class Hub:
    """``python -m sorcha_peerd.cli.daemon --role hub`` on ``127.0.0.1:port``.

    ``port`` 0 picks a free one (read from the log). Hubs may share one
    ``state_dir`` (one SQLite register): each gets its own config file, control
    socket and log, named after its node id.
    """

    def __init__(self, node_id: str, state_dir: Path, log_dir: Path, *,
                 timing: Mapping[str, float | int], port: int = 0,
                 log_level: str = "info") -> None:
        self.node_id = node_id
        self.state_dir = state_dir
        self.requested_port = port
        self.port = port
        state_dir.mkdir(parents=True, exist_ok=True)
        log_dir.mkdir(parents=True, exist_ok=True)
        self.config = log_dir / f"{node_id}.toml"
        self.config.write_text(timing_toml(timing))
        self._sock_dir = Path(tempfile.mkdtemp(prefix="spb-", dir="/tmp"))
        self.control_socket = self._sock_dir / "control.sock"
        self.log_dir = log_dir
        self.log_level = log_level
        self.starts = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = log_dir / f"{node_id}.log"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 60.0) -> Hub:
        """Start (or restart) the daemon and wait until it serves; returns self."""
        self.starts += 1
        self.log_path = self.log_dir / f"{self.node_id}-{self.starts}.log"
        cmd = [sys.executable, "-m", "sorcha_peerd.cli.daemon", "--config", str(self.config),
               "--role", "hub", "--node-id", self.node_id,
               "--listen", f"127.0.0.1:{self.requested_port}",
               "--state-dir", str(self.state_dir), "--store", "sqlite",
               "--control-socket", str(self.control_socket), "--log-level", self.log_level]
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, cwd=REPO)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = READY.search(self.log_path.read_text(errors="replace"))
            if m:
                self.port = int(m.group(3))
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        self.stop(signal.SIGKILL)
        raise RuntimeError(f"hub {self.node_id} did not start; its log:\n{self.log_text()}")

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def send(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        """Signal the daemon and wait for it to exit; its exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            if sig == signal.SIGSTOP:
                raise ValueError("stop() waits for an exit: use send() for SIGSTOP")
            self.proc.send_signal(signal.SIGCONT)  # a stopped process handles nothing else
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._sock_dir, ignore_errors=True)
