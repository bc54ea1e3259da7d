"""What a sync answer does to a peer's replica: the sans-I/O replication core.

The trio driver fetches answers from a hub and hands them here; this module
decides which entries to commit, with which checkpoint, and whether to ask
again. It never reads a clock (time is passed in) and never touches the store:
the driver commits ``accepted`` and ``checkpoint.to_meta()`` in ONE store
transaction (``apply_replica``, or ``stage_commit`` after a full sync) and only
then swaps the snapshot readers see (architecture principle 4).

The one rule everything here protects: **the checkpoint never moves past a
version whose entry is not in the replica.** An incremental sync asks for
``version > checkpoint.version``, so an entry skipped below the checkpoint
would be lost for good; a bad entry therefore stops the page where it is, and
the driver refetches from just before it (a transient corruption heals on the
refetch). See :mod:`sorcha_peerd.peer.replication_history` for failover to
another hub.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence

import attrs

from sorcha_peerd.peer.replication_history import HistoryCheck, Verdict
from sorcha_peerd.register import DEFAULT_LIMITS, Entry, Limits, ValidationError, validate_entry

__all__ = [
    "META_HUB_ID",
    "META_KEYS",
    "META_SYNCED_AT",
    "META_VERSION",
    "Checkpoint",
    "FirstSync",
    "FullSync",
    "FullSyncFailed",
    "HistoryCheck",
    "PageResult",
    "Reject",
    "RetryBudget",
    "Verdict",
    "accept_page",
    "check_entry",
    "commit_needed",
    "plan_first_sync",
    "sync_period",
]

#: Meta keys of the checkpoint in the store's ``meta`` table.
META_VERSION = "replica.checkpoint.version"
META_HUB_ID = "replica.checkpoint.hub_id"
META_SYNCED_AT = "replica.checkpoint.synced_at_ms"
META_KEYS = (META_VERSION, META_HUB_ID, META_SYNCED_AT)

#: ``(blueprint_id, version, reason)`` of an entry that was refused.
Reject = tuple[str, int, str]


@attrs.frozen
class Checkpoint:
    """How far the replica follows a hub's history; stored with the entries it describes.

    ``version``: every change of the hub's register up to this version is
    reflected in the replica (an id may be held at a lower version when a
    later change of it has not been fetched yet: that change is above).
    ``hub_id``: the hub last synced from; a different hub must pass a
    :class:`~sorcha_peerd.peer.replication_history.HistoryCheck` before the
    peer continues from ``version``.
    """

    version: int = 0
    hub_id: str = ""
    synced_at_ms: int = 0

    def to_meta(self) -> dict[str, str]:
        return {
            META_VERSION: str(self.version),
            META_HUB_ID: self.hub_id,
            META_SYNCED_AT: str(self.synced_at_ms),
        }

    @classmethod
    def from_meta(cls, meta: Mapping[str, str | None]) -> Checkpoint:
        """The stored checkpoint; anything missing or malformed gives ``Checkpoint()``.

        A zero checkpoint means a full resync: wasteful at worst, whereas
        trusting a damaged version could skip entries forever.
        """
        version, hub_id, synced = (meta.get(k) for k in META_KEYS)
        if version is None or hub_id is None or synced is None:
            return cls()
        try:
            v, s = int(version), int(synced)
        except ValueError:
            return cls()
        if v < 0 or s < 0:
            return cls()
        return cls(version=v, hub_id=hub_id, synced_at_ms=s)


@attrs.frozen
class PageResult:
    """What one incremental answer does.

    ``accepted`` and ``checkpoint`` are committed together, then the snapshot
    is swapped. ``rejected`` entries are never stored (count them). When
    ``complete`` is False the driver asks again from ``checkpoint.version``.
    """

    accepted: tuple[Entry, ...]
    checkpoint: Checkpoint
    rejected: tuple[Reject, ...]
    complete: bool


def check_entry(entry: Entry, after_version: int, limits: Limits = DEFAULT_LIMITS) -> str | None:
    """Why ``entry`` cannot follow ``after_version`` in a sync answer, or None when it can.

    Answers come oldest version first and every version is used once, so a
    version at or below the previous one is stale or out of order: a hub bug
    or a damaged stream, never something to store.
    """
    if entry.version <= after_version:
        return f"version {entry.version} does not follow {after_version}"
    try:
        validate_entry(entry, limits)
    except ValidationError as exc:
        return str(exc)
    return None


def accept_page(
    checkpoint: Checkpoint,
    entries: Sequence[Entry],
    *,
    asked: int | None,
    hub_id: str,
    now_ms: int,
    limits: Limits = DEFAULT_LIMITS,
) -> PageResult:
    """Decide what an IncrementalSync answer to ``last_known_version=checkpoint.version`` does.

    The longest good prefix is accepted and the checkpoint moves to its last
    version. At the first bad entry the page stops: it is reported, nothing
    after it is looked at (those entries come again on the refetch), and
    ``complete`` is False. ``asked`` is the ``max_blueprints`` sent (None for
    no limit): a full page means the hub may hold more.

    The caller must have established that ``hub_id`` serves the register the
    checkpoint belongs to (same hub, or a HistoryCheck said SAME).
    """
    if asked is not None and asked < 1:
        raise ValueError("asked must be at least 1 (None for no limit)")
    last = checkpoint.version
    good: list[Entry] = []
    rejected: tuple[Reject, ...] = ()
    for entry in entries:
        reason = check_entry(entry, last, limits)
        if reason is not None:
            rejected = ((entry.blueprint_id, entry.version, reason),)
            break
        good.append(entry)
        last = entry.version
    complete = not rejected and (asked is None or len(entries) < asked)
    return PageResult(
        accepted=tuple(good),
        checkpoint=Checkpoint(version=last, hub_id=hub_id, synced_at_ms=now_ms),
        rejected=rejected,
        complete=complete,
    )


@attrs.frozen
class RetryBudget:
    """When to stop refetching a page that keeps failing at the same place.

    A bad entry makes the driver ask again at once (a corruption on the way is
    usually transient). If the answer keeps failing at the same checkpoint
    version ``max_attempts`` times in a row, the budget is ``exhausted``: the
    driver ends this sync round, reports it, pauses, and starts a new round
    with a fresh budget on the next trigger, perhaps on another hub. Progress (a
    failure at a later version, or a clean page) resets the count. A failed
    full sync counts as a failure at version 0.
    """

    max_attempts: int = 5
    failures: int = 0
    stuck_at: int = -1

    def after(self, result: PageResult) -> RetryBudget:
        """The budget after one incremental answer."""
        if result.rejected:
            return self.failed(result.checkpoint.version)
        return self.succeeded()

    def failed(self, at_version: int) -> RetryBudget:
        count = self.failures + 1 if at_version == self.stuck_at else 1
        return attrs.evolve(self, failures=count, stuck_at=at_version)

    def succeeded(self) -> RetryBudget:
        return attrs.evolve(self, failures=0, stuck_at=-1)

    @property
    def exhausted(self) -> bool:
        return self.failures >= self.max_attempts


class FirstSync(enum.Enum):
    """How a session's first sync starts (:func:`plan_first_sync`)."""

    FULL = "full"
    INCREMENTAL = "incremental"
    CHECK_HISTORY = "check_history"  # probe the hub first (replication_history.HistoryCheck)


def plan_first_sync(checkpoint: Checkpoint, held: int, hub_id: str, hub_head: int) -> FirstSync:
    """Full, incremental, or "check the history first", for a new session with ``hub_id``.

    * nothing held (or no checkpoint): a full sync;
    * the hub's head is behind the checkpoint — even the same hub's, whose
      register was restored or wiped: a full sync (never trust the checkpoint);
    * the hub the checkpoint came from: incremental;
    * another hub: it may serve another register, so probe its history first.
    """
    if checkpoint.version == 0 or held == 0:
        return FirstSync.FULL
    if hub_head < checkpoint.version:
        return FirstSync.FULL
    if checkpoint.hub_id == hub_id:
        return FirstSync.INCREMENTAL
    return FirstSync.CHECK_HISTORY


def commit_needed(before: Checkpoint, result: PageResult) -> bool:
    """Whether a page changes the replica: entries, or a checkpoint that moved.

    A page with nothing new (only ``synced_at_ms`` would change) is not
    written: no fsync and no new snapshot for an idle sync.
    """
    moved = (result.checkpoint.version, result.checkpoint.hub_id) != (
        before.version,
        before.hub_id,
    )
    return bool(result.accepted) or moved


def sync_period(sync_interval: float, heartbeat_interval: float, push_up: bool) -> float:
    """Seconds to the next periodic sync: ``sync_interval``, or a heartbeat while push is down."""
    return sync_interval if push_up else min(sync_interval, heartbeat_interval)


class FullSyncFailed(Exception):
    """A full sync met a bad entry: discard the staging (``stage_abort``), retry later."""

    def __init__(self, reject: Reject) -> None:
        blueprint_id, version, reason = reject
        super().__init__(f"full sync refused: {blueprint_id!r} at version {version}: {reason}")
        self.reject = reject


class FullSync:
    """Accumulates one FullSync answer that the driver streams into the store's staging.

    Usage: read the hub's head version ``H`` (ConnectionResponse or a
    heartbeat acknowledgement: a value obtained *before* the FullSync call),
    ``stage_begin()``; for each received page, ``feed(page)`` and
    ``stage_entries(good)``; at the end ``stage_commit(finish(H, now, hub_id=...).to_meta())``.
    If ``feed`` reports a reject, ``stage_abort()``: a full sync with a bad
    entry is never committed (it would replace the whole replica).

    Why ``H`` is the right checkpoint. The hub hands out versions from one
    counter, serves only versions at or below its horizon, and any change
    gets a version above every one served so far; ``H`` is such a horizon.
    Take any id whose current hub row has version ``w``:

    - ``w > H``: the next IncrementalSync from ``H`` delivers that row.
    - ``w <= H``: the row was already at ``w`` before the stream began and
      cannot have moved since (a move gives a version above ``H``), so the
      keyset-paged stream, which passes every version, served it if it is
      active; and nothing else of that id can have been staged, since the id
      held no other version during the stream.

    So the staged entries plus an incremental sync from ``H`` equal the hub's
    register, except for ids deprecated at a version ``<= H`` and untouched
    since: a FullSync answer omits inactive entries, so the replica lacks
    them (it serves the same active blueprints, but its digest differs). A
    driver that wants the exact register, deprecated entries included, feeds
    this class an IncrementalSync answer from 0 instead: same rule, same
    proof with every row. A head read *after* the stream would be unsafe: an
    entry changed during the stream could get a version below it that the
    stream never served.
    """

    def __init__(self, *, limits: Limits = DEFAULT_LIMITS) -> None:
        self.limits = limits
        self.last_version = 0
        self.staged = 0
        self.reject: Reject | None = None

    @property
    def failed(self) -> bool:
        return self.reject is not None

    def feed(self, entries: Sequence[Entry]) -> tuple[tuple[Entry, ...], tuple[Reject, ...]]:
        """(entries to stage, rejects) for the next page of the stream.

        After the first reject the sync is failed: later pages stage nothing.
        """
        if self.reject is not None:
            return (), ()
        good: list[Entry] = []
        for entry in entries:
            reason = check_entry(entry, self.last_version, self.limits)
            if reason is not None:
                self.reject = (entry.blueprint_id, entry.version, reason)
                return (), (self.reject,)
            good.append(entry)
            self.last_version = entry.version
        self.staged += len(good)
        return tuple(good), ()

    def finish(self, hub_head_version: int, now_ms: int, *, hub_id: str) -> Checkpoint:
        """The checkpoint to commit with the staged entries.

        ``hub_head_version`` must have been read before the FullSync call
        started (see the class docstring). Raises :class:`FullSyncFailed`
        when a bad entry was seen.
        """
        if self.reject is not None:
            raise FullSyncFailed(self.reject)
        if hub_head_version < 0:
            raise ValueError("hub_head_version must not be negative")
        return Checkpoint(version=hub_head_version, hub_id=hub_id, synced_at_ms=now_ms)
