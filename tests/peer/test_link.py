"""The peer's link state machine, driven with a fake clock (seed scenarios 2, 5 and 7)."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sorcha_peerd.peer.link import (
    Dial,
    HubEndpoint,
    Link,
    LinkProtocolError,
    LinkState,
    Wait,
    backoff_delay,
)

N0, N1, N2 = (HubEndpoint(f"n{i}", f"n{i}.sorcha.dev", 5000 + i) for i in range(3))
HUBS = (N0, N1, N2)


def make(
    hubs: tuple[HubEndpoint, ...] = HUBS, *, jitter: float = 0.0, seed: int = 0, **kw: float
) -> Link:
    return Link(hubs, jitter=jitter, rng=random.Random(seed), **kw)


def state(link: Link) -> LinkState:
    """The state, read through a call so that mypy does not narrow it across events."""
    return link.state


def dial(link: Link, now: float) -> Dial:
    step = link.next_step(now)
    assert isinstance(step, Dial), step
    assert link.next_step(now) is None, "a second dial while one is out"
    return step


def wait(link: Link, now: float) -> float:
    """The wait next_step asks for at ``now``, in seconds from ``now``."""
    step = link.next_step(now)
    assert isinstance(step, Wait), step
    return step.until - now


def fail(link: Link, now: float, reason: str = "refused") -> float:
    """Dial, fail, and return the wait that follows."""
    dial(link, now)
    link.dial_failed(now, reason)
    return wait(link, now)


# -- scenario 2: priority connection --------------------------------------------------


def test_first_dial_goes_to_the_first_hub_at_once() -> None:
    link = make()
    assert state(link) is LinkState.CONNECTING and link.current is None and link.target == N0
    assert dial(link, 0.0) == Dial(N0, attempt=0)
    assert state(link) is LinkState.CONNECTING and link.current is None
    link.dial_succeeded(0.2)
    assert state(link) is LinkState.CONNECTED and link.current == N0 and link.target is None
    assert link.next_step(1000.0) is None
    assert link.failovers == 0


def test_first_hub_down_connects_to_the_second_after_the_first_backoff() -> None:
    link = make()
    assert fail(link, 0.0) == 1.0
    assert link.next_step(0.999) == Wait(1.0)
    assert link.target == N1
    assert dial(link, 1.0) == Dial(N1, attempt=1)
    link.dial_succeeded(1.5)
    assert link.current == N1 and state(link) is LinkState.CONNECTED
    # priority order is connection order, not a failover
    assert link.failovers == 0


def test_wrap_around_n0_n1_n2_n0() -> None:
    link = make()
    now, seen = 0.0, []
    for _ in range(7):
        step = link.next_step(now)
        assert isinstance(step, Dial)
        seen.append(step.hub.id)
        link.dial_failed(now, "down")
        now += wait(link, now)
    assert seen == ["n0", "n1", "n2", "n0", "n1", "n2", "n0"]


# -- backoff --------------------------------------------------------------------------


def test_backoff_without_jitter_is_1_2_4_8_16_32_60_60() -> None:
    link = make()
    now, waits = 0.0, []
    for _ in range(9):
        waits.append(fail(link, now))
        now += waits[-1]
    assert waits == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]


def test_backoff_with_jitter_uses_the_injected_generator_exactly() -> None:
    link = make(jitter=1.0, seed=42)
    twin = random.Random(42)
    now = 0.0
    for n in range(1, 10):
        expected = min(60.0, 2.0 ** (n - 1) + twin.uniform(0, 1.0))
        got = fail(link, now)
        assert got == pytest.approx(expected, abs=1e-9)
        now += got


@pytest.mark.parametrize("seed", range(200))
def test_backoff_with_jitter_stays_within_base_and_base_plus_jitter(seed: int) -> None:
    link = make(jitter=1.0, seed=seed)
    now = 0.0
    for n in range(1, 10):
        base = 2.0 ** (n - 1)
        dial(link, now)
        link.dial_failed(now, "down")
        step = link.next_step(now)
        # compared as absolute instants: exact, with no rounding from subtracting now
        assert isinstance(step, Wait)
        assert now + min(60.0, base) <= step.until <= now + min(60.0, base + 1.0)
        now = step.until


def test_the_same_seed_gives_the_same_waits() -> None:
    def waits(seed: int) -> list[float]:
        link, now, out = make(jitter=1.0, seed=seed), 0.0, []
        for _ in range(6):
            out.append(fail(link, now))
            now += out[-1]
        return out

    assert waits(7) == waits(7) and waits(7) != waits(8)


def test_backoff_delay_formula_edges() -> None:
    rng = random.Random(1)
    state = rng.getstate()
    assert backoff_delay(1, initial=1.0, maximum=60.0, jitter=0.0, rng=rng) == 1.0
    assert rng.getstate() == state, "no jitter drawn when jitter is 0 (as stamina)"
    assert backoff_delay(5000, initial=1.0, maximum=60.0, jitter=0.0, rng=rng) == 60.0
    assert backoff_delay(5000, initial=0.0, maximum=60.0, jitter=0.0, rng=rng) == 0.0
    assert backoff_delay(3, initial=0.5, maximum=60.0, jitter=0.0, rng=rng) == 2.0
    with pytest.raises(ValueError, match="counts from 1"):
        backoff_delay(0, initial=1.0, maximum=60.0, jitter=0.0, rng=rng)


def test_backoff_settings_are_honoured() -> None:
    link = make(backoff_initial=0.25, backoff_max=1.0)
    now, waits = 0.0, []
    for _ in range(5):
        waits.append(fail(link, now))
        now += waits[-1]
    assert waits == [0.25, 0.5, 1.0, 1.0, 1.0]


# -- scenario 5: isolation ------------------------------------------------------------


def test_isolated_after_a_full_round_and_not_before() -> None:
    link = make()
    now = 0.0
    now += fail(link, now)
    assert state(link) is LinkState.CONNECTING
    now += fail(link, now)
    assert state(link) is LinkState.CONNECTING
    now += fail(link, now)
    assert state(link) is LinkState.ISOLATED
    # still dialling in the background, with the backoff still growing
    assert dial(link, now) == Dial(N0, attempt=3)
    assert state(link) is LinkState.ISOLATED
    link.dial_failed(now, "down")
    assert wait(link, now) == 8.0
    assert state(link) is LinkState.ISOLATED


def test_recovery_from_isolation_resets_the_backoff() -> None:
    link = make()
    now = 0.0
    for _ in range(5):
        now += fail(link, now)
    assert state(link) is LinkState.ISOLATED
    assert dial(link, now) == Dial(N2, attempt=5)
    link.dial_succeeded(now)
    assert state(link) is LinkState.CONNECTED and link.current == N2
    link.connection_lost(now + 10, "stream broken")
    assert state(link) is LinkState.CONNECTING
    assert dial(link, now + 10) == Dial(N0, attempt=0)
    link.dial_failed(now + 10, "down")
    assert wait(link, now + 10) == 1.0
    assert state(link) is LinkState.CONNECTING


def test_one_hub_is_isolated_after_one_failed_dial() -> None:
    link = make((N0,))
    assert fail(link, 0.0) == 1.0
    assert state(link) is LinkState.ISOLATED
    assert dial(link, 1.0) == Dial(N0, attempt=1)


def test_no_hubs_is_isolated_and_never_dials() -> None:
    link = make(())
    assert state(link) is LinkState.ISOLATED and link.current is None and link.target is None
    for now in (0.0, 1.0, 1e9):
        assert link.next_step(now) is None
    assert link.history() == ()
    with pytest.raises(LinkProtocolError):
        link.dial_succeeded(0.0)
    with pytest.raises(LinkProtocolError):
        link.dial_failed(0.0, "x")
    with pytest.raises(LinkProtocolError):
        link.failover(0.0, "x")


# -- scenario 7: failover, loss, reconnect --------------------------------------------


def connected_to(link: Link, index: int, now: float = 0.0) -> float:
    """Fail the hubs before ``index`` and connect to it; returns the time."""
    for _ in range(index):
        now += fail(link, now)
    dial(link, now)
    link.dial_succeeded(now)
    return now


@pytest.mark.parametrize("event", ["failover", "connection_lost"])
@pytest.mark.parametrize(("k", "following"), [(0, N1), (1, N2), (2, N0)])
def test_leaving_hub_k_dials_k_plus_1_at_once(event: str, k: int, following: HubEndpoint) -> None:
    link = make()
    now = connected_to(link, k) + 100.0
    getattr(link, event)(now, "gone")
    assert state(link) is LinkState.CONNECTING and link.current is None
    assert dial(link, now) == Dial(following, attempt=0)
    assert link.failovers == 1
    # if that fails, the backoff starts from the beginning
    link.dial_failed(now, "down")
    assert wait(link, now) == 1.0


def test_failovers_count_moves_to_another_hub() -> None:
    link = make()
    now = connected_to(link, 0)
    link.failover(now, "draining")
    dial(link, now)
    link.dial_succeeded(now)
    link.connection_lost(now, "heartbeat")
    dial(link, now)
    link.dial_succeeded(now)
    link.reconnect(now, "session unknown")
    dial(link, now)
    link.dial_succeeded(now)
    assert link.current == N2 and link.failovers == 2


def test_with_one_hub_a_loss_redials_it_and_is_not_a_failover() -> None:
    link = make((N0,))
    connected_to(link, 0)
    link.connection_lost(5.0, "reset")
    assert dial(link, 5.0) == Dial(N0, attempt=0)
    assert link.failovers == 0


def test_reconnect_dials_the_same_hub_at_once() -> None:
    link = make()
    now = connected_to(link, 1)
    link.reconnect(now + 50, "hub restarted")
    assert state(link) is LinkState.CONNECTING
    assert dial(link, now + 50) == Dial(N1, attempt=0)
    link.dial_succeeded(now + 51)
    assert link.current == N1 and link.failovers == 0
    record = link.history()[1]
    assert (record.attempts, record.failures, record.connected_since) == (2, 0, now + 51)


# -- history --------------------------------------------------------------------------


def test_history_counts_attempts_and_failures_per_hub() -> None:
    link = make()
    assert [h.attempts for h in link.history()] == [0, 0, 0]
    dial(link, 0.0)
    link.dial_failed(0.5, "connection refused")
    dial(link, 1.5)
    link.dial_succeeded(1.75)
    n0, n1, n2 = link.history()
    assert [h.hub for h in (n0, n1, n2)] == [N0, N1, N2]
    assert (n0.attempts, n0.failures, n0.last_attempt, n0.last_failure) == (1, 1, 0.0, 0.5)
    assert n0.last_failure_reason == "connection refused" and n0.connected_since is None
    assert (n1.attempts, n1.failures, n1.last_attempt, n1.last_failure) == (1, 0, 1.5, None)
    assert n1.last_failure_reason == "" and n1.connected_since == 1.75
    assert (n2.attempts, n2.failures, n2.last_attempt, n2.connected_since) == (0, 0, None, None)
    link.failover(9.0, "hub draining")
    n1 = link.history()[1]
    assert (n1.failures, n1.last_failure, n1.last_failure_reason) == (1, 9.0, "hub draining")
    assert n1.connected_since is None


def test_history_is_a_snapshot() -> None:
    link = make()
    before = link.history()
    dial(link, 0.0)
    assert before[0].attempts == 0 and link.history()[0].attempts == 1


# -- illegal events -------------------------------------------------------------------


def waiting(link: Link) -> None:
    pass


def dialing(link: Link) -> None:
    dial(link, 0.0)


def connected(link: Link) -> None:
    dial(link, 0.0)
    link.dial_succeeded(0.0)


def backing_off(link: Link) -> None:
    dial(link, 0.0)
    link.dial_failed(0.0, "down")


EVENTS: dict[str, Callable[[Link], None]] = {
    "dial_succeeded": lambda link: link.dial_succeeded(1.0),
    "dial_failed": lambda link: link.dial_failed(1.0, "x"),
    "connection_lost": lambda link: link.connection_lost(1.0, "x"),
    "failover": lambda link: link.failover(1.0, "x"),
    "reconnect": lambda link: link.reconnect(1.0, "x"),
}
LEGAL = {
    "waiting": set(),
    "backing_off": set(),
    "dialing": {"dial_succeeded", "dial_failed"},
    "connected": {"connection_lost", "failover", "reconnect"},
}
PHASES = {
    "waiting": waiting,
    "dialing": dialing,
    "connected": connected,
    "backing_off": backing_off,
}


@pytest.mark.parametrize("phase", sorted(PHASES))
@pytest.mark.parametrize("event", sorted(EVENTS))
def test_events_that_do_not_fit_the_phase_raise(phase: str, event: str) -> None:
    link = make()
    PHASES[phase](link)
    if event in LEGAL[phase]:
        EVENTS[event](link)
    else:
        before = (link.state, link.current, link.target, link.history(), link.failovers)
        with pytest.raises(LinkProtocolError, match=event):
            EVENTS[event](link)
        # a refused event changes nothing
        assert (link.state, link.current, link.target, link.history(), link.failovers) == before


def test_double_reports_raise() -> None:
    link = make()
    connected(link)
    with pytest.raises(LinkProtocolError):
        link.dial_succeeded(0.0)
    link.failover(1.0, "draining")
    with pytest.raises(LinkProtocolError):
        link.connection_lost(1.0, "stream broken too")


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"backoff_initial": -1.0}, "backoff_initial"),
        ({"backoff_initial": 5.0, "backoff_max": 1.0}, "backoff_max"),
        ({"backoff_max": float("inf")}, "backoff_max"),
        ({"jitter": -0.1}, "jitter"),
    ],
)
def test_bad_settings_are_refused(kw: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Link(HUBS, rng=random.Random(0), **kw)


def test_duplicate_hub_ids_are_refused() -> None:
    with pytest.raises(ValueError, match="unique"):
        make((N0, HubEndpoint("n0", "elsewhere", 1)))


# -- properties -----------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    hub_count=st.integers(0, 4),
    initial=st.floats(0.0, 10.0),
    extra=st.floats(0.0, 100.0),
    jitter=st.floats(0.0, 5.0),
    seed=st.integers(0, 2**32 - 1),
    data=st.data(),
)
def test_invariants_hold_for_any_legal_sequence(
    hub_count: int, initial: float, extra: float, jitter: float, seed: int, data: st.DataObject
) -> None:
    hubs = HUBS[:hub_count] + ((HubEndpoint("n3", "n3.sorcha.dev", 5003),) if hub_count > 3 else ())
    maximum = initial + extra
    link = Link(
        hubs, backoff_initial=initial, backoff_max=maximum, jitter=jitter, rng=random.Random(seed)
    )
    # the model
    phase, index, failovers, dials = "waiting", 0, 0, 0
    failed_in_round: set[int] = set()
    consecutive = 0
    reported_at = 0.0
    now = 0.0
    for _ in range(data.draw(st.integers(0, 60))):
        legal = ["next_step", "advance"]
        if phase == "dialing":
            legal += ["dial_succeeded", "dial_failed"]
        elif phase == "connected":
            legal += ["connection_lost", "failover", "reconnect"]
        event = data.draw(st.sampled_from(legal))
        if event == "advance":
            now += data.draw(st.floats(0.0, 2 * maximum + 1.0))
        elif event == "next_step":
            step = link.next_step(now)
            if phase != "waiting" or not hubs:
                assert step is None
            elif isinstance(step, Wait):
                # exact on the absolute instant; relative to now, up to float rounding
                assert now < step.until <= reported_at + maximum
                assert 0 < step.until - now <= maximum + 1e-9 * max(1.0, now)
                # sometimes jump to the end of the wait
                if data.draw(st.booleans()):
                    now = step.until
            else:
                assert isinstance(step, Dial)
                assert step.hub == hubs[index] and step.attempt == consecutive
                phase, dials = "dialing", dials + 1
                assert link.next_step(now) is None
        elif event == "dial_succeeded":
            link.dial_succeeded(now)
            phase, failed_in_round, consecutive = "connected", set(), 0
        elif event == "dial_failed":
            link.dial_failed(now, "down")
            failed_in_round.add(index)
            consecutive += 1
            phase, index, reported_at = "waiting", (index + 1) % len(hubs), now
        elif event in ("connection_lost", "failover"):
            getattr(link, event)(now, "gone")
            following = (index + 1) % len(hubs)
            failovers += following != index
            phase, index, reported_at = "waiting", following, now
            step = link.next_step(now)
            assert step == Dial(hubs[index], attempt=0)
            phase, dials = "dialing", dials + 1
        else:
            link.reconnect(now, "unknown session")
            phase, reported_at = "waiting", now
        # invariants
        assert (state(link) is LinkState.CONNECTED) == (phase == "connected")
        assert (link.current is not None) == (phase == "connected")
        if phase == "connected":
            assert link.current == hubs[index]
        isolated = len(failed_in_round) == len(hubs)
        assert (state(link) is LinkState.ISOLATED) == (phase != "connected" and isolated)
        history = link.history()
        assert sum(h.attempts for h in history) == dials
        assert all(h.failures <= h.attempts for h in history)
        assert sum(h.connected_since is not None for h in history) == (phase == "connected")
        assert link.failovers == failovers
