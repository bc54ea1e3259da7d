"""Logging for the daemon: journald-friendly under systemd, readable lines elsewhere.

:func:`configure_logging` installs one handler on the root logger and
returns a :class:`LogControl` whose :meth:`LogControl.set_level` changes the
level live (on reload).

Two formats, chosen by where the stream goes:

- **journal**: when ``$JOURNAL_STREAM`` (``DEV:INODE``, set by systemd) names
  the stream's own file, the journal adds the time itself. Each line is
  ``<N>logger: message`` with ``N`` the syslog priority of the level (debug
  7, info 6, warning 4, error 3, critical 2). A multi-line message or a
  traceback keeps the ``<N>`` prefix on every line, so that journald never
  stores its continuation lines at the default priority.
- **plain**: ``2026-11-24 12:00:00,123 INFO logger: message``.

Logger names are shortened: a leading ``sorcha_peerd.`` is dropped
(``sorcha_peerd.peer.session`` shows as ``peer.session``).

Structured fields: pass them with ``extra=`` under the keys of
:data:`FIELDS` (:data:`PEER_ID` ``"peer_id"``, :data:`HUB_ID` ``"hub_id"``),
e.g. ``log.info("connected", extra={PEER_ID: "p1", HUB_ID: "n0"})``. Both
formats show them after the message as ``peer=p1 hub=n0``.

The chatty third-party loggers (:data:`NOISY_LOGGERS`: purerpc, h2, hpack,
pymongo) are held to WARNING and above unless the level is debug. That is
done by a filter on our handler, not by changing those loggers' own levels.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import Final, TextIO

__all__ = [
    "FIELDS",
    "HUB_ID",
    "LEVELS",
    "NOISY_LOGGERS",
    "PEER_ID",
    "LogControl",
    "configure_logging",
    "is_journal_stream",
    "syslog_priority",
]

#: Level names accepted in the configuration (``log.level``).
LEVELS: Final[Mapping[str, int]] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}

#: ``extra=`` key for the id of the peer a record is about.
PEER_ID: Final = "peer_id"
#: ``extra=`` key for the id of the hub a record is about.
HUB_ID: Final = "hub_id"
#: ``extra=`` key -> the label it is shown with, in this order.
FIELDS: Final[Mapping[str, str]] = {PEER_ID: "peer", HUB_ID: "hub"}

#: Third-party loggers held to WARNING unless the level is debug (with their children).
NOISY_LOGGERS: Final = ("purerpc", "h2", "hpack", "pymongo")

_PREFIX: Final = "sorcha_peerd."


def syslog_priority(levelno: int) -> int:
    """The syslog priority of a logging level (between the standard ones, the lower one's)."""
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    if levelno >= logging.INFO:
        return 6
    return 7


def is_journal_stream(env: Mapping[str, str], stream: TextIO) -> bool:
    """Whether ``stream`` is the journal: ``$JOURNAL_STREAM`` names its device and inode.

    False when the variable is unset or malformed, or when the stream has no
    file descriptor (a StringIO) or cannot be inspected.
    """
    value = env.get("JOURNAL_STREAM", "")
    dev, sep, ino = value.partition(":")
    if not sep:
        return False
    try:
        expected = (int(dev), int(ino))
        st = os.fstat(stream.fileno())
    except (ValueError, OSError):  # io.UnsupportedOperation is both
        return False
    return (st.st_dev, st.st_ino) == expected


def _short_name(name: str) -> str:
    return name.removeprefix(_PREFIX)


def _fields(record: logging.LogRecord) -> str:
    parts = [
        f"{label}={value}"
        for key, label in FIELDS.items()
        if (value := record.__dict__.get(key)) is not None
    ]
    return " " + " ".join(parts) if parts else ""


class _BodyFormatter(logging.Formatter):
    """``logger: message fields`` and then any traceback or stack, the part both formats share."""

    def body(self, record: logging.LogRecord) -> str:
        text = f"{_short_name(record.name)}: {record.getMessage()}{_fields(record)}"
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            text = f"{text}\n{record.exc_text}"
        if record.stack_info:
            text = f"{text}\n{self.formatStack(record.stack_info)}"
        return text


class JournalFormatter(_BodyFormatter):
    """``<N>logger: message`` on every line, no timestamp (journald adds its own)."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{syslog_priority(record.levelno)}>"
        return "\n".join(prefix + line for line in self.body(record).splitlines())


class PlainFormatter(_BodyFormatter):
    """``2026-11-24 12:00:00,123 INFO logger: message``."""

    def format(self, record: logging.LogRecord) -> str:
        return f"{self.formatTime(record)} {record.levelname} {self.body(record)}"


class _Handler(logging.StreamHandler[TextIO]):
    """Our root handler; its class is how a second configure finds and replaces it."""


def _parse_level(level: str) -> int:
    try:
        return LEVELS[level.lower()]
    except KeyError:
        raise ValueError(
            f"unknown log level {level!r} (expected one of {', '.join(LEVELS)})"
        ) from None


class LogControl:
    """The installed logging configuration: change its level live, or remove it."""

    def __init__(self, handler: logging.Handler, level: int, *, journal: bool) -> None:
        self._handler = handler
        self._level = level
        self.journal = journal
        handler.addFilter(self._filter)

    @property
    def level(self) -> str:
        """The current level's name (``"info"``...)."""
        return next(name for name, value in LEVELS.items() if value == self._level)

    @property
    def handler(self) -> logging.Handler:
        return self._handler

    def set_level(self, level: str) -> None:
        """Change the level now (``debug``, ``info``, ``warning`` or ``error``).

        Raises ValueError for any other name, changing nothing.
        """
        levelno = _parse_level(level)
        self._level = levelno
        logging.getLogger().setLevel(levelno)

    def close(self) -> None:
        """Remove the handler from the root logger (the stream is left open)."""
        logging.getLogger().removeHandler(self._handler)
        self._handler.close()

    def _filter(self, record: logging.LogRecord) -> bool:
        if self._level <= logging.DEBUG or record.levelno >= logging.WARNING:
            return True
        name = record.name
        return not any(name == n or name.startswith(n + ".") for n in NOISY_LOGGERS)


def configure_logging(
    level: str, *, env: Mapping[str, str], stream: TextIO | None = None
) -> LogControl:
    """Log to ``stream`` (default: ``sys.stderr`` at call time) at ``level``; see the module doc.

    Replaces the handler of an earlier call (so calling it twice does not
    duplicate output) and leaves other root handlers alone. Raises ValueError
    for an unknown level, before changing anything.
    """
    levelno = _parse_level(level)
    out = sys.stderr if stream is None else stream
    journal = is_journal_stream(env, out)
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
        old.close()
    handler = _Handler(out)
    handler.setFormatter(JournalFormatter() if journal else PlainFormatter())
    control = LogControl(handler, levelno, journal=journal)
    root.addHandler(handler)
    root.setLevel(levelno)
    return control
