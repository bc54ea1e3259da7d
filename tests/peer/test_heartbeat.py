"""The peer's heartbeat rule, driven with a fake clock (seed scenario 7)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sorcha_peerd.peer.heartbeat import (
    MAX_SLOWDOWN,
    Advice,
    Beat,
    HeartbeatMonitor,
    HeartbeatProtocolError,
)
from sorcha_peerd.peer.link import Dial, HubEndpoint, Link, LinkState

NONE, SYNC, REDUCE_FREQUENCY, FAILOVER, RECONNECT = range(5)  # the wire's RecommendedAction


def monitor(
    now: float = 0.0, *, interval: float = 30.0, timeout: float = 30.0, misses_for_failover: int = 2
) -> HeartbeatMonitor:
    m = HeartbeatMonitor(
        interval=interval, timeout=timeout, misses_for_failover=misses_for_failover
    )
    m.start(now)
    return m


# -- the schedule ---------------------------------------------------------------------


def test_first_beat_is_due_at_once_and_then_every_interval() -> None:
    m = monitor(now=100.0)
    assert m.next_due() == 100.0 and m.next_deadline() is None
    assert m.beat(100.0) == Beat(sequence=1, deadline=130.0)
    assert m.next_due() == 130.0 and m.next_deadline() == 130.0
    assert m.beat(130.5) == Beat(sequence=2, deadline=160.5)
    assert m.next_due() == 160.5
    assert (m.sent, m.acked, m.missed) == (2, 0, 0)


def test_start_resets_the_session() -> None:
    m = monitor()
    m.beat(0.0)
    m.acknowledged(1, 0.1, REDUCE_FREQUENCY)
    m.beat(60.0)
    m.expired(90.0)
    m.start(500.0)
    assert (m.sent, m.acked, m.missed, m.total_missed) == (0, 0, 0, 0)
    assert (m.last_ack, m.last_latency, m.interval) == (None, None, 30.0)
    assert m.next_due() == 500.0 and m.next_deadline() is None
    assert m.beat(500.0).sequence == 1
    # beats of the old session mean nothing in the new one
    assert m.acknowledged(2, 501.0, NONE) is Advice.NONE and m.acked == 0


def test_use_before_start_is_a_driver_bug() -> None:
    m = HeartbeatMonitor(interval=30.0, timeout=30.0)
    for call in (
        lambda: m.next_due(),
        lambda: m.beat(0.0),
        lambda: m.expired(0.0),
        lambda: m.acknowledged(1, 0.0, NONE),
        lambda: m.send_failed(1, 0.0),
    ):
        with pytest.raises(HeartbeatProtocolError, match="start"):
            call()


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"interval": 0.0}, "interval"),
        ({"timeout": -1.0}, "timeout"),
        ({"timeout": float("nan")}, "timeout"),
        ({"misses_for_failover": 0}, "misses_for_failover"),
    ],
)
def test_bad_settings_are_refused(kw: dict[str, float], message: str) -> None:
    settings_ = {"interval": 30.0, "timeout": 30.0, **kw}
    with pytest.raises(ValueError, match=message):
        HeartbeatMonitor(**settings_)  # type: ignore[arg-type]


# -- misses and failover ----------------------------------------------------------------


def test_failover_after_two_missed_heartbeats_60_s_and_not_after_one() -> None:
    m = monitor()
    m.beat(0.0)
    assert m.expired(29.999) is Advice.NONE and m.missed == 0
    assert m.expired(30.0) is Advice.NONE and m.missed == 1
    m.beat(30.0)
    assert m.expired(59.999) is Advice.NONE and m.missed == 1
    assert m.expired(60.0) is Advice.FAILOVER and m.missed == 2


def test_an_acknowledgement_between_two_misses_resets_the_count() -> None:
    m = monitor()
    m.beat(0.0)
    assert m.expired(30.0) is Advice.NONE
    m.beat(30.0)
    assert m.acknowledged(2, 30.2, NONE) is Advice.NONE and m.missed == 0
    m.beat(60.0)
    assert m.expired(90.0) is Advice.NONE and m.missed == 1
    m.beat(90.0)
    assert m.expired(120.0) is Advice.FAILOVER


def test_each_overdue_beat_is_one_miss_counted_once() -> None:
    m = monitor(interval=10.0)
    for t in (0.0, 10.0, 20.0):
        m.beat(t)
    # the driver was late: two deadlines passed at once
    assert m.expired(40.0) is Advice.FAILOVER and m.missed == 2
    # nothing new: no second failover advice
    assert m.expired(45.0) is Advice.NONE and m.missed == 2
    assert m.expired(50.0) is Advice.FAILOVER and (m.missed, m.total_missed) == (3, 3)
    assert m.next_deadline() is None


@pytest.mark.parametrize("limit", [1, 2, 3])
def test_misses_for_failover_is_the_limit(limit: int) -> None:
    m = monitor(misses_for_failover=limit)
    advice = []
    for i in range(limit):
        m.beat(30.0 * i)
        advice.append(m.expired(30.0 * (i + 1)))
    assert advice == [Advice.NONE] * (limit - 1) + [Advice.FAILOVER]


def test_a_failed_send_is_a_miss_at_once() -> None:
    m = monitor()
    beat = m.beat(0.0)
    assert m.send_failed(beat.sequence, 0.0) is Advice.NONE and m.missed == 1
    # it is no longer outstanding: its deadline does not count it again
    assert m.expired(30.0) is Advice.NONE and m.missed == 1
    beat = m.beat(1.0)
    assert m.send_failed(beat.sequence, 1.0) is Advice.FAILOVER and m.missed == 2
    assert m.send_failed(beat.sequence, 1.0) is Advice.NONE, "twice is ignored"
    assert m.send_failed(99, 1.0) is Advice.NONE and m.missed == 2


# -- acknowledgements -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "advice"),
    [
        (NONE, Advice.NONE),
        (SYNC, Advice.SYNC),
        (REDUCE_FREQUENCY, Advice.REDUCE_FREQUENCY),
        (FAILOVER, Advice.FAILOVER),
        (RECONNECT, Advice.RECONNECT),
        (5, Advice.NONE),
        (-1, Advice.NONE),
        (2**40, Advice.NONE),
    ],
)
def test_recommended_actions(action: int, advice: Advice) -> None:
    m = monitor()
    m.beat(0.0)
    assert m.acknowledged(1, 0.25, action) is advice
    assert (m.acked, m.last_ack, m.last_latency, m.missed) == (1, 0.25, 0.25, 0)


def test_acknowledgement_records_latency_and_resets_misses() -> None:
    m = monitor()
    m.beat(0.0)
    m.expired(30.0)
    m.beat(30.0)
    m.acknowledged(2, 30.125, NONE)
    assert (m.missed, m.total_missed, m.last_latency, m.last_ack) == (0, 1, 0.125, 30.125)


def test_unknown_old_and_repeated_acknowledgements_are_ignored() -> None:
    m = monitor()
    m.beat(0.0)
    assert m.acknowledged(7, 1.0, FAILOVER) is Advice.NONE  # never sent
    assert m.acknowledged(0, 1.0, FAILOVER) is Advice.NONE
    assert m.acknowledged(1, 1.0, SYNC) is Advice.SYNC
    assert m.acknowledged(1, 2.0, FAILOVER) is Advice.NONE  # answered already
    assert (m.acked, m.last_ack) == (1, 1.0)


def test_a_late_answer_does_not_undo_a_miss() -> None:
    m = monitor()
    m.beat(0.0)
    m.expired(30.0)
    assert m.acknowledged(1, 31.0, RECONNECT) is Advice.NONE
    assert (m.missed, m.acked, m.last_ack) == (1, 0, None)


def test_an_answer_to_a_later_beat_settles_the_older_ones() -> None:
    m = monitor(interval=10.0)
    m.beat(0.0)
    m.beat(10.0)
    m.beat(20.0)
    assert m.acknowledged(2, 21.0, NONE) is Advice.NONE
    assert m.next_deadline() == 50.0  # only beat 3 is still out
    assert m.acknowledged(1, 22.0, FAILOVER) is Advice.NONE
    assert m.expired(45.0) is Advice.NONE and m.missed == 0
    assert m.expired(50.0) is Advice.NONE and m.missed == 1


def test_reduce_frequency_doubles_up_to_four_times_and_none_or_sync_restores() -> None:
    m = monitor()
    seq, now = 0, 0.0
    intervals = []
    for action in (REDUCE_FREQUENCY,) * 4 + (SYNC, REDUCE_FREQUENCY, FAILOVER, RECONNECT, NONE):
        seq = m.beat(now).sequence
        m.acknowledged(seq, now + 0.5, action)
        intervals.append(m.interval)
        assert m.next_due() == now + m.interval, "rescheduled from the last send"
        now = m.next_due()
    assert MAX_SLOWDOWN == 4
    assert intervals == [60.0, 120.0, 120.0, 120.0, 30.0, 60.0, 60.0, 60.0, 30.0]


def test_reduce_frequency_keeps_the_timeout() -> None:
    m = monitor()
    m.beat(0.0)
    m.acknowledged(1, 1.0, REDUCE_FREQUENCY)
    assert m.beat(60.0) == Beat(2, deadline=90.0)


# -- scenario 7 end to end: the two machines together --------------------------------------


def test_two_missed_heartbeats_fail_over_to_the_next_hub_at_60_s() -> None:
    hubs = [HubEndpoint(f"n{i}", f"n{i}.sorcha.dev", 5000) for i in range(3)]
    link = Link(hubs, jitter=1.0, rng=random.Random(3))
    m = HeartbeatMonitor(interval=30.0, timeout=30.0)
    assert link.next_step(0.0) == Dial(hubs[0], attempt=0)
    link.dial_succeeded(0.0)
    m.start(0.0)
    now, advice = 0.0, Advice.NONE
    while advice is not Advice.FAILOVER:
        if m.next_due() <= now:
            m.beat(now)
        advice = m.expired(now)
        now += 1.0
    now -= 1.0
    assert now == 60.0 and link.state is LinkState.CONNECTED
    link.failover(now, "2 heartbeats missed")
    assert link.next_step(now) == Dial(hubs[1], attempt=0)
    assert link.failovers == 1


# -- properties -----------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    limit=st.integers(1, 4),
    events=st.lists(
        st.tuples(
            st.sampled_from(["beat", "ack", "expired", "send_failed", "advance"]),
            st.integers(0, 8),
            st.integers(-1, 6),
            st.floats(0.0, 50.0),
        ),
        max_size=60,
    ),
)
def test_misses_follow_the_rule_for_any_sequence(
    limit: int, events: list[tuple[str, int, int, float]]
) -> None:
    m = HeartbeatMonitor(interval=10.0, timeout=15.0, misses_for_failover=limit)
    m.start(0.0)
    now = 0.0
    outstanding: dict[int, float] = {}
    missed = sent = acked = 0
    for kind, seq, action, delta in events:
        if kind == "advance":
            now += delta
        elif kind == "beat":
            beat = m.beat(now)
            sent += 1
            assert beat.sequence == sent and beat.deadline == now + 15.0
            outstanding[beat.sequence] = now
        elif kind == "ack":
            advice = m.acknowledged(seq, now, action)
            if seq in outstanding:
                outstanding = {s: t for s, t in outstanding.items() if s > seq}
                missed, acked = 0, acked + 1
            else:
                assert advice is Advice.NONE
        elif kind == "expired":
            late = [s for s, t in outstanding.items() if t + 15.0 <= now]
            for s in late:
                del outstanding[s]
            missed += len(late)
            expected = Advice.FAILOVER if late and missed >= limit else Advice.NONE
            assert m.expired(now) is expected
        else:
            known = seq in outstanding
            outstanding.pop(seq, None)
            missed += known
            expected = Advice.FAILOVER if known and missed >= limit else Advice.NONE
            assert m.send_failed(seq, now) is expected
        assert (m.missed, m.sent, m.acked) == (missed, sent, acked)
        assert 10.0 <= m.interval <= 10.0 * 4
        deadline = m.next_deadline()
        assert deadline == (min(outstanding.values()) + 15.0 if outstanding else None)
