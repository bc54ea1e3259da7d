"""Real hub and peer daemons on loopback with sub-second timings, driven as an operator would."""

from __future__ import annotations

import json
import signal
import socket
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from sorcha_peerd.register import Snapshot
from sorcha_peerd.store.sqlite import SqliteRegisterStore
from tests.daemon_process import Daemon, start_daemon

FAST = """
[timing]
heartbeat_interval = {hb}
heartbeat_timeout = {hb}
connect_timeout = 1.0
backoff_initial = 0.1
backoff_max = 0.5
call_timeout = 5.0
sync_interval = 300.0
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def hubs_toml(hubs: dict[str, int]) -> str:
    return "".join(
        f'\n[[hubs]]\nid = "{hub_id}"\naddress = "127.0.0.1:{port}"\n'
        for hub_id, port in hubs.items()
    )


class Net:
    """Hubs and peers of one test, stopped at its end."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.daemons: list[Daemon] = []

    def hub(self, hub_id: str, port: int, register: Path, hb: float = 0.5) -> Daemon:
        """A hub on ``port`` whose register lives in ``register`` (hubs may share one)."""
        d = start_daemon(
            register,
            "--listen",
            f"127.0.0.1:{port}",
            role="hub",
            node_id=hub_id,
            config=FAST.format(hb=hb),
        )
        self.daemons.append(d)
        return d

    def peer(self, peer_id: str, hubs: dict[str, int], hb: float = 0.5) -> Daemon:
        state = self.tmp / peer_id
        d = start_daemon(
            state, role="peer", node_id=peer_id, config=FAST.format(hb=hb) + hubs_toml(hubs)
        )
        self.daemons.append(d)
        return d

    def stop_all(self) -> None:
        for d in reversed(self.daemons):  # peers first: they say goodbye, hubs drain at once
            d.stop()


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Net]:
    n = Net(tmp_path)
    try:
        yield n
    finally:
        n.stop_all()


def status(d: Daemon) -> tuple[int, dict[str, Any]]:
    r = d.peerctl("status", "--json", timeout=10)
    return r.returncode, (json.loads(r.stdout) if r.stdout.strip() else {})


def wait_for(what: str, check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def peer_is(d: Daemon, **expected: Any) -> Callable[[], bool]:
    def check() -> bool:
        _, s = status(d)
        return all(s.get(k) == v for k, v in expected.items())

    return check


def publish(hub: Daemon, tmp: Path, blueprint_id: str, **fields: Any) -> None:
    path = tmp / f"{blueprint_id}.json"
    path.write_text(json.dumps({"id": blueprint_id, **fields}))
    r = hub.peerctl("publish", str(path))
    assert r.returncode == 0, r.stderr


def has(d: Daemon, blueprint_id: str) -> bool:
    return d.peerctl("get", blueprint_id).returncode == 0


def register_digest(db: Path) -> str:
    async def read() -> str:
        async with SqliteRegisterStore(db) as store:
            snapshot = Snapshot()
            async for page in store.iter_since(0):
                snapshot = snapshot.apply(page)
            return snapshot.digest

    return trio.run(read)


def test_a_peer_whose_first_hub_is_down_connects_to_the_second(net: Net, tmp_path: Path) -> None:
    down, up = free_port(), free_port()
    net.hub("h2", up, tmp_path / "reg")
    peer = net.peer("p1", {"h1": down, "h2": up})
    wait_for("connected to h2", peer_is(peer, status="connected", hub="h2", in_sync=True))
    code, s = status(peer)
    assert code == 0
    first = s["active_peers"][0]
    assert first["hub"] == "h1" and first["failures"] >= 1 and not first["connected"]
    assert has(peer, "register-creation-v1")


def test_a_publish_reaches_the_peer_by_push_well_inside_a_heartbeat(
    net: Net, tmp_path: Path
) -> None:
    port = free_port()
    hub = net.hub("h1", port, tmp_path / "reg", hb=10.0)
    peer = net.peer("p1", {"h1": port}, hb=10.0)
    wait_for("subscribed", peer_is(peer, status="connected", push="subscribed", in_sync=True))
    _, before = status(peer)
    publish(hub, tmp_path, "pushed", name="pushed")
    # within one heartbeat interval (10 s); the periodic sync is 300 s away
    wait_for("the publish on the peer", lambda: has(peer, "pushed"), timeout=10.0)
    _, after = status(peer)
    assert after["notifications"] > before["notifications"]  # it was the push


def test_failover_isolation_and_catching_up(net: Net, tmp_path: Path) -> None:
    register = tmp_path / "shared"  # two hubs on one SQLite register
    p1, p2 = free_port(), free_port()
    h1 = net.hub("h1", p1, register)
    h2 = net.hub("h2", p2, register)
    publish(h1, tmp_path, "gone-before")
    assert h1.peerctl("deprecate", "gone-before").returncode == 0
    peer = net.peer("p1", {"h1": p1, "h2": p2})
    wait_for("connected to h1", peer_is(peer, status="connected", hub="h1", in_sync=True))

    assert h1.stop() == 0  # a draining hub sends its peers away at once
    wait_for("failed over to h2", peer_is(peer, status="connected", hub="h2"))
    _, s = status(peer)
    assert s["failovers"] >= 1
    publish(h2, tmp_path, "after-failover")
    wait_for("entry via h2", lambda: has(peer, "after-failover"))

    assert h2.stop() == 0
    wait_for("isolated", peer_is(peer, status="isolated", hub=None))
    code, s = status(peer)
    assert code == 1  # degraded
    assert has(peer, "after-failover")  # still serving its replica
    # a change made while the peer is cut off, straight into the hubs' register
    trio.run(_publish_direct, register / "register.sqlite3", "while-isolated")

    net.hub("h1", p1, register)  # one hub comes back
    wait_for("caught up", lambda: has(peer, "while-isolated"))
    wait_for("healthy", lambda: status(peer)[0] == 0)
    # the very same register as the hubs', deprecated entries included
    assert status(peer)[1]["digest"] == register_digest(register / "register.sqlite3")
    assert "full sync" not in peer.log.split("connected to hub h2")[-1]  # same history: no resync


async def _publish_direct(db: Path, blueprint_id: str) -> None:
    async with SqliteRegisterStore(db) as store:
        await store.publish(blueprint_id, b'{"direct": true}', published_by="test")


def test_a_peer_restarted_while_isolated_still_serves(net: Net, tmp_path: Path) -> None:
    port = free_port()
    hub = net.hub("h1", port, tmp_path / "reg")
    publish(hub, tmp_path, "kept")
    peer = net.peer("p1", {"h1": port})
    wait_for("synced", lambda: has(peer, "kept"))
    assert hub.stop() == 0
    assert peer.stop() == 0
    peer = net.peer("p1", {"h1": port})
    wait_for("isolated", peer_is(peer, status="isolated"))
    assert has(peer, "kept")
    assert json.loads(peer.peerctl("blueprints", "--json").stdout)[-1]["id"] == "kept"


def test_sigkill_in_the_middle_of_a_full_sync(net: Net, tmp_path: Path) -> None:
    register = tmp_path / "reg"
    register.mkdir()
    trio.run(_fill, register / "register.sqlite3", 5_000)
    port = free_port()
    net.hub("h1", port, register)
    peer = net.peer("p1", {"h1": port})
    wait_for("the full sync to start", lambda: "full sync from hub h1" in peer.log, timeout=30)
    time.sleep(0.05)
    assert peer.stop(signal.SIGKILL) == -signal.SIGKILL
    db = tmp_path / "p1" / "register.sqlite3"
    with sqlite3.connect(db) as conn:
        held = conn.execute("SELECT COUNT(*) FROM entries").fetchone()[0]
    assert held in (0, 5_001), f"a half-applied full sync: {held} entries"

    peer = net.peer("p1", {"h1": port})
    wait_for("in sync", peer_is(peer, status="connected", in_sync=True), timeout=60)
    _, s = status(peer)
    assert s["blueprints"] == 5_001
    assert s["digest"] == register_digest(register / "register.sqlite3")


async def _fill(db: Path, n: int) -> None:
    async with SqliteRegisterStore(db) as store:
        for i in range(n):
            doc = json.dumps({"id": f"bp-{i}", "pad": "x" * 200}).encode()
            await store.publish(f"bp-{i}", doc, published_by="fill")


def test_a_peer_never_dials_itself(tmp_path: Path) -> None:
    lonely = start_daemon(
        tmp_path / "me",
        role="peer",
        node_id="p1",
        wait=False,
        config=FAST.format(hb=0.5) + hubs_toml({"p1": free_port()}),
    )
    lonely.proc.wait(timeout=20)
    assert lonely.stop() == 1
    assert "not dialing hub p1" in lonely.log and "at least one hub" in lonely.log


def test_a_hub_that_lost_its_register_gets_a_full_resync(net: Net, tmp_path: Path) -> None:
    """Same hub id and address, but its store was wiped: the peer must not trust its checkpoint."""
    port = free_port()
    hub = net.hub("h1", port, tmp_path / "old")
    for name in ("a", "b", "c"):
        publish(hub, tmp_path, name)
    peer = net.peer("p1", {"h1": port})
    wait_for("synced", lambda: has(peer, "c"))
    assert hub.stop() == 0
    fresh = tmp_path / "new"  # the same hub comes back with an empty register
    net.hub("h1", port, fresh)
    wait_for(
        "resynced from the new register",
        lambda: status(peer)[1].get("digest") == register_digest(fresh / "register.sqlite3"),
    )
    assert not has(peer, "a")
    assert "behind this replica" in peer.log


def test_a_peer_with_a_smaller_document_limit_still_replicates(net: Net, tmp_path: Path) -> None:
    port = free_port()
    hub = net.hub("h1", port, tmp_path / "reg")
    big = tmp_path / "big.json"
    big.write_text(json.dumps({"id": "big", "pad": "x" * 2000}))
    assert hub.peerctl("publish", str(big)).returncode == 0
    state = tmp_path / "p1"
    peer = start_daemon(
        state,
        role="peer",
        node_id="p1",
        config=FAST.format(hb=0.5)
        + "[limits]\nmax_document_bytes = 500\n"
        + hubs_toml({"h1": port}),
    )
    net.daemons.append(peer)
    wait_for("in sync", peer_is(peer, status="connected", in_sync=True))
    assert has(peer, "big") and status(peer)[1]["rejected_entries"] == 0
