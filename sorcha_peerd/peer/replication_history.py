"""Failover: does a newly reached hub serve the register the replica follows?

A peer that fails over to a hub it did not last sync from may continue
incrementally from its checkpoint only if that hub serves the *same* register
(n0, n1, n2 on one MongoDB). A hub with its own store serves a different
register whose version numbers mean something else; continuing would mix two
histories silently. So the peer checks, by comparing history, never by
assuming from configuration.

The evidence: a version is used once in one register's history, and a change
carries a random ``publication_transaction_id`` and its publication time, so
the same version holding the same change on both sides means a shared history
(two registers seeded with the same default blueprints still differ in
those). The peer probes a few of its newest entries, newest first: for entry
``(v, id, ...)`` the driver asks ``IncrementalSync(last_known_version=v-1,
max_blueprints=1)``:

- the answer is at version ``v``: the same change -> SAME, another -> DIFFERENT;
- the answer is above ``v``: inconclusive (the id was changed again on the
  hub since, or the number is unused there): probe the next older entry;
- no answer, or one below ``v``: the hub contradicts its own head -> DIFFERENT.

Decided without asking: a hub whose head is below the checkpoint is another
register or one rolled back (DIFFERENT); an empty replica, or one with no
usable entry to probe, has nothing to compare (DIFFERENT, which for an empty
replica costs nothing extra). When every probe is inconclusive the answer is
DIFFERENT too. DIFFERENT means a full resync, always correct and merely
costly; a wrong SAME would corrupt the replica for good, so doubt goes to
DIFFERENT.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import TYPE_CHECKING

from sorcha_peerd.register import Entry

if TYPE_CHECKING:  # replication.py imports this module: no import cycle at run time
    from sorcha_peerd.peer.replication import Checkpoint

DEFAULT_MAX_PROBES = 5


class Verdict(enum.Enum):
    SAME = "same"  # continue incrementally from the checkpoint
    DIFFERENT = "different"  # full resync (stage, commit), then continue


def same_change(ours: Entry, theirs: Entry) -> bool:
    """Whether two entries record the same change (the fields that travel on the wire)."""
    return (
        ours.blueprint_id == theirs.blueprint_id
        and ours.version == theirs.version
        and ours.checksum == theirs.checksum
        and ours.published_at == theirs.published_at
        and ours.published_by == theirs.published_by
        and ours.publication_transaction_id == theirs.publication_transaction_id
        and ours.is_active == theirs.is_active
        and dict(ours.metadata) == dict(theirs.metadata)
    )


class HistoryCheck:
    """Sans-I/O probe sequence deciding SAME or DIFFERENT register.

    ``newest_entries``: entries of the replica, any order (the driver may pass
    the whole snapshot; the newest ``max_probes`` are used). Loop::

        while (after := check.next_probe()) is not None:
            check.answer(await incremental_sync(after, max_blueprints=1))
        verdict = check.verdict()
    """

    def __init__(
        self,
        checkpoint: Checkpoint,
        newest_entries: Sequence[Entry],
        hub_head: int,
        *,
        max_probes: int = DEFAULT_MAX_PROBES,
    ) -> None:
        if max_probes < 1:
            raise ValueError("max_probes must be at least 1")
        self._verdict: Verdict | None = None
        self.reason = ""
        self.probes_sent = 0
        ordered = sorted(newest_entries, key=lambda e: e.version, reverse=True)
        self._probes = [e for e in ordered if e.version >= 1][:max_probes]
        if hub_head < checkpoint.version:
            self._decide(
                Verdict.DIFFERENT,
                f"hub head {hub_head} is behind the checkpoint {checkpoint.version}",
            )
        elif not self._probes:
            self._decide(Verdict.DIFFERENT, "the replica holds nothing to compare")

    def _decide(self, verdict: Verdict, reason: str) -> Verdict:
        self._verdict, self.reason = verdict, reason
        self._probes = []
        return verdict

    def verdict(self) -> Verdict | None:
        """SAME or DIFFERENT once decided (``reason`` says why), None while probing."""
        return self._verdict

    def next_probe(self) -> int | None:
        """``last_known_version`` of the next probe (ask max_blueprints=1); None when decided."""
        if self._verdict is not None:
            return None
        return self._probes[0].version - 1

    def answer(self, entries: Sequence[Entry]) -> Verdict | None:
        """Take the hub's answer to the current probe; the verdict once there is one."""
        if self._verdict is not None:
            raise RuntimeError("the history check is already decided")
        ours = self._probes.pop(0)
        self.probes_sent += 1
        v = ours.version
        if not entries:
            return self._decide(Verdict.DIFFERENT, f"hub has nothing from version {v} on")
        theirs = entries[0]
        if theirs.version < v:
            return self._decide(
                Verdict.DIFFERENT, f"hub answered version {theirs.version} when asked after {v - 1}"
            )
        if theirs.version == v:
            if same_change(ours, theirs):
                return self._decide(Verdict.SAME, f"version {v} holds the same change")
            return self._decide(Verdict.DIFFERENT, f"version {v} holds another change")
        if not self._probes:
            return self._decide(Verdict.DIFFERENT, "every probe was inconclusive")
        return None
