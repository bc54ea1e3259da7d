"""Which hub a peer talks to, when it dials next, and the state of its link, without I/O.

A :class:`Link` is the peer's half of seed scenarios 2 (priority connection,
backoff with jitter) and 5 (isolated mode), and the hub-switching half of 7
(failover). It is a plain synchronous object in the sans-I/O style of h11: a
trio task asks :meth:`Link.next_step` what to do at the current monotonic time
(``Dial`` a hub, ``Wait`` until some instant, or nothing while connected or
while a dial is out) and reports back what happened. It reads no clock, does
no I/O and draws randomness only from the ``random.Random`` it is handed, so
tests drive it with a fake clock and a seeded generator.

Rules:

* hubs are dialled one at a time, in the order given (their priority);
* a failed dial moves to the next hub, wrapping from the last to the first,
  after a wait that doubles with each consecutive failure
  (:func:`backoff_delay`); the first dial after start, a loss, a failover or
  a reconnect is immediate, and a successful dial resets the backoff;
* a connection that is lost or failed over moves to the *next* hub at once;
  a RECONNECT from the hub dials the *same* hub at once;
* the link is ISOLATED once every hub has failed in the current run of
  consecutive failed dials (a full round with no success) and stays so, still
  dialling in the background, until a dial succeeds.

Transitions (``phase`` is internal; :attr:`Link.state` is derived from it)::

    phase      event                        outcome
    ---------  ---------------------------  ------------------------------------------
    WAITING    next_step, now >= due        Dial; -> DIALING
    WAITING    next_step, now < due         Wait(due)
    DIALING    next_step                    None (dials are never concurrent)
    DIALING    dial_succeeded               -> CONNECTED; backoff and round reset
    DIALING    dial_failed                  -> WAITING; next hub; due = now + backoff
    CONNECTED  next_step                    None
    CONNECTED  connection_lost, failover    -> WAITING; next hub; due = now
    CONNECTED  reconnect                    -> WAITING; same hub; due = now
    any other (phase, event)                LinkProtocolError

    state = CONNECTED   in CONNECTED
            ISOLATED    otherwise, once consecutive failed dials >= number of hubs
                        (or there are no hubs: then next_step is None forever and
                        every report is an error, since no dial was ever handed out)
            CONNECTING  otherwise

Since dials go round the hubs in order and only a success resets the count,
"consecutive failed dials >= number of hubs" is exactly "every hub failed in
the current round".

:class:`LinkProtocolError` for an event that cannot happen in the phase: that
is a bug in the driver, and a loud one is cheaper to find than a link
that silently believes two dials are out. Note that a driver that sees a
FAILOVER advice *and* a broken stream for the same session must report only
one of them.
"""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Sequence

import attrs

__all__ = [
    "Dial",
    "HubEndpoint",
    "HubHistory",
    "Link",
    "LinkProtocolError",
    "LinkState",
    "Wait",
    "backoff_delay",
]


class LinkProtocolError(RuntimeError):
    """The driver reported an event that cannot happen in the link's current phase."""


class LinkState(enum.Enum):
    """What the status (and the ``peer.connection.status`` gauge) shows."""

    CONNECTING = "connecting"
    CONNECTED = "connected"
    ISOLATED = "isolated"


@attrs.frozen
class HubEndpoint:
    """A hub a peer may connect to."""

    id: str
    host: str
    port: int


@attrs.frozen
class Dial:
    """Try to connect to ``hub`` now (the driver bounds the try by its connect timeout)."""

    hub: HubEndpoint
    #: consecutive failed dials before this one (0 for the first after start or a success)
    attempt: int


@attrs.frozen
class Wait:
    """Nothing to do until ``until`` (monotonic seconds) unless an event arrives."""

    until: float


@attrs.frozen
class HubHistory:
    """One hub's record, for the active peers list (FR-037) the status shows.

    ``failures`` counts the attempts that ended badly: failed dials and
    connections that were lost or failed over (a RECONNECT asked by a healthy
    hub is not a failure). Each attempt ends at most once, so
    ``failures <= attempts``.
    """

    hub: HubEndpoint
    attempts: int
    failures: int
    last_attempt: float | None
    last_failure: float | None
    last_failure_reason: str
    #: set while connected to this hub
    connected_since: float | None


def backoff_delay(
    failures: int, *, initial: float, maximum: float, jitter: float, rng: random.Random
) -> float:
    """The wait after the ``failures``-th consecutive failure (1, 2, ...).

    ``min(maximum, initial * 2 ** (failures - 1) + uniform(0, jitter))``: the
    formula of stamina (``stamina._core._compute_backoff`` with an exponent
    base of 2), reproduced rather than used through stamina's retry loop
    because that loop sleeps by itself: it cannot be driven by a fake clock,
    could not hand the wait to a driver that must also watch for shutdown, and
    draws jitter from the global ``random``. Here the wait is a value the
    driver sleeps on, and the jitter comes from the injected generator.
    Like stamina, no jitter is drawn when ``jitter`` is 0, and an exponent too
    large for a float gives ``maximum``.
    """
    if failures < 1:
        raise ValueError(f"failures counts from 1, got {failures}")
    spread = rng.uniform(0, jitter) if jitter else 0.0
    if initial == 0:
        return min(maximum, spread)
    try:
        base = initial * 2.0 ** (failures - 1)
    except OverflowError:
        return maximum
    return min(maximum, base + spread)


class _Phase(enum.Enum):
    WAITING = "waiting"
    DIALING = "dialing"
    CONNECTED = "connected"


@attrs.define
class _Record:
    """The mutable counterpart of :class:`HubHistory`."""

    hub: HubEndpoint
    attempts: int = 0
    failures: int = 0
    last_attempt: float | None = None
    last_failure: float | None = None
    last_failure_reason: str = ""
    connected_since: float | None = None

    def failed(self, now: float, reason: str) -> None:
        self.failures += 1
        self.last_failure = now
        self.last_failure_reason = reason
        self.connected_since = None

    def freeze(self) -> HubHistory:
        return HubHistory(
            hub=self.hub,
            attempts=self.attempts,
            failures=self.failures,
            last_attempt=self.last_attempt,
            last_failure=self.last_failure,
            last_failure_reason=self.last_failure_reason,
            connected_since=self.connected_since,
        )


class Link:
    """The peer's link to one hub at a time; see the module docstring for the rules."""

    def __init__(
        self,
        hubs: Sequence[HubEndpoint],
        *,
        backoff_initial: float = 1.0,
        backoff_max: float = 60.0,
        jitter: float = 1.0,
        rng: random.Random,
    ) -> None:
        if not (math.isfinite(backoff_initial) and backoff_initial >= 0):
            raise ValueError(f"backoff_initial must be >= 0, got {backoff_initial}")
        if not (math.isfinite(backoff_max) and backoff_max >= backoff_initial):
            raise ValueError(
                f"backoff_max must be >= backoff_initial ({backoff_initial}), got {backoff_max}"
            )
        if not (math.isfinite(jitter) and jitter >= 0):
            raise ValueError(f"jitter must be >= 0, got {jitter}")
        ids = [hub.id for hub in hubs]
        if len(set(ids)) != len(ids):
            raise ValueError(f"hub ids must be unique, got {ids}")
        self._hubs = tuple(hubs)
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._jitter = jitter
        self._rng = rng
        self._records = [_Record(hub) for hub in self._hubs]
        self._phase = _Phase.WAITING
        #: the hub of the next or outstanding dial, or of the connection
        self._index = 0
        #: when the next dial is due; -inf: at once
        self._due = -math.inf
        #: consecutive failed dials since start or the last success
        self._failures = 0
        self._failovers = 0

    # -- what the driver and the status read -------------------------------------------

    @property
    def state(self) -> LinkState:
        if self._phase is _Phase.CONNECTED:
            return LinkState.CONNECTED
        if self._failures >= len(self._hubs):
            return LinkState.ISOLATED
        return LinkState.CONNECTING

    @property
    def current(self) -> HubEndpoint | None:
        """The hub connected to, else None."""
        return self._hubs[self._index] if self._phase is _Phase.CONNECTED else None

    @property
    def target(self) -> HubEndpoint | None:
        """The hub being dialled or to be dialled next (None while connected or with no hubs)."""
        if self._phase is _Phase.CONNECTED or not self._hubs:
            return None
        return self._hubs[self._index]

    @property
    def failovers(self) -> int:
        """Losses and failovers that moved to another hub (the peer.failover.count metric)."""
        return self._failovers

    @property
    def consecutive_failures(self) -> int:
        """Failed dials since start or the last success (the backoff exponent)."""
        return self._failures

    def history(self) -> tuple[HubHistory, ...]:
        """Every hub's record, in priority order."""
        return tuple(record.freeze() for record in self._records)

    # -- the driver's questions and reports ------------------------------------------

    def next_step(self, now: float) -> Dial | Wait | None:
        """What to do at ``now``: dial a hub, wait, or nothing (connected or dialling)."""
        if self._phase is not _Phase.WAITING or not self._hubs:
            return None
        if now < self._due:
            return Wait(self._due)
        self._phase = _Phase.DIALING
        record = self._records[self._index]
        record.attempts += 1
        record.last_attempt = now
        return Dial(self._hubs[self._index], attempt=self._failures)

    def dial_succeeded(self, now: float) -> None:
        """The outstanding dial connected: the backoff and the round of failures reset."""
        self._expect(_Phase.DIALING, "dial_succeeded")
        self._phase = _Phase.CONNECTED
        self._failures = 0
        self._records[self._index].connected_since = now

    def dial_failed(self, now: float, reason: str) -> None:
        """The outstanding dial failed: the next hub, after the backoff."""
        self._expect(_Phase.DIALING, "dial_failed")
        self._records[self._index].failed(now, reason)
        self._failures += 1
        self._phase = _Phase.WAITING
        self._index = (self._index + 1) % len(self._hubs)
        self._due = now + backoff_delay(
            self._failures,
            initial=self._backoff_initial,
            maximum=self._backoff_max,
            jitter=self._jitter,
            rng=self._rng,
        )

    def connection_lost(self, now: float, reason: str) -> None:
        """A connected link died (heartbeat rule, broken stream): the next hub, at once."""
        self._leave("connection_lost", now, reason)

    def failover(self, now: float, reason: str) -> None:
        """The hub said FAILOVER (draining) or heartbeat misses reached the limit.

        The same move as :meth:`connection_lost`; a separate event so that the
        driver's code and the log say which happened.
        """
        self._leave("failover", now, reason)

    def reconnect(self, now: float, reason: str) -> None:
        """The hub said RECONNECT (it lost our session): a new session on the same hub, at once.

        The hub is healthy, so this is not counted as a failure; the reason is
        not recorded in the history (the driver logs it).
        """
        self._expect(_Phase.CONNECTED, "reconnect")
        self._records[self._index].connected_since = None
        self._phase = _Phase.WAITING
        self._due = now

    # -- internals ----------------------------------------------------------------------

    def _leave(self, event: str, now: float, reason: str) -> None:
        self._expect(_Phase.CONNECTED, event)
        self._records[self._index].failed(now, reason)
        following = (self._index + 1) % len(self._hubs)
        if following != self._index:
            self._failovers += 1
        self._index = following
        self._phase = _Phase.WAITING
        self._due = now

    def _expect(self, phase: _Phase, event: str) -> None:
        if self._phase is not phase:
            raise LinkProtocolError(
                f"{event} is only valid while {phase.value}; the link is {self._phase.value}"
            )
