"""The real daemon's start-up and stop, as an operator sees them (exit statuses, messages)."""

from __future__ import annotations

import json
import signal
import sqlite3
from pathlib import Path

from tests.daemon_process import running_daemon, start_daemon


def test_seeds_once_however_often_it_restarts(tmp_path: Path) -> None:
    for _ in range(3):
        with running_daemon(tmp_path / "state") as hub:
            listed = hub.peerctl("blueprints", "--json", "--all")
            assert listed.returncode == 0, listed.stderr
            entries = json.loads(listed.stdout)
            assert [(e["id"], e["version"], e["published_by"]) for e in entries] == [
                ("register-creation-v1", 1, "system")
            ]
            status = json.loads(hub.peerctl("status", "--json").stdout)
            assert status["role"] == "hub" and status["version"] == 1
            assert status["last_publish"] == entries[0]["published_at"] > 0


def test_sigterm_and_sigint_stop_it_cleanly(tmp_path: Path) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        hub = start_daemon(tmp_path / "state")
        assert hub.stop(sig) == 0, hub.log
        assert "stopped" in hub.log
        assert not hub.socket.exists()


def test_a_taken_grpc_address_fails_at_start(tmp_path: Path) -> None:
    with running_daemon(tmp_path / "a") as first:
        second = start_daemon(tmp_path / "b", "--listen", f"127.0.0.1:{first.port}", wait=False)
        second.proc.wait(timeout=20)
        assert second.stop() == 1
        assert "address in use" in second.log
        assert first.proc.poll() is None  # the first one is untouched


def test_a_live_control_socket_is_not_taken_over(tmp_path: Path) -> None:
    with running_daemon(tmp_path / "a") as first:
        second = start_daemon(tmp_path / "b", "--control-socket", str(first.socket), wait=False)
        second.proc.wait(timeout=20)
        assert second.stop() == 1
        assert "in use" in second.log
        assert first.peerctl("status").returncode == 0


def test_a_corrupted_register_is_not_served(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with running_daemon(state):
        pass
    with sqlite3.connect(state / "register.sqlite3") as db:
        db.execute(
            "UPDATE entries SET checksum = ? WHERE blueprint_id = 'register-creation-v1'",
            ("sha256:" + "0" * 64,),
        )
    hub = start_daemon(state, wait=False)
    hub.proc.wait(timeout=20)
    assert hub.stop() == 65
    assert "corrupted" in hub.log and "register-creation-v1" in hub.log


def test_the_nodes_own_document_limit_applies_and_publishes_nothing(tmp_path: Path) -> None:
    small = tmp_path / "small.json"
    small.write_text(json.dumps({"id": "small"}))
    large = tmp_path / "large.json"
    large.write_text(json.dumps({"id": "large", "pad": "x" * 300}))
    with running_daemon(tmp_path / "state", config="[limits]\nmax_document_bytes = 200\n") as hub:
        refused = hub.peerctl("publish", str(small), str(large))
        assert refused.returncode == 1
        assert "large.json" in refused.stderr and "at most 200" in refused.stderr
        listed = json.loads(hub.peerctl("blueprints", "--json", "--all").stdout)
        assert [e["id"] for e in listed] == ["register-creation-v1"]
        assert hub.peerctl("publish", str(small)).returncode == 0
