"""The daemon as a systemd service: sd_notify, watchdog, reload, drain, health checks.

PID 1 here is not systemd, so the tests play its part: they own the
NOTIFY_SOCKET datagram socket and read what the real daemon sends.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.daemon_process import Daemon, start_daemon
from tests.peer.test_peer_daemon import FAST, Net, free_port, peer_is, status, wait_for


class NotifySocket:
    """A datagram socket standing in for systemd's notify socket."""

    def __init__(self) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="ns-", dir="/tmp")) / "notify"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        self.sock.settimeout(0.2)
        self.messages: list[dict[str, str]] = []
        self._stop = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.messages.append(fields)

    def close(self) -> None:
        self._stop = True
        self._thread.join(timeout=2)
        self.sock.close()

    def count(self, key: str) -> int:
        return sum(1 for m in self.messages if key in m)

    def index(self, predicate: Callable[[dict[str, str]], bool], start: int = 0) -> int:
        for i, m in enumerate(self.messages[start:], start):
            if predicate(m):
                return i
        return -1


@pytest.fixture
def notify() -> Iterator[NotifySocket]:
    n = NotifySocket()
    yield n
    n.close()


def test_notify_watchdog_reload_and_stop(notify: NotifySocket, tmp_path: Path) -> None:
    state = tmp_path / "hub"
    config = FAST.format(hb=0.5)
    hub = start_daemon(
        state, config=config, env={"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "400000"}
    )
    try:
        wait_for("READY=1", lambda: notify.count("READY") >= 1)
        wait_for(
            "STATUS=",
            lambda: any("hub n0: serving" in m.get("STATUS", "") for m in notify.messages),
        )
        wait_for("watchdog pings", lambda: notify.count("WATCHDOG") >= 3, timeout=10)
        # READY only once the listeners answer: the control socket works now
        assert hub.peerctl("status").returncode == 0

        # a good reload: RELOADING=1 with MONOTONIC_USEC, then READY=1
        (state / "sorcha-peerd.toml").write_text(config + '\n[log]\nlevel = "debug"\n')
        mark = len(notify.messages)
        hub.proc.send_signal(signal.SIGHUP)
        wait_for("RELOADING", lambda: notify.index(lambda m: "RELOADING" in m, mark) >= 0)
        reloading = notify.index(lambda m: "RELOADING" in m, mark)
        assert int(notify.messages[reloading]["MONOTONIC_USEC"]) > 0
        wait_for(
            "READY after RELOADING", lambda: notify.index(lambda m: "READY" in m, reloading) >= 0
        )
        wait_for("log line", lambda: "reloaded: applied log.level" in hub.log)

        # a bad config: refused, the old one kept, and said so in STATUS=
        (state / "sorcha-peerd.toml").write_text(config + "\n[log]\nbogus = 1\n")
        mark = len(notify.messages)
        hub.proc.send_signal(signal.SIGHUP)
        wait_for(
            "READY after a refused reload", lambda: notify.index(lambda m: "READY" in m, mark) >= 0
        )
        wait_for(
            "STATUS says so",
            lambda: any("reload failed" in m.get("STATUS", "") for m in notify.messages[mark:]),
        )
        assert hub.peerctl("status").returncode == 0  # still serving
        refused = hub.peerctl("reload")
        assert refused.returncode == 1 and "keeps the running one" in refused.stderr
        assert "log.bogus" in refused.stderr

        assert hub.stop() == 0
        assert notify.count("STOPPING") == 1
    finally:
        hub.stop()


def test_reload_and_reload_check_over_the_control_socket(tmp_path: Path) -> None:
    state = tmp_path / "hub"
    config = FAST.format(hb=0.5)
    hub = start_daemon(state, config=config)
    try:
        (state / "sorcha-peerd.toml").write_text(
            config.replace("heartbeat_interval = 0.5", "heartbeat_interval = 0.7")
            + "\n[store]\npoll_interval = 0.2\n"
        )
        check = hub.peerctl("reload", "--check", "--json")
        assert check.returncode == 0, check.stderr
        assert json.loads(check.stdout) == {
            "check": True,
            "applied": ["timing.heartbeat_interval"],
            "needs_restart": ["store.poll_interval"],
        }
        done = hub.peerctl("reload")
        assert done.returncode == 0, done.stderr
        assert "applied: timing.heartbeat_interval" in done.stdout
        assert "needs a restart: store.poll_interval" in done.stdout
    finally:
        assert hub.stop() == 0


def test_a_draining_hub_sends_its_peers_on_well_inside_a_heartbeat(
    tmp_path: Path,
) -> None:
    net = Net(tmp_path)
    try:
        register = tmp_path / "shared"
        p1, p2 = free_port(), free_port()
        h1 = net.hub("h1", p1, register, hb=10.0)
        net.hub("h2", p2, register, hb=10.0)
        peer = net.peer("p1", {"h1": p1, "h2": p2}, hb=10.0)
        wait_for("on h1", peer_is(peer, status="connected", hub="h1", in_sync=True))
        h1.proc.send_signal(signal.SIGTERM)
        # one heartbeat interval is 10 s: the peer must be gone well before its
        # next heartbeat could have told it, because the drain ended its push stream
        wait_for("on h2", peer_is(peer, status="connected", hub="h2"), timeout=5)
        assert "ends (failover): the hub is going away" in peer.log
        assert "heartbeat" not in peer.log.split("connected to hub h1")[-1].split("ends (")[0]
        assert h1.stop() == 0
    finally:
        net.stop_all()


def test_health_ok_degraded_and_unreachable(tmp_path: Path) -> None:
    net = Net(tmp_path)
    try:
        port = free_port()
        hub = net.hub("h1", port, tmp_path / "reg")
        peer = net.peer("p1", {"h1": port})
        wait_for("in sync", peer_is(peer, status="connected", in_sync=True))
        ok = peer.peerctl("health")
        assert ok.returncode == 0, ok.stdout
        assert ok.stdout.startswith("SORCHA-PEERD OK - peer p1 connected to h1")
        assert "| version=" in ok.stdout and ok.stdout.count("\n") == 1
        assert hub.peerctl("health").returncode == 0

        assert hub.stop() == 0
        wait_for("isolated", peer_is(peer, status="isolated"))
        degraded = peer.peerctl("health")
        assert degraded.returncode == 1 and "WARNING" in degraded.stdout
        assert "isolated" in degraded.stdout
        assert status(peer)[0] == 1

        assert peer.stop() == 0
        gone = peer.peerctl("health")
        assert gone.returncode == 2 and gone.stdout.startswith("SORCHA-PEERD CRITICAL")
    finally:
        net.stop_all()


def test_read_only_commands_use_the_status_socket(tmp_path: Path) -> None:
    state = tmp_path / "hub"
    hub = start_daemon(state)
    try:
        status_sock = hub.socket.with_name("status.sock")
        assert oct(os.stat(status_sock).st_mode & 0o777) == oct(0o660)
        assert oct(os.stat(hub.socket).st_mode & 0o777) == oct(0o600)
        read = hub.peerctl("--json", "peers")
        assert read.returncode == 0 and json.loads(read.stdout) == []
        denied = _peerctl(hub, "--socket", str(status_sock), "deprecate", "x")
        assert denied.returncode == 1 and "status socket only reads" in denied.stderr
    finally:
        hub.stop()


def _peerctl(hub: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sorcha_peerd.cli.peerctl", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_systemctl_reload_of_a_broken_file_still_reaches_the_daemon(tmp_path: Path) -> None:
    """ExecReload runs ``sorcha-peerctl reload`` with the unit's environment only."""
    state = tmp_path / "hub"
    config = FAST.format(hb=0.5)
    hub = start_daemon(state, config=config)
    try:
        conf = state / "sorcha-peerd.toml"
        conf.write_text(config + "\n[log]\nbogus = 1\n")
        env = {**os.environ, "RUNTIME_DIRECTORY": str(hub.socket.parent)}
        result = subprocess.run(
            [sys.executable, "-m", "sorcha_peerd.cli.peerctl", "--config", str(conf), "reload"],
            capture_output=True,
            text=True,
            timeout=30,
            env=env,
        )
        assert result.returncode == 1, result.stderr
        assert "keeps the running one" in result.stderr and "log.bogus" in result.stderr
        assert hub.peerctl("status").returncode == 0
    finally:
        assert hub.stop() == 0


def test_json_on_every_command(tmp_path: Path) -> None:
    hub = start_daemon(tmp_path / "hub")
    try:
        doc = tmp_path / "j.json"
        doc.write_text('{"id": "j1"}')
        published = hub.peerctl("--json", "publish", str(doc))
        assert json.loads(published.stdout)["id"] == "j1"
        got = json.loads(hub.peerctl("get", "j1", "--json").stdout)
        assert got["blueprint"]["version"] == 2 and json.loads(got["document"]) == {"id": "j1"}
        gone = json.loads(hub.peerctl("--json", "deprecate", "j1").stdout)
        assert gone["is_active"] is False
        for command in ("status", "blueprints", "health", "peers", "metrics", "version"):
            out = hub.peerctl("--json", command)
            assert out.returncode == 0, (command, out.stderr)
            json.loads(out.stdout)
    finally:
        hub.stop()
