"""One session with one hub: heartbeat, push subscription and sync, until it ends.

:func:`run_session` runs three tasks in one nursery over an open channel:

* **heartbeat** drives the sans-I/O :class:`HeartbeatMonitor`: a beat every
  interval, each call bounded by the heartbeat timeout; the monitor's advice
  (SYNC, RECONNECT, FAILOVER after the consecutive misses) is obeyed here;
* **push** holds a SubscribeToPushNotifications stream, re-subscribes when it
  breaks, and turns every notification (and every sequence gap) into a sync
  request — requests coalesce, so a burst is one sync;
* **sync** runs the first sync of the session (full for an empty replica or
  a hub with a different history, else incremental), then one incremental
  sync per request, and a periodic one (every ``sync_interval``, or every
  heartbeat interval while the push stream is down).

The first task that decides the session is over (a FAILOVER or RECONNECT
advice, two missed heartbeats, a lost connection) records why and cancels
the nursery: every call and stream open to that hub is cancelled with it,
which is the only liveness purerpc gives us.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import attrs
import trio

from sorcha_peerd.peer.heartbeat import Advice, HeartbeatMonitor
from sorcha_peerd.peer.link import HubEndpoint
from sorcha_peerd.peer.replica import Replica
from sorcha_peerd.peer.replication import (
    FirstSync,
    FullSync,
    HistoryCheck,
    RetryBudget,
    Verdict,
    accept_page,
    commit_needed,
    plan_first_sync,
    sync_period,
)
from sorcha_peerd.register import Entry, Limits
from sorcha_peerd.store.base import StoreError
from sorcha_peerd.telemetry import (
    ATTR_HUB,
    SPAN_HEARTBEAT,
    SPAN_NOTIFICATION,
    SPAN_SYNC_FULL,
    SPAN_SYNC_INCREMENTAL,
    Telemetry,
)
from sorcha_peerd.wire import messages as pb
from sorcha_peerd.wire import services
from sorcha_peerd.wire.client import Channel
from sorcha_peerd.wire.status import RpcError, StatusCode

log = logging.getLogger(__name__)


class SessionEnd(enum.Enum):
    FAILOVER = "failover"  # go to the next hub now
    RECONNECT = "reconnect"  # a new session on the same hub
    LOST = "lost"  # the connection died: next hub


@attrs.frozen
class PeerTiming:
    heartbeat_interval: float
    heartbeat_timeout: float
    missed_for_failover: int
    sync_interval: float
    call_timeout: float
    page_size: int
    sync_attempts: int = 5


class SyncRequests:
    """Coalescing sync requests, and a way to wait for one to be served.

    Any number of requests made while a sync runs are served by the next
    one; :meth:`wait_served` lets the control socket return when a sync that
    started after its request has finished.
    """

    def __init__(self) -> None:
        self.requested = 0
        self.served = 0
        self.full_wanted = False
        self.last_error: str | None = None
        self._wake = trio.Event()
        self._served_event = trio.Event()

    def want(self, *, full: bool = False) -> int:
        self.requested += 1
        self.full_wanted = self.full_wanted or full
        self._wake.set()
        return self.requested

    async def wait_wanted(self, timeout: float) -> None:
        with trio.move_on_after(timeout):
            await self._wake.wait()

    def take(self) -> tuple[int, bool]:
        """(generation being served, full?) — clears the pending request."""
        self._wake = trio.Event()
        full, self.full_wanted = self.full_wanted, False
        return self.requested, full

    def done(self, generation: int, error: str | None) -> None:
        self.served = max(self.served, generation)
        self.last_error = error
        event, self._served_event = self._served_event, trio.Event()
        event.set()

    async def wait_served(self, generation: int) -> str | None:
        while self.served < generation:
            await self._served_event.wait()
        return self.last_error


@attrs.define
class PeerState:
    """What the session tasks learn and the status reports (owned by the peer's tasks)."""

    node_id: str
    hub_head: int = 0
    session_id: str = ""
    push_up: bool = False
    last_sync_ms: int = 0
    last_sync_error: str = ""
    rejected_entries: int = 0
    syncs: int = 0
    notifications: int = 0
    monitor: HeartbeatMonitor | None = None

    def saw_head(self, version: int) -> None:
        self.hub_head = max(self.hub_head, version)


class _Ended(Exception):
    def __init__(self, end: SessionEnd, reason: str) -> None:
        super().__init__(reason)
        self.end = end


@attrs.define
class Session:
    hub: HubEndpoint
    channel: Channel
    replica: Replica
    state: PeerState
    requests: SyncRequests
    timing: PeerTiming
    limits: Limits
    clock_ms: Callable[[], int]
    telemetry: Telemetry
    end: SessionEnd | None = None
    reason: str = ""
    _scope: trio.CancelScope | None = None

    def finish(self, end: SessionEnd, reason: str) -> None:
        if self.end is None:
            self.end, self.reason = end, reason
            log.info("session with hub %s ends (%s): %s", self.hub.id, end.value, reason)
        if self._scope is not None:
            self._scope.cancel()

    async def run(self) -> tuple[SessionEnd, str]:
        with trio.CancelScope() as scope:
            self._scope = scope
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._guard, self._heartbeat)
                nursery.start_soon(self._guard, self._push)
                nursery.start_soon(self._guard, self._sync)
        if self.end is None:  # cancelled from outside (shutdown)
            return SessionEnd.LOST, "stopped"
        return self.end, self.reason

    async def _guard(self, task: Callable[[], Any]) -> None:
        """A task's unexpected failure ends the session (loudly), never the peer."""
        try:
            await task()
        except _Ended as ended:
            self.finish(ended.end, str(ended))
        except RpcError as exc:
            if self.channel.closed:
                self.finish(SessionEnd.LOST, f"connection to {self.hub.id} lost: {exc.message}")
            else:
                self.finish(SessionEnd.LOST, f"hub {self.hub.id} failed: {exc}")
        except Exception as exc:  # a bug in one session must not stop the peer
            log.exception("peer session task failed")
            self.finish(SessionEnd.LOST, f"internal error: {exc!r}")

    # ------------------------------------------------------------------ heartbeat

    async def _heartbeat(self) -> None:
        t = self.timing
        monitor = HeartbeatMonitor(
            interval=t.heartbeat_interval,
            timeout=t.heartbeat_timeout,
            misses_for_failover=t.missed_for_failover,
        )
        self.state.monitor = monitor
        monitor.start(trio.current_time())
        while True:
            await trio.sleep_until(monitor.next_due())
            now = trio.current_time()
            beat = monitor.beat(now)
            view = self.replica.view
            message = pb.HeartbeatMessage(
                peer_id=self.state.node_id,
                timestamp=self.clock_ms(),
                sequence_number=beat.sequence,
                last_sync_version=view.checkpoint.version,
                session_id=self.state.session_id,
                node_type="Peer",
                metrics=pb.HealthMetrics(
                    blueprint_count=view.snapshot.active_count,
                    is_syncing=self.requests.served < self.requests.requested,
                ),
            )
            try:
                with self.telemetry.span(
                    SPAN_HEARTBEAT, {ATTR_HUB: self.hub.id}, sequence=beat.sequence
                ):
                    ack = await self.channel.unary(
                        services.SEND_HEARTBEAT, message, timeout=max(0.001, beat.deadline - now)
                    )
            except RpcError as exc:
                if self.channel.closed:
                    raise _Ended(SessionEnd.LOST, f"connection lost: {exc.message}") from None
                now = trio.current_time()
                # a deadline may fire a hair before beat.deadline: count the miss anyway
                advice = (
                    monitor.expired(max(now, beat.deadline))
                    if exc.code is StatusCode.DEADLINE_EXCEEDED
                    else monitor.send_failed(beat.sequence, now)
                )
                log.info(
                    "heartbeat %d to %s missed (%s); %d in a row",
                    beat.sequence,
                    self.hub.id,
                    exc.code.name,
                    monitor.missed,
                )
            else:
                self.state.saw_head(ack.current_system_register_version)
                advice = monitor.acknowledged(
                    beat.sequence, trio.current_time(), int(ack.recommended_action)
                )
                if monitor.last_latency is not None:
                    self.telemetry.record_heartbeat_latency(monitor.last_latency, hub=self.hub.id)
            self._obey(advice)

    def _obey(self, advice: Advice) -> None:
        if advice is Advice.SYNC:
            self.requests.want()
        elif advice is Advice.RECONNECT:
            raise _Ended(SessionEnd.RECONNECT, "the hub does not know this session")
        elif advice is Advice.FAILOVER:
            monitor = self.state.monitor
            missed = monitor.missed if monitor is not None else 0
            why = f"{missed} heartbeats missed" if missed else "the hub asked to fail over"
            raise _Ended(SessionEnd.FAILOVER, why)

    # ------------------------------------------------------------------ push

    async def _push(self) -> None:
        request = pb.SubscriptionRequest(
            peer_id=self.state.node_id,
            session_id=self.state.session_id,
            subscribe_time=self.clock_ms(),
        )
        while True:
            try:
                async with self.channel.server_stream(
                    services.SUBSCRIBE, request, timeout=None
                ) as notes:
                    self.state.push_up = True
                    expected = 1
                    async for note in notes:
                        with self.telemetry.span(
                            SPAN_NOTIFICATION,
                            {ATTR_HUB: self.hub.id},
                            version=note.version,
                            sequence=note.sequence_number,
                        ):
                            self._notified(note, expected)
                        expected = note.sequence_number + 1
            except RpcError as exc:
                self.telemetry.notification_failed("stream_failed", hub=self.hub.id)
                if self.channel.closed:
                    raise
                if exc.code is StatusCode.UNAVAILABLE:  # the hub is draining: leave now
                    raise _Ended(
                        SessionEnd.FAILOVER, f"the hub is going away: {exc.message}"
                    ) from None
                log.info("push stream from %s ended: %s", self.hub.id, exc)
            finally:
                self.state.push_up = False
            self.requests.want()  # whatever was missed while it was down
            await trio.sleep(min(self.timing.heartbeat_interval, 5.0))

    def _notified(self, note: pb.BlueprintNotification, expected: int) -> None:
        self.state.notifications += 1
        self.state.saw_head(note.version)
        if note.sequence_number != expected:
            self.telemetry.notification_failed("sequence_gap", hub=self.hub.id)
            log.info("push gap: expected %d, got %d; syncing", expected, note.sequence_number)
        else:
            self.telemetry.notification_delivered(hub=self.hub.id)
        if note.version > self.replica.view.checkpoint.version:
            self.requests.want()

    # ------------------------------------------------------------------ sync

    async def _sync(self) -> None:
        """Serve sync requests until the session ends.

        The first sync of the session decides full or incremental, and is
        decided again until one succeeds. A failure that is not the hub's
        connection (a bad page, a hub error, a local store error) is reported
        to whoever asked and retried on the next trigger; the session goes on,
        since its heartbeats — not a sync — decide whether the hub is alive.
        """
        decided = False
        while True:
            if decided:
                period = sync_period(
                    self.timing.sync_interval, self.timing.heartbeat_interval, self.state.push_up
                )
                if self.requests.served >= self.requests.requested:
                    await self.requests.wait_wanted(period)
            generation, full = self.requests.take()
            error: str | None = None
            try:
                if not decided:
                    full = full or await self._needs_full_sync()
                if full:
                    await self._timed("full", self._full_sync)
                await self._timed("incremental", self._incremental_sync)
                decided = True
            except (SyncError, StoreError) as exc:
                error = str(exc)
            except RpcError as exc:
                if self.channel.closed:
                    self._unserved(generation, full, "the connection to the hub was lost")
                    raise
                error = f"hub {self.hub.id}: {exc}"
            except BaseException:  # cancelled (the session ends): whoever asked must hear
                self._unserved(generation, full, "the session with the hub ended")
                raise
            if error is None:
                self.state.last_sync_error = ""
                self.requests.done(generation, None)
                continue
            log.warning("sync from %s failed: %s", self.hub.id, error)
            self.state.last_sync_error = error
            self._unserved(generation, full, error)
            await trio.sleep(min(self.timing.heartbeat_interval, 5.0))

    def _unserved(self, generation: int, full: bool, error: str) -> None:
        if full:
            self.requests.full_wanted = True  # still wanted: it was not done
        self.requests.done(generation, error)

    async def _timed(
        self, kind: Literal["full", "incremental"], sync: Callable[[], Awaitable[int]]
    ) -> None:
        """Run a sync inside its span and record its duration and entries."""
        name = SPAN_SYNC_FULL if kind == "full" else SPAN_SYNC_INCREMENTAL
        started = trio.current_time()
        with self.telemetry.span(name, {ATTR_HUB: self.hub.id}) as span:
            count = await sync()
            span.set_attribute("sorcha.sync.blueprints", count)
        self.telemetry.record_sync(kind, trio.current_time() - started, count, hub=self.hub.id)

    async def _needs_full_sync(self) -> bool:
        view = self.replica.view
        plan = plan_first_sync(
            view.checkpoint, view.snapshot.count, self.hub.id, self.state.hub_head
        )
        if plan is FirstSync.FULL:
            if view.checkpoint.version and self.state.hub_head < view.checkpoint.version:
                log.warning(
                    "hub %s is at version %d, behind this replica's %d (restored or wiped?): "
                    "full resync",
                    self.hub.id,
                    self.state.hub_head,
                    view.checkpoint.version,
                )
            return True
        if plan is FirstSync.INCREMENTAL:
            return False
        check = HistoryCheck(
            view.checkpoint, list(view.snapshot.entries.values()), self.state.hub_head
        )
        while (after := check.next_probe()) is not None:
            check.answer(await self._fetch(after, 1))
        if check.verdict() is not Verdict.SAME:
            log.warning(
                "hub %s does not continue the register history of %s (%s): full resync",
                self.hub.id,
                view.checkpoint.hub_id or "before",
                check.reason,
            )
            return True
        log.info("hub %s continues the same register history", self.hub.id)
        return False

    async def _fetch(self, after: int, limit: int) -> list[Entry]:
        request = pb.SyncRequest(
            peer_id=self.state.node_id,
            last_known_version=after,
            session_id=self.state.session_id,
            max_blueprints=limit,
            request_time=self.clock_ms(),
        )
        async with self.channel.server_stream(
            services.INCREMENTAL_SYNC, request, timeout=self.timing.call_timeout
        ) as entries:
            return [entry async for entry in entries]

    async def _incremental_sync(self) -> int:
        """Page from the checkpoint until the hub has nothing newer; the entries applied."""
        budget = RetryBudget(max_attempts=self.timing.sync_attempts)
        applied = 0
        while True:
            checkpoint = self.replica.view.checkpoint
            page = await self._fetch(checkpoint.version, self.timing.page_size)
            result = accept_page(
                checkpoint,
                page,
                asked=self.timing.page_size,
                hub_id=self.hub.id,
                now_ms=self.clock_ms(),
                limits=self.limits,
            )
            budget = budget.after(result)
            if result.rejected:
                self._count_rejects(result.rejected)
                if budget.exhausted:
                    raise SyncError(
                        f"hub {self.hub.id} keeps sending bad entries: {result.rejected[0][2]}"
                    )
            if commit_needed(checkpoint, result):
                await self.replica.commit(result.accepted, result.checkpoint)
                applied += len(result.accepted)
                self.state.syncs += 1
                self.state.last_sync_ms = self.clock_ms()
            if result.complete:
                self.state.last_sync_ms = self.clock_ms()
                self.state.saw_head(result.checkpoint.version)
                return applied

    async def _full_sync(self) -> int:
        """Rebuild the replica from the hub's whole history, staged; swap only when clean.

        The pages come from IncrementalSync from version 0, not from FullSync:
        FullSync leaves deprecated entries out, and a replica without them
        could never hold the same register (nor the same digest) as its hub.
        The checkpoint is the hub's head read before the first page (see
        :class:`FullSync`), and an incremental sync follows at once.
        """
        status = await self.channel.unary(
            services.GET_STATUS,
            pb.StatusRequest(peer_id=self.state.node_id),
            timeout=self.timing.call_timeout,
        )
        head = status.current_system_register_version
        self.state.saw_head(head)
        log.info("full sync from hub %s (head version %d)", self.hub.id, head)
        sync = FullSync(limits=self.limits)
        await self.replica.stage_begin()
        try:
            cursor = 0
            while True:
                page = await self._fetch(cursor, self.timing.page_size)
                await self._stage(sync, page)
                if len(page) < self.timing.page_size:
                    break
                cursor = page[-1].version
            checkpoint = sync.finish(head, hub_id=self.hub.id, now_ms=self.clock_ms())
            await self.replica.stage_commit(checkpoint)
        except BaseException:
            with trio.CancelScope(shield=True):
                await self.replica.stage_abort()
            raise
        self.state.syncs += 1
        self.state.last_sync_ms = self.clock_ms()
        log.info(
            "full sync from hub %s done: %d entries, version %d",
            self.hub.id,
            self.replica.view.snapshot.count,
            checkpoint.version,
        )
        return self.replica.view.snapshot.count

    async def _stage(self, sync: FullSync, batch: list[Entry]) -> None:
        good, rejected = sync.feed(batch)
        if rejected:
            self._count_rejects(rejected)
            raise SyncError(f"full sync from {self.hub.id} had bad entries: {rejected[0][2]}")
        if good:
            await self.replica.stage(good)

    def _count_rejects(self, rejected: tuple[tuple[str, int, str], ...]) -> None:
        self.state.rejected_entries += len(rejected)
        for blueprint_id, version, reason in rejected:
            log.warning(
                "rejected %s version %d from hub %s: %s", blueprint_id, version, self.hub.id, reason
            )


class SyncError(Exception):
    """A sync could not complete; the session goes on and retries later."""
