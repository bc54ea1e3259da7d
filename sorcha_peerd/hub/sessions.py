"""The hub's view of its peers: sessions, heartbeat answers and expiry, without I/O.

A :class:`SessionTable` is fed events (a connect, a heartbeat, a disconnect,
the passing of time) with the current monotonic time and answers with
decisions; the gRPC handlers only translate messages to these calls. All
times are seconds on the monotonic clock except ``*_ms`` fields, which are
the wall-clock Unix milliseconds the protocol reports.

Heartbeat answers (wire contract, "Behaviour"):

* the hub is draining → FAILOVER, so peers move to the next hub at once;
* the session is unknown (the hub restarted, or expired it) → RECONNECT;
* the peer's ``last_sync_version`` is behind the register → SYNC;
* otherwise NONE.

A session that sends no heartbeat for ``heartbeat_timeout *
missed_heartbeats_for_failover`` seconds is expired: the peer has, by the same
rule, failed over elsewhere.
"""

from __future__ import annotations

import enum
import secrets

import attrs


class Action(enum.IntEnum):
    """Values match the wire's RecommendedAction."""

    NONE = 0
    SYNC = 1
    REDUCE_FREQUENCY = 2
    FAILOVER = 3
    RECONNECT = 4


class PeerState(enum.IntEnum):
    """Values match the wire's PeerConnectionStatus."""

    CONNECTED = 1
    HEARTBEAT_TIMEOUT = 2
    DISCONNECTING = 3
    SYNCING = 4


@attrs.frozen
class Session:
    session_id: str
    peer_id: str
    address: str
    port: int
    connected_at: float
    connected_at_ms: int
    last_heartbeat: float
    last_heartbeat_ms: int = 0
    last_sync_version: int = 0
    last_sync_ms: int = 0
    state: PeerState = PeerState.CONNECTED
    heartbeats_received: int = 0
    total_latency_ms: float = 0.0
    #: answered FAILOVER by a draining hub: it knows to leave
    sent_away: bool = False

    @property
    def average_latency_ms(self) -> float:
        return self.total_latency_ms / self.heartbeats_received if self.heartbeats_received else 0.0


@attrs.frozen
class HeartbeatAnswer:
    success: bool
    action: Action
    message: str
    session: Session | None


class TooManyPeers(Exception):
    """The hub serves ``max_peers`` sessions already."""


@attrs.define
class SessionTable:
    """Sessions by id; one session per peer id (a reconnect replaces the old one)."""

    heartbeat_timeout: float
    missed_for_expiry: int
    max_peers: int = 1000
    _sessions: dict[str, Session] = attrs.field(factory=dict)
    _by_peer: dict[str, str] = attrs.field(factory=dict)

    @property
    def expiry_after(self) -> float:
        return self.heartbeat_timeout * self.missed_for_expiry

    def __len__(self) -> int:
        return len(self._sessions)

    def sessions(self) -> list[Session]:
        return sorted(self._sessions.values(), key=lambda s: s.connected_at)

    def get(self, session_id: str) -> Session | None:
        return self._sessions.get(session_id)

    def connect(
        self,
        peer_id: str,
        address: str,
        port: int,
        last_known_version: int,
        now: float,
        now_ms: int,
    ) -> Session:
        """A new session with an unguessable id; replaces the peer's previous one."""
        previous = self._by_peer.pop(peer_id, None)
        if previous is not None:
            self._sessions.pop(previous, None)
        elif len(self._sessions) >= self.max_peers:
            raise TooManyPeers(f"this hub already serves {self.max_peers} peers")
        session = Session(
            session_id=secrets.token_urlsafe(24),
            peer_id=peer_id,
            address=address,
            port=port,
            connected_at=now,
            connected_at_ms=now_ms,
            last_heartbeat=now,
            last_sync_version=last_known_version,
        )
        self._sessions[session.session_id] = session
        self._by_peer[peer_id] = session.session_id
        return session

    def disconnect(self, session_id: str) -> Session | None:
        session = self._sessions.pop(session_id, None)
        if session is not None and self._by_peer.get(session.peer_id) == session_id:
            del self._by_peer[session.peer_id]
        return session

    def heartbeat(
        self,
        *,
        peer_id: str,
        session_id: str,
        last_sync_version: int,
        sent_ms: int,
        now: float,
        now_ms: int,
        head_version: int,
        draining: bool,
    ) -> HeartbeatAnswer:
        """Record a heartbeat and decide the recommended action."""
        session = self._sessions.get(session_id)
        if session is None or session.peer_id != peer_id:
            return HeartbeatAnswer(False, Action.RECONNECT, "unknown session: connect again", None)
        latency = max(0.0, float(now_ms - sent_ms))
        session = attrs.evolve(
            session,
            last_heartbeat=now,
            last_heartbeat_ms=now_ms,
            last_sync_version=last_sync_version,
            state=PeerState.CONNECTED,
            heartbeats_received=session.heartbeats_received + 1,
            total_latency_ms=session.total_latency_ms + latency,
        )
        if draining:
            session = attrs.evolve(session, sent_away=True)
        self._sessions[session_id] = session
        if draining:
            return HeartbeatAnswer(
                True, Action.FAILOVER, "hub is draining: move to the next hub", session
            )
        if last_sync_version < head_version:
            return HeartbeatAnswer(
                True, Action.SYNC, f"behind: register is at version {head_version}", session
            )
        return HeartbeatAnswer(True, Action.NONE, "", session)

    def set_syncing(self, session_id: str, syncing: bool) -> None:
        """A sync stream for this session opened (or closed); unknown sessions are ignored."""
        session = self._sessions.get(session_id)
        if session is None:
            return
        if syncing:
            state = PeerState.SYNCING
        elif session.state is PeerState.SYNCING:
            state = PeerState.CONNECTED
        else:
            return
        self._sessions[session_id] = attrs.evolve(session, state=state)

    def all_sent_away(self) -> bool:
        """Every remaining peer was told to fail over (or none is left): a drain is done."""
        return all(s.sent_away for s in self._sessions.values())

    def note_sync(self, session_id: str, version: int, now_ms: int) -> None:
        """A sync answered for this session brought the peer to ``version``."""
        session = self._sessions.get(session_id)
        if session is not None:
            self._sessions[session_id] = attrs.evolve(
                session,
                last_sync_version=max(version, session.last_sync_version),
                last_sync_ms=now_ms,
            )

    def missed_heartbeats(self, session: Session, now: float) -> int:
        """Whole heartbeat timeouts passed since the session's last heartbeat."""
        if self.heartbeat_timeout <= 0:
            return 0
        return int((now - session.last_heartbeat) // self.heartbeat_timeout)

    def expire(self, now: float) -> list[Session]:
        """Drop and return sessions silent for longer than the failover rule allows."""
        gone = [s for s in self._sessions.values() if now - s.last_heartbeat > self.expiry_after]
        for session in gone:
            self.disconnect(session.session_id)
        # mark the late but not yet expired ones, for status reports
        for sid, session in list(self._sessions.items()):
            late = self.missed_heartbeats(session, now) >= 1
            state = PeerState.HEARTBEAT_TIMEOUT if late else PeerState.CONNECTED
            if session.state is not state and session.state is not PeerState.SYNCING:
                self._sessions[sid] = attrs.evolve(session, state=state)
        return gone
