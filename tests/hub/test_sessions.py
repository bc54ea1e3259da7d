"""The hub's session table, driven with a fake clock."""

from __future__ import annotations

import pytest

from sorcha_peerd.hub.sessions import Action, PeerState, SessionTable, TooManyPeers


def table(**kw: object) -> SessionTable:
    return SessionTable(heartbeat_timeout=30.0, missed_for_expiry=2, **kw)  # type: ignore[arg-type]


def beat(
    t: SessionTable,
    sid: str,
    *,
    now: float,
    version: int = 5,
    head: int = 5,
    draining: bool = False,
    peer: str = "p1",
) -> tuple[bool, Action]:
    answer = t.heartbeat(
        peer_id=peer,
        session_id=sid,
        last_sync_version=version,
        sent_ms=int(now * 1000) - 3,
        now=now,
        now_ms=int(now * 1000),
        head_version=head,
        draining=draining,
    )
    return answer.success, answer.action


def test_session_ids_are_unguessable_and_unique() -> None:
    t = table()
    ids = {t.connect(f"p{i}", "a", 1, 0, 0.0, 0).session_id for i in range(200)}
    assert len(ids) == 200 and all(len(i) >= 32 for i in ids)


def test_recommended_actions() -> None:
    t = table()
    sid = t.connect("p1", "a", 1, 0, now=0.0, now_ms=0).session_id
    assert beat(t, sid, now=1.0) == (True, Action.NONE)
    assert beat(t, sid, now=2.0, version=4) == (True, Action.SYNC)
    assert beat(t, sid, now=3.0, draining=True) == (True, Action.FAILOVER)
    assert beat(t, "nope", now=4.0) == (False, Action.RECONNECT)
    assert beat(t, sid, now=5.0, peer="someone-else") == (False, Action.RECONNECT)
    s = t.get(sid)
    assert s is not None and s.heartbeats_received == 3 and s.average_latency_ms == 3.0


def test_reconnect_replaces_the_previous_session() -> None:
    t = table()
    old = t.connect("p1", "a", 1, 0, 0.0, 0).session_id
    new = t.connect("p1", "a", 1, 0, 1.0, 1000).session_id
    assert t.get(old) is None and t.get(new) is not None and len(t) == 1
    assert beat(t, old, now=2.0) == (False, Action.RECONNECT)


def test_expiry_after_the_failover_rule_not_before() -> None:
    t = table()
    sid = t.connect("p1", "a", 1, 0, now=100.0, now_ms=0).session_id
    assert t.expire(129.0) == [] and t.get(sid).state is PeerState.CONNECTED  # type: ignore[union-attr]
    assert t.expire(131.0) == [] and t.get(sid).state is PeerState.HEARTBEAT_TIMEOUT  # type: ignore[union-attr]
    assert t.missed_heartbeats(t.get(sid), 161.0) == 2  # type: ignore[arg-type]
    assert t.expire(160.0) == []
    gone = t.expire(160.5)
    assert [s.session_id for s in gone] == [sid] and t.get(sid) is None


def test_a_heartbeat_keeps_the_session_alive() -> None:
    t = table()
    sid = t.connect("p1", "a", 1, 0, now=0.0, now_ms=0).session_id
    for now in range(25, 500, 25):
        beat(t, sid, now=float(now))
        assert t.expire(float(now) + 1) == []


def test_max_peers() -> None:
    t = table(max_peers=2)
    t.connect("p1", "a", 1, 0, 0.0, 0)
    t.connect("p2", "a", 1, 0, 0.0, 0)
    t.connect("p2", "a", 1, 0, 1.0, 0)  # a reconnect is not a new peer
    with pytest.raises(TooManyPeers):
        t.connect("p3", "a", 1, 0, 0.0, 0)


def test_note_sync_only_moves_forward() -> None:
    t = table()
    sid = t.connect("p1", "a", 1, 7, 0.0, 0).session_id
    t.note_sync(sid, 5, now_ms=100)
    assert t.get(sid).last_sync_version == 7  # type: ignore[union-attr]
    t.note_sync(sid, 9, now_ms=200)
    s = t.get(sid)
    assert s is not None and s.last_sync_version == 9 and s.last_sync_ms == 200


def test_a_drain_is_done_when_every_peer_was_sent_away() -> None:
    t = table()
    a = t.connect("p1", "a", 1, 0, 0.0, 0).session_id
    b = t.connect("p2", "a", 1, 0, 0.0, 0).session_id
    assert not t.all_sent_away()
    beat(t, a, now=1.0, draining=True)
    assert not t.all_sent_away()
    beat(t, b, now=1.0, peer="p2", draining=True)
    assert t.all_sent_away()
    t.disconnect(a)
    t.disconnect(b)
    assert t.all_sent_away()


def test_syncing_state_comes_and_goes() -> None:
    t = table()
    sid = t.connect("p1", "a", 1, 0, 0.0, 0).session_id
    t.set_syncing(sid, True)
    assert t.get(sid).state is PeerState.SYNCING  # type: ignore[union-attr]
    assert t.expire(31.0) == [] and t.get(sid).state is PeerState.SYNCING  # type: ignore[union-attr]
    t.set_syncing(sid, False)
    assert t.get(sid).state is PeerState.CONNECTED  # type: ignore[union-attr]
    t.set_syncing("unknown", True)  # ignored
