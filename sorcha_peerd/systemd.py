"""sd_notify for a ``Type=notify`` / ``Type=notify-reload`` service, in the standard library.

The protocol (sd_notify(3)): one datagram of newline-separated ``KEY=value``
assignments sent to the AF_UNIX socket named by ``$NOTIFY_SOCKET``, either a
file system path (``/run/systemd/notify``) or an abstract name written with a
leading ``@``. When the variable is unset (not run by systemd, or a unit that
is not ``Type=notify``) every call is a no-op.

What the daemon sends, and when:

- ``READY=1`` once the configuration is valid, the store is open and the
  listeners are bound (:meth:`Notifier.ready`);
- ``STATUS=...``, one line kept current: role, connection state, version,
  peers (:meth:`Notifier.status`);
- ``WATCHDOG=1`` every half ``$WATCHDOG_USEC``, from the event loop
  (:func:`watchdog_interval`, :func:`run_watchdog`), so that a hung loop
  stops the pings and systemd kills and restarts the service;
- ``RELOADING=1`` with ``MONOTONIC_USEC=`` before a reload and ``READY=1``
  after it (:meth:`Notifier.reloading`), as ``Type=notify-reload`` expects;
- ``STOPPING=1`` when shutdown begins (:meth:`Notifier.stopping`);
- ``EXTEND_TIMEOUT_USEC=`` during a long start or stop
  (:meth:`Notifier.extend_timeout`).

Sending never raises: a notification that cannot be delivered (no such
socket, receiver gone, receiver's queue full) is logged at debug level and
reported as ``False``. The socket is non-blocking, so a stuck receiver can
never stall the event loop.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Mapping
from types import TracebackType

import trio

log = logging.getLogger(__name__)

__all__ = ["Notifier", "run_watchdog", "watchdog_interval"]


def _monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds: the clock systemd compares MONOTONIC_USEC with."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def _one_line(text: str) -> str:
    """``text`` as a single line: STATUS= must not carry a newline into the next assignment."""
    return " ".join(text.splitlines()).strip()


class Notifier:
    """Sends sd_notify datagrams to one ``$NOTIFY_SOCKET``; a no-op when there is none.

    Holds one non-blocking datagram socket, opened on first use and reused
    until :meth:`close`. Not thread-safe; meant to be used from the event loop.
    """

    def __init__(self, address: str | None) -> None:
        """``address`` is the value of ``$NOTIFY_SOCKET`` (a path, or ``@name``), or None.

        An empty string is treated as unset. An address that is neither an
        absolute path nor an abstract ``@`` name (systemd's ``vsock:`` form,
        a relative path) is not supported: it is logged and ignored.
        """
        self._address: str | None = None
        self._sock: socket.socket | None = None
        self._closed = False
        if not address:
            return
        if address.startswith("@"):
            self._address = "\0" + address[1:]
        elif address.startswith("/"):
            self._address = address
        else:
            log.warning("NOTIFY_SOCKET=%r is not supported (not a path or @name); ignored", address)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Notifier:
        """A notifier for ``env["NOTIFY_SOCKET"]``, disabled when it is unset or empty."""
        return cls(env.get("NOTIFY_SOCKET"))

    @property
    def address(self) -> str | None:
        """The socket address as passed to ``sendto`` (abstract names start with NUL)."""
        return self._address

    @property
    def enabled(self) -> bool:
        """Whether there is a socket to notify (and the notifier is not closed)."""
        return self._address is not None and not self._closed

    def send(self, *lines: str) -> bool:
        """Send ``lines`` (``KEY=value`` each) as one datagram; whether it was sent.

        Never raises. Returns False at once when disabled or given no lines.
        """
        if not lines or self._address is None or self._closed:
            return False
        data = "\n".join(lines).encode("utf-8", errors="replace")
        try:
            if self._sock is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                sock.setblocking(False)
                self._sock = sock
            self._sock.sendto(data, socket.MSG_DONTWAIT, self._address)
        except (OSError, ValueError) as exc:
            log.debug("sd_notify %r to %r failed: %s", lines, self._address, exc)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """``READY=1``: started (or reloaded), with an optional ``STATUS=`` in the same datagram."""
        return self.send("READY=1", *self._status_lines(status))

    def status(self, text: str) -> bool:
        """``STATUS=text`` (newlines in ``text`` become spaces)."""
        return self.send(f"STATUS={_one_line(text)}")

    def reloading(self, status: str | None = None) -> bool:
        """``RELOADING=1`` and ``MONOTONIC_USEC=<now>`` in one datagram; send READY=1 after."""
        return self.send(
            "RELOADING=1", f"MONOTONIC_USEC={_monotonic_usec()}", *self._status_lines(status)
        )

    def stopping(self, status: str | None = None) -> bool:
        """``STOPPING=1``: shutdown has begun."""
        return self.send("STOPPING=1", *self._status_lines(status))

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: one keep-alive ping."""
        return self.send("WATCHDOG=1")

    def extend_timeout(self, seconds: float) -> bool:
        """``EXTEND_TIMEOUT_USEC=``: ask for ``seconds`` more to finish starting or stopping."""
        return self.send(f"EXTEND_TIMEOUT_USEC={max(0, round(seconds * 1_000_000))}")

    def close(self) -> None:
        """Close the socket; every later send is a no-op returning False. Idempotent."""
        self._closed = True
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> Notifier:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Notifier(address={self._address!r}, closed={self._closed})"

    @staticmethod
    def _status_lines(status: str | None) -> tuple[str, ...]:
        return () if status is None else (f"STATUS={_one_line(status)}",)


def watchdog_interval(env: Mapping[str, str], pid: int) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings (half ``$WATCHDOG_USEC``), or None for no watchdog.

    None when ``$WATCHDOG_USEC`` is unset, not a positive integer, or when
    ``$WATCHDOG_PID`` is set and is not ``pid`` (the variables were meant for
    another process, e.g. inherited by a child). Bad values are logged.
    """
    raw_usec = env.get("WATCHDOG_USEC")
    if raw_usec is None or raw_usec == "":
        return None
    try:
        usec = int(raw_usec)
    except ValueError:
        log.warning("WATCHDOG_USEC=%r is not an integer; watchdog disabled", raw_usec)
        return None
    if usec <= 0:
        log.warning("WATCHDOG_USEC=%r is not positive; watchdog disabled", raw_usec)
        return None
    raw_pid = env.get("WATCHDOG_PID")
    if raw_pid is not None and raw_pid != "":
        try:
            watchdog_pid = int(raw_pid)
        except ValueError:
            log.warning("WATCHDOG_PID=%r is not an integer; watchdog disabled", raw_pid)
            return None
        if watchdog_pid != pid:
            log.debug(
                "WATCHDOG_PID=%d is not this process (%d); watchdog disabled", watchdog_pid, pid
            )
            return None
    return usec / 2 / 1_000_000


async def run_watchdog(notifier: Notifier, interval: float) -> None:
    """Send ``WATCHDOG=1`` now and then every ``interval`` seconds, forever.

    Runs as a task of the daemon's nursery: the pings come from the event
    loop itself, so a loop that hangs (a blocking call, a task that never
    yields) stops them and systemd's watchdog restarts the service.
    """
    if not interval > 0:
        raise ValueError(f"watchdog interval must be positive, not {interval!r}")
    while True:
        notifier.watchdog()
        await trio.sleep(interval)
