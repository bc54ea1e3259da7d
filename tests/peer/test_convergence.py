"""Property: whatever happens, a peer's replica converges to the register of its hub.

Hypothesis interleaves publishes, updates and deprecations (on two
registers), connections, failovers between hubs that share a register and to
a hub with another register, disconnects, peer restarts and crashes between
fetch and commit, push-triggered syncs and corrupted answers, with the peer's
syncs advancing one page at a time in between (so changes land in the middle
of a full sync's stream). The peer is the real replication core
(``accept_page``, ``FullSync``, ``HistoryCheck``, ``RetryBudget``) over an
in-memory "durable" replica (entries and checkpoint committed together) and an
in-memory snapshot; the hub is a model with the store's semantics (one row
per id, one version counter, keyset paging by version).

After every step the durable replica must be a correct prefix of its hub's
history; at the end, with the hub quiet and reachable, the peer catches up and
must hold the hub's register. A FullSync answer omits deprecated entries, so
a peer resyncing by FullSync matches the hub's *active* entries exactly and
holds each deprecated one at the hub's version or not at all; a peer
resyncing from IncrementalSync(0) matches the whole register digest.
"""

from __future__ import annotations

import json
from typing import ClassVar

import attrs
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from sorcha_peerd.peer.replication import (
    META_VERSION,
    Checkpoint,
    FullSync,
    HistoryCheck,
    RetryBudget,
    Verdict,
    accept_page,
)
from sorcha_peerd.register import Entry, Snapshot

PAGE = 2
IDS = ["a", "b", "c", "d", "e"]


class ModelRegister:
    """The store's semantics in memory: one row per id, one counter, versions never reused."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.rows: dict[str, Entry] = {}
        self.history: dict[int, Entry] = {}
        self.counter = 0

    def _write(self, entry: Entry) -> None:
        self.rows[entry.blueprint_id] = entry
        self.history[entry.version] = entry

    def publish(self, blueprint_id: str, n: int) -> None:
        document = json.dumps({"id": blueprint_id, "n": n}).encode()
        current = self.rows.get(blueprint_id)
        if current is not None and current.is_active and current.document == document:
            return  # an identical re-publish mints no version
        self.counter += 1
        self._write(
            Entry(
                blueprint_id=blueprint_id,
                version=self.counter,
                document=document,
                published_at=self.counter,
                published_by="op",
                publication_transaction_id=f"{self.name}-{self.counter}",
            ).with_checksum()
        )

    def deprecate(self, blueprint_id: str) -> None:
        current = self.rows.get(blueprint_id)
        if current is None or not current.is_active:
            return
        self.counter += 1
        self._write(
            attrs.evolve(
                current,
                version=self.counter,
                is_active=False,
                publication_transaction_id=f"{self.name}-{self.counter}",
            )
        )

    def read_since(self, after: int, limit: int, *, active_only: bool = False) -> list[Entry]:
        rows = sorted(
            (
                e
                for e in self.rows.values()
                if e.version > after and (e.is_active or not active_only)
            ),
            key=lambda e: e.version,
        )
        return rows[:limit]


@attrs.define
class Hub:
    id: str
    register: ModelRegister


@attrs.define
class FullJob:
    sync: FullSync
    head: int
    cursor: int = 0


@attrs.define
class HistoryJob:
    check: HistoryCheck


class IncrementalJob:
    pass


Job = FullJob | HistoryJob | IncrementalJob


def corrupt(entry: Entry) -> Entry:
    return attrs.evolve(entry, document=entry.document + b" ")


class ModelPeer:
    """A peer driver in miniature: one page per step, durable before visible."""

    def __init__(self, active_only_resync: bool) -> None:
        self.active_only_resync = active_only_resync
        # durable: survives restarts; entries and checkpoint change together
        self.entries: dict[str, Entry] = {}
        self.checkpoint = Checkpoint()
        self.staging: dict[str, Entry] | None = None
        # volatile
        self.snapshot = Snapshot()
        self.hub: Hub | None = None
        self.job: Job | None = None
        self.verified: str | None = None
        self.budget = RetryBudget(max_attempts=3)
        self.caught_up = False
        self.corrupt_answers = 0
        self.clock = 0

    # -- lifecycle

    def connect(self, hub: Hub) -> None:
        self.hub, self.job, self.verified, self.caught_up = hub, None, None, False

    def disconnect(self) -> None:
        self.hub, self.job, self.verified, self.caught_up = None, None, None, False

    def restart(self) -> None:
        """Everything volatile is lost; the snapshot is rebuilt from the durable replica."""
        self.disconnect()
        self.snapshot = Snapshot.build(self.entries.values(), version=self.checkpoint.version)
        self.budget = RetryBudget(max_attempts=3)

    # -- the hub's answers, possibly damaged on the way

    def fetch(self, entries: list[Entry]) -> list[Entry]:
        if self.corrupt_answers and entries:
            self.corrupt_answers -= 1
            i = len(entries) // 2
            entries = [*entries[:i], corrupt(entries[i]), *entries[i + 1 :]]
        return entries

    # -- one step of sync

    def plan(self, hub: Hub) -> Job:
        if self.checkpoint.version == 0 or self.snapshot.count == 0:
            return self.start_full(hub)
        if hub.id in (self.checkpoint.hub_id, self.verified):
            return IncrementalJob()
        return HistoryJob(
            HistoryCheck(self.checkpoint, list(self.entries.values()), hub.register.counter)
        )

    def start_full(self, hub: Hub) -> FullJob:
        self.staging = {}  # stage_begin: a leftover staging is discarded
        return FullJob(FullSync(), head=hub.register.counter)  # head read BEFORE the stream

    def step(self, *, commit: bool = True) -> None:
        hub = self.hub
        if hub is None:
            return
        self.clock += 1
        if self.job is None:
            self.job = self.plan(hub)
        job = self.job
        if isinstance(job, HistoryJob):
            after = job.check.next_probe()
            if after is not None:
                job.check.answer(self.fetch(hub.register.read_since(after, 1)))
            verdict = job.check.verdict()
            if verdict is Verdict.SAME:
                self.verified, self.job = hub.id, IncrementalJob()
            elif verdict is Verdict.DIFFERENT:
                self.job = self.start_full(hub)
        elif isinstance(job, FullJob):
            self.full_step(hub, job, commit=commit)
        else:
            self.incremental_step(hub, commit=commit)

    def full_step(self, hub: Hub, job: FullJob, *, commit: bool) -> None:
        page = self.fetch(
            hub.register.read_since(job.cursor, PAGE, active_only=self.active_only_resync)
        )
        good, rejects = job.sync.feed(page)
        if rejects:
            self.staging, self.job = None, None  # stage_abort; retry later
            self.budget = self.budget.failed(0)
            return
        assert self.staging is not None
        for e in good:  # stage_entries: newer wins per id
            held = self.staging.get(e.blueprint_id)
            if held is None or held.version < e.version:
                self.staging[e.blueprint_id] = e
        if page:
            job.cursor = page[-1].version
        if len(page) < PAGE:
            checkpoint = job.sync.finish(job.head, self.clock, hub_id=hub.id)
            if not commit:
                return
            self.entries, self.checkpoint, self.staging = self.staging, checkpoint, None
            self.snapshot = Snapshot.build(self.entries.values(), version=checkpoint.version)
            self.job = IncrementalJob()

    def incremental_step(self, hub: Hub, *, commit: bool) -> None:
        page = self.fetch(hub.register.read_since(self.checkpoint.version, PAGE))
        result = accept_page(self.checkpoint, page, asked=PAGE, hub_id=hub.id, now_ms=self.clock)
        if not commit:
            return
        for e in result.accepted:  # apply_replica: newer wins, same transaction as the checkpoint
            held = self.entries.get(e.blueprint_id)
            if held is None or held.version < e.version:
                self.entries[e.blueprint_id] = e
        self.checkpoint = result.checkpoint
        self.snapshot = self.snapshot.apply(result.accepted, version=result.checkpoint.version)
        self.budget = self.budget.after(result)
        if self.budget.exhausted:  # back off: this round ends, a later one retries
            self.job, self.budget = None, RetryBudget(max_attempts=3)
        elif result.complete:
            self.job, self.caught_up = None, True


class ConvergenceMachine(RuleBasedStateMachine):
    active_only_resync: ClassVar[bool] = True

    def __init__(self) -> None:
        super().__init__()
        shared, other = ModelRegister("R1"), ModelRegister("R2")
        self.registers = [shared, other]
        # n0 and n1 serve one register (one MongoDB); n2 serves another
        self.hubs = [Hub("n0", shared), Hub("n1", shared), Hub("n2", other)]
        self.peer = ModelPeer(self.active_only_resync)

    # -- the hubs' registers change

    @initialize(
        r1=st.lists(st.sampled_from(IDS), min_size=3, max_size=len(IDS), unique=True),
        r2=st.lists(st.sampled_from(IDS), max_size=len(IDS), unique=True),
    )
    def seed(self, r1: list[str], r2: list[str]) -> None:
        """Registers that already hold something, so full syncs take several pages."""
        for register, ids in zip(self.registers, (r1, r2), strict=True):
            for blueprint_id in ids:
                register.publish(blueprint_id, 0)
        self.peer.connect(self.hubs[0])  # a new peer: its first sync is a full one

    @rule(r=st.integers(0, 1), blueprint_id=st.sampled_from(IDS), n=st.integers(0, 2))
    def publish(self, r: int, blueprint_id: str, n: int) -> None:
        self.registers[r].publish(blueprint_id, n)

    @rule(r=st.integers(0, 1), blueprint_id=st.sampled_from(IDS))
    def deprecate(self, r: int, blueprint_id: str) -> None:
        self.registers[r].deprecate(blueprint_id)

    # -- the link

    @rule(h=st.integers(0, 2))
    def connect(self, h: int) -> None:
        self.peer.connect(self.hubs[h])

    @rule()
    def disconnect(self) -> None:
        self.peer.disconnect()

    @rule()
    def restart(self) -> None:
        self.peer.restart()

    @rule()
    def crash_between_fetch_and_commit(self) -> None:
        self.peer.step(commit=False)
        self.peer.restart()

    @rule()
    def checkpoint_meta_damaged(self) -> None:
        """A damaged checkpoint reads as Checkpoint(): the peer must resync in full."""
        peer = self.peer
        peer.checkpoint = Checkpoint.from_meta({**peer.checkpoint.to_meta(), META_VERSION: "x"})
        peer.restart()

    @rule(n=st.integers(1, 4))
    def corrupt_next_answers(self, n: int) -> None:
        self.peer.corrupt_answers = n

    # -- sync

    @rule()
    def sync_step(self) -> None:
        self.peer.step()

    @rule(n=st.integers(2, 6))
    def sync_steps(self, n: int) -> None:
        for _ in range(n):
            self.peer.step()

    @rule(
        changes=st.lists(
            st.tuples(st.integers(0, len(IDS) - 1), st.integers(-2, 2)), min_size=1, max_size=4
        )
    )
    def sync_step_while_hub_changes(self, changes: list[tuple[int, int]]) -> None:
        """A page, then changes on the hub's register before the next one.

        ``(k, n)``: n < 0 deprecates the k-th oldest active entry (the ones a
        running full sync has most likely streamed already), else publishes
        ``IDS[k]`` with document n.
        """
        self.peer.step()
        register = (self.peer.hub or self.hubs[0]).register
        for k, n in changes:
            if n >= 0:
                register.publish(IDS[k], n)
                continue
            active = sorted((e for e in register.rows.values() if e.is_active),
                            key=lambda e: e.version)  # fmt: skip
            if active:
                register.deprecate(active[min(k, len(active) - 1)].blueprint_id)

    @precondition(lambda self: self.peer.job is None)
    @rule()
    def push_notification(self) -> None:
        self.peer.step()  # a notification just starts an incremental sync

    # -- what must hold at every instant

    def register_of(self, hub_id: str) -> ModelRegister | None:
        return next((h.register for h in self.hubs if h.id == hub_id), None)

    @invariant()
    def visible_equals_durable(self) -> None:
        assert self.peer.snapshot.digest == Snapshot.build(self.peer.entries.values()).digest

    @invariant()
    def durable_replica_is_a_correct_prefix(self) -> None:
        peer = self.peer
        register = self.register_of(peer.checkpoint.hub_id)
        if register is None:  # no checkpoint (none yet, or damaged): nothing is claimed
            assert peer.checkpoint == Checkpoint()
            return
        for e in peer.entries.values():  # nothing corrupt, nothing from another register
            assert register.history.get(e.version) == e
        # Every row the hub holds at or below the checkpoint is in the replica as
        # is (a FullSync may leave out a deprecated one). A row above it is not
        # owed yet: the next incremental sync brings it, whatever the replica
        # holds of that id meanwhile.
        for blueprint_id, row in register.rows.items():
            if row.version <= peer.checkpoint.version:
                held = peer.entries.get(blueprint_id)
                assert held == row or (
                    held is None and self.active_only_resync and not row.is_active
                ), (blueprint_id, row.version)

    def teardown(self) -> None:
        """The hub goes quiet and reachable: the peer catches up and holds its register."""
        peer = self.peer
        hub = peer.hub or self.hubs[0]
        peer.corrupt_answers = 0
        if peer.hub is None:
            peer.connect(hub)
        peer.caught_up = False
        for _ in range(200):
            if peer.caught_up and peer.job is None:
                break
            peer.step()
        else:
            raise AssertionError("the peer did not catch up with a quiet hub")
        rows = hub.register.rows
        assert peer.checkpoint.hub_id == hub.id or hub.register is self.register_of(
            peer.checkpoint.hub_id
        )
        if self.active_only_resync:
            assert set(peer.entries) <= set(rows)
            for blueprint_id, row in rows.items():
                held = peer.entries.get(blueprint_id)
                assert held == row or (held is None and not row.is_active)
            assert (
                Snapshot.build(e for e in peer.entries.values() if e.is_active).digest
                == Snapshot.build(e for e in rows.values() if e.is_active).digest
            )
        else:
            assert peer.snapshot.digest == Snapshot.build(rows.values()).digest


class ResyncFromIncrementalZero(ConvergenceMachine):
    active_only_resync = False


_SETTINGS = settings(
    max_examples=300,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

TestConvergenceWithFullSync = ConvergenceMachine.TestCase
TestConvergenceWithFullSync.settings = _SETTINGS
TestConvergenceWithCompleteResync = ResyncFromIncrementalZero.TestCase
TestConvergenceWithCompleteResync.settings = _SETTINGS


def test_deprecation_during_a_full_sync_is_not_lost() -> None:
    """The case the checkpoint rule exists for, spelled out.

    A full sync stages a and b, a is deprecated (version 4, never in the
    active-only stream), d is published at 5 and streamed. Checkpointing at
    the last version streamed (5) would lose the deprecation for good; the
    head read before the stream (3) makes the next incremental sync fetch it.
    """
    machine = ConvergenceMachine()
    for blueprint_id in ("a", "b", "c"):
        machine.publish(0, blueprint_id, 0)
    machine.connect(0)
    machine.sync_step()  # stages a1, b2
    machine.deprecate(0, "a")  # a4
    machine.publish(0, "d", 0)  # d5
    machine.sync_steps(2)  # stages c3, d5; commits
    assert machine.peer.checkpoint.version == 3
    machine.durable_replica_is_a_correct_prefix()
    machine.teardown()
    assert machine.peer.entries["a"].is_active is False
