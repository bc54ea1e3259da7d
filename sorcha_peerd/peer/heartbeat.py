"""The peer's heartbeat rule (seed scenario 7), without I/O.

A :class:`HeartbeatMonitor` decides when the next heartbeat is due, counts
the ones left unanswered, and turns a hub's acknowledgement into
:class:`Advice` for the driver. Like :mod:`sorcha_peerd.peer.link` it reads
no clock and does no I/O: a trio task hands it the monotonic time.

The rule: a heartbeat every ``interval`` seconds; one left unanswered for
``timeout`` seconds is a miss; ``misses_for_failover`` consecutive misses
(2 by default, so 60 s with the 30 s defaults) mean FAILOVER, and one miss
does not. Any acknowledgement of an outstanding beat resets the count. A beat
the driver could not even send (connection error) is a miss at once.

Choices worth knowing:

* An acknowledgement of beat *n* also settles the beats before *n* that are
  still outstanding: the hub answered, so the link is alive, and counting
  those older beats as misses later would make a slow answer look like a
  dead hub. Their late acknowledgements are then ignored.
* An acknowledgement for a sequence that is not outstanding (unknown, already
  answered, already counted as a miss) is ignored and advises NONE: a late
  answer does not undo a miss, and its recommended action is stale.
* REDUCE_FREQUENCY is handled here rather than passed on: the effective
  interval doubles, up to ``MAX_SLOWDOWN`` (4) times the configured one, and
  the next NONE or SYNC restores it. Restoring on a plain answer needs no
  extra message from a hub that stops asking; the cap bounds how slowly a
  dead hub is noticed (the timeout is unchanged, but beats are at most 4
  intervals apart). The advice is still returned so the driver can log it.
  Caution: the hub expires a session silent for ``heartbeat_timeout *
  missed_heartbeats_for_failover`` (hub/sessions.py); a hub that ever sends
  REDUCE_FREQUENCY must allow for the stretched interval, or the peer's next
  beat is answered RECONNECT.
* FAILOVER is advised on a call that counted a new miss and left the count
  at or above the limit, so a driver that calls :meth:`expired` again with
  nothing new does not fail over twice.
"""

from __future__ import annotations

import enum
import math

import attrs

__all__ = ["MAX_SLOWDOWN", "Advice", "Beat", "HeartbeatMonitor", "HeartbeatProtocolError"]

#: REDUCE_FREQUENCY stretches the interval to at most this many times the configured one.
MAX_SLOWDOWN = 4


class HeartbeatProtocolError(RuntimeError):
    """The monitor was used before :meth:`HeartbeatMonitor.start`: a bug in the driver."""


class Advice(enum.Enum):
    """What the driver should do after a heartbeat event."""

    NONE = "none"
    #: run an incremental sync now
    SYNC = "sync"
    #: open a new session on the same hub (Link.reconnect)
    RECONNECT = "reconnect"
    #: move to the next hub at once (Link.failover)
    FAILOVER = "failover"
    #: the monitor has already slowed its beats; nothing else to do
    REDUCE_FREQUENCY = "reduce_frequency"


#: the wire's RecommendedAction values (wire-contract.md) to advice
_ADVICE_BY_ACTION = {
    0: Advice.NONE,
    1: Advice.SYNC,
    2: Advice.REDUCE_FREQUENCY,
    3: Advice.FAILOVER,
    4: Advice.RECONNECT,
}


@attrs.frozen
class Beat:
    """A heartbeat to send now."""

    sequence: int
    #: now + timeout: unanswered by then, it is a miss
    deadline: float


class HeartbeatMonitor:
    """Heartbeats of one session at a time; :meth:`start` begins a session."""

    def __init__(self, *, interval: float, timeout: float, misses_for_failover: int = 2) -> None:
        if not (math.isfinite(interval) and interval > 0):
            raise ValueError(f"interval must be > 0, got {interval}")
        if not (math.isfinite(timeout) and timeout > 0):
            raise ValueError(f"timeout must be > 0, got {timeout}")
        if misses_for_failover < 1:
            raise ValueError(f"misses_for_failover must be >= 1, got {misses_for_failover}")
        self._interval = interval
        self._timeout = timeout
        self._misses_for_failover = misses_for_failover
        self._started = False
        self._reset(0.0)

    def _reset(self, now: float) -> None:
        self._effective_interval = self._interval
        self._next_due = now
        self._last_sent: float | None = None
        self._sequence = 0
        #: sequence -> send time, in rising sequence order
        self._outstanding: dict[int, float] = {}
        self._missed = 0
        self._total_missed = 0
        self._last_ack: float | None = None
        self._last_latency: float | None = None
        self._sent = 0
        self._acked = 0

    # -- what the driver and the status read -------------------------------------------

    @property
    def missed(self) -> int:
        """Consecutive misses (reset by an acknowledgement)."""
        return self._missed

    @property
    def total_missed(self) -> int:
        """Misses in this session."""
        return self._total_missed

    @property
    def last_ack(self) -> float | None:
        return self._last_ack

    @property
    def last_latency(self) -> float | None:
        """Seconds from send to acknowledgement of the last answered beat (heartbeat.latency)."""
        return self._last_latency

    @property
    def sent(self) -> int:
        return self._sent

    @property
    def acked(self) -> int:
        return self._acked

    @property
    def interval(self) -> float:
        """The effective interval: the configured one, or longer after REDUCE_FREQUENCY."""
        return self._effective_interval

    def next_due(self) -> float:
        """When the next beat should be sent (monotonic)."""
        self._expect_started("next_due")
        return self._next_due

    def next_deadline(self) -> float | None:
        """The earliest deadline of an outstanding beat, when :meth:`expired` next has work."""
        self._expect_started("next_deadline")
        if not self._outstanding:
            return None
        return min(self._outstanding.values()) + self._timeout

    # -- events ---------------------------------------------------------------------------

    def start(self, now: float) -> None:
        """A new session: counters reset, sequence numbers restart at 1, first beat due now."""
        self._started = True
        self._reset(now)

    def beat(self, now: float) -> Beat:
        """Record a beat sent now; the next is due one (effective) interval later."""
        self._expect_started("beat")
        self._sequence += 1
        self._outstanding[self._sequence] = now
        self._sent += 1
        self._last_sent = now
        self._next_due = now + self._effective_interval
        return Beat(self._sequence, deadline=now + self._timeout)

    def acknowledged(self, sequence: int, now: float, recommended_action: int) -> Advice:
        """The hub answered beat ``sequence`` with the wire's RecommendedAction value."""
        self._expect_started("acknowledged")
        sent_at = self._outstanding.get(sequence)
        if sent_at is None:
            return Advice.NONE
        for older in [s for s in self._outstanding if s <= sequence]:
            del self._outstanding[older]
        self._missed = 0
        self._acked += 1
        self._last_ack = now
        self._last_latency = max(0.0, now - sent_at)
        advice = _ADVICE_BY_ACTION.get(recommended_action, Advice.NONE)
        if advice is Advice.REDUCE_FREQUENCY:
            self._set_interval(min(self._effective_interval * 2, self._interval * MAX_SLOWDOWN))
        elif advice in (Advice.NONE, Advice.SYNC):
            self._set_interval(self._interval)
        return advice

    def expired(self, now: float) -> Advice:
        """Count every outstanding beat whose deadline is <= now as one miss (once)."""
        self._expect_started("expired")
        late = [s for s, sent in self._outstanding.items() if sent + self._timeout <= now]
        for sequence in late:
            del self._outstanding[sequence]
        return self._count_misses(len(late))

    def send_failed(self, sequence: int, now: float) -> Advice:
        """Beat ``sequence`` could not be sent at all: a miss at once (unknown: ignored)."""
        self._expect_started("send_failed")
        if self._outstanding.pop(sequence, None) is None:
            return Advice.NONE
        return self._count_misses(1)

    # -- internals ----------------------------------------------------------------------

    def _count_misses(self, count: int) -> Advice:
        if count == 0:
            return Advice.NONE
        self._missed += count
        self._total_missed += count
        return Advice.FAILOVER if self._missed >= self._misses_for_failover else Advice.NONE

    def _set_interval(self, interval: float) -> None:
        self._effective_interval = interval
        if self._last_sent is not None:
            self._next_due = self._last_sent + interval

    def _expect_started(self, event: str) -> None:
        if not self._started:
            raise HeartbeatProtocolError(f"{event} before start(): no session is monitored")
