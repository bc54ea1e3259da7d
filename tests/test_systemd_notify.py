"""sd_notify: the datagrams a real AF_UNIX socket of the test's own receives."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing

from sorcha_peerd.systemd import Notifier, run_watchdog, watchdog_interval


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path: AF_UNIX paths are limited to 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="sdn-", dir="/tmp" if os.path.isdir("/tmp") else None))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _receiver(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(5)
    return sock


@pytest.fixture(params=["path", "abstract"])
def receiver(
    request: pytest.FixtureRequest, short_dir: Path
) -> Iterator[tuple[socket.socket, str]]:
    """(bound receiving socket, the NOTIFY_SOCKET value naming it), both address kinds."""
    if request.param == "path":
        env_value = str(short_dir / "notify")
        address = env_value
    else:
        env_value = f"@sorcha-test-{uuid.uuid4().hex}"
        address = "\0" + env_value[1:]
    sock = _receiver(address)
    try:
        yield sock, env_value
    finally:
        sock.close()


def _received(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


def _pending(sock: socket.socket) -> list[str]:
    """Every datagram waiting on ``sock``, without waiting for more."""
    sock.setblocking(False)
    out = []
    try:
        while True:
            out.append(sock.recv(4096).decode())
    except BlockingIOError:
        return out
    finally:
        sock.settimeout(5)


# --- the address ---------------------------------------------------------------------------


def test_a_path_is_used_as_is_and_an_at_name_is_abstract() -> None:
    assert Notifier.from_env({"NOTIFY_SOCKET": "/run/systemd/notify"}).address == (
        "/run/systemd/notify"
    )
    assert Notifier.from_env({"NOTIFY_SOCKET": "@foo/bar"}).address == "\0foo/bar"


@pytest.mark.parametrize("env", [{}, {"NOTIFY_SOCKET": ""}, {"NOTIFY_SOCKET": "relative/path"}])
def test_unset_empty_or_unsupported_socket_does_nothing(env: dict[str, str]) -> None:
    notifier = Notifier.from_env(env)
    assert not notifier.enabled
    assert notifier.address is None
    for sent in (
        notifier.ready(),
        notifier.status("x"),
        notifier.reloading(),
        notifier.stopping(),
        notifier.watchdog(),
        notifier.extend_timeout(5),
        notifier.send("READY=1"),
    ):
        assert sent is False
    notifier.close()


# --- every helper, on a real socket ----------------------------------------------------------


def test_every_helper_sends_its_datagram(receiver: tuple[socket.socket, str]) -> None:
    sock, env_value = receiver
    with Notifier.from_env({"NOTIFY_SOCKET": env_value}) as notifier:
        assert notifier.enabled
        assert notifier.ready()
        assert _received(sock) == "READY=1"
        assert notifier.ready(status="hub: serving v3")
        assert _received(sock) == "READY=1\nSTATUS=hub: serving v3"
        assert notifier.status("peer: connected to n0, v12, 0 peers")
        assert _received(sock) == "STATUS=peer: connected to n0, v12, 0 peers"
        assert notifier.stopping()
        assert _received(sock) == "STOPPING=1"
        assert notifier.watchdog()
        assert _received(sock) == "WATCHDOG=1"
        assert notifier.extend_timeout(1.5)
        assert _received(sock) == "EXTEND_TIMEOUT_USEC=1500000"
        assert notifier.send("A=1", "B=2")
        assert _received(sock) == "A=1\nB=2"
    assert not notifier.enabled
    assert notifier.watchdog() is False


def test_reloading_sends_monotonic_usec_in_the_same_datagram(
    receiver: tuple[socket.socket, str],
) -> None:
    sock, env_value = receiver
    notifier = Notifier.from_env({"NOTIFY_SOCKET": env_value})
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert notifier.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    first, second = _received(sock).split("\n")
    assert first == "RELOADING=1"
    key, _, value = second.partition("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(value) <= after
    assert notifier.ready()
    assert _received(sock) == "READY=1"
    notifier.close()


def test_status_is_always_one_line(receiver: tuple[socket.socket, str]) -> None:
    sock, env_value = receiver
    notifier = Notifier.from_env({"NOTIFY_SOCKET": env_value})
    assert notifier.status("hub\nv3\r\n2 peers\n")
    assert _received(sock) == "STATUS=hub v3 2 peers"
    assert notifier.stopping(status="bye\nnow")
    assert _received(sock) == "STOPPING=1\nSTATUS=bye now"
    notifier.close()


def test_text_that_cannot_be_encoded_is_still_sent(receiver: tuple[socket.socket, str]) -> None:
    sock, env_value = receiver
    notifier = Notifier.from_env({"NOTIFY_SOCKET": env_value})
    assert notifier.status("bad \udc80 surrogate")
    assert _received(sock) == "STATUS=bad ? surrogate"
    notifier.close()


def test_one_notifier_keeps_sending_on_its_socket(receiver: tuple[socket.socket, str]) -> None:
    sock, env_value = receiver
    notifier = Notifier.from_env({"NOTIFY_SOCKET": env_value})
    for i in range(5):
        assert notifier.status(f"n={i}")
        assert _received(sock) == f"STATUS=n={i}"
    notifier.close()
    notifier.close()  # idempotent


# --- failures never raise ---------------------------------------------------------------------


def test_a_missing_socket_path_is_not_an_error(
    short_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = Notifier.from_env({"NOTIFY_SOCKET": str(short_dir / "nobody")})
    with caplog.at_level(logging.DEBUG, logger="sorcha_peerd.systemd"):
        assert notifier.ready() is False
    assert any("failed" in r.getMessage() for r in caplog.records)
    assert notifier.send("X=1") is False
    notifier.close()


def test_a_missing_abstract_name_is_not_an_error() -> None:
    notifier = Notifier.from_env({"NOTIFY_SOCKET": f"@sorcha-nobody-{uuid.uuid4().hex}"})
    assert notifier.ready() is False
    notifier.close()


def test_a_closed_receiver_is_not_an_error(short_dir: Path) -> None:
    path = short_dir / "notify"
    sock = _receiver(str(path))
    notifier = Notifier.from_env({"NOTIFY_SOCKET": str(path)})
    assert notifier.ready()
    sock.close()  # the path stays, nobody listens: ECONNREFUSED
    assert path.exists()
    assert notifier.watchdog() is False
    notifier.close()


def test_a_full_receiver_is_not_an_error_and_does_not_block(short_dir: Path) -> None:
    path = short_dir / "notify"
    sock = _receiver(str(path))
    notifier = Notifier.from_env({"NOTIFY_SOCKET": str(path)})
    try:
        results = [notifier.status("x" * 1000) for _ in range(5000)]
        assert results[0] is True
        assert False in results  # the queue filled up (EAGAIN), without blocking or raising
        assert len(_pending(sock)) == results.count(True)  # drain: sending works again
        assert notifier.watchdog()
    finally:
        notifier.close()
        sock.close()


def test_a_socket_path_that_is_too_long_is_not_an_error() -> None:
    notifier = Notifier.from_env({"NOTIFY_SOCKET": "/" + "x" * 300})
    assert notifier.ready() is False
    notifier.close()


# --- watchdog_interval -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": ""}, None),
        ({"WATCHDOG_USEC": "garbage"}, None),
        ({"WATCHDOG_USEC": "1.5"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-20000000"}, None),
        ({"WATCHDOG_USEC": "20000000"}, 10.0),
        ({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "4242"}, 1.5),
        ({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": ""}, 1.5),
        ({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "1"}, None),
        ({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "not-a-pid"}, None),
        ({"WATCHDOG_PID": "4242"}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    assert watchdog_interval(env, 4242) == expected


# --- run_watchdog ------------------------------------------------------------------------------


class _RecordingNotifier(Notifier):
    def __init__(self) -> None:
        super().__init__(None)
        self.pings: list[float] = []

    def watchdog(self) -> bool:
        self.pings.append(trio.current_time())
        return True


async def test_run_watchdog_pings_every_interval_from_the_loop(
    autojump_clock: trio.testing.MockClock,
) -> None:
    notifier = _RecordingNotifier()
    async with trio.open_nursery() as nursery:
        start = trio.current_time()
        nursery.start_soon(run_watchdog, notifier, 2.0)
        await trio.sleep(10.5)
        nursery.cancel_scope.cancel()
    assert [t - start for t in notifier.pings] == pytest.approx([0, 2, 4, 6, 8, 10])


async def test_run_watchdog_sends_real_datagrams(short_dir: Path) -> None:
    path = short_dir / "notify"
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    await sock.bind(str(path))
    notifier = Notifier.from_env({"NOTIFY_SOCKET": str(path)})
    received: list[bytes] = []
    three = trio.Event()

    async def collect() -> None:
        while True:
            received.append(await sock.recv(4096))
            if len(received) >= 3:
                three.set()

    with sock, notifier:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(collect)
            nursery.start_soon(run_watchdog, notifier, 0.01)
            with trio.move_on_after(10):
                await three.wait()
            nursery.cancel_scope.cancel()
    assert len(received) >= 3
    assert set(received) == {b"WATCHDOG=1"}


@pytest.mark.parametrize("interval", [0.0, -1.0, float("nan")])
async def test_run_watchdog_refuses_a_nonpositive_interval(interval: float) -> None:
    with pytest.raises(ValueError, match="positive"):
        await run_watchdog(Notifier(None), interval)
