"""The sans-I/O replication core: incremental pages, full syncs, history checks, retries."""

from __future__ import annotations

import attrs
import pytest

from sorcha_peerd.peer.replication import (
    Checkpoint,
    FullSync,
    FullSyncFailed,
    HistoryCheck,
    RetryBudget,
    Verdict,
    accept_page,
)
from sorcha_peerd.register import Entry, Limits
from tests.peer.entries import entry


def corrupt(e: Entry) -> Entry:
    return attrs.evolve(e, document=e.document + b" ")


CP = Checkpoint(version=10, hub_id="n0", synced_at_ms=5)


# --------------------------------------------------------------------------- checkpoint


def test_checkpoint_meta_round_trip() -> None:
    meta = CP.to_meta()
    assert meta == {
        "replica.checkpoint.version": "10",
        "replica.checkpoint.hub_id": "n0",
        "replica.checkpoint.synced_at_ms": "5",
    }
    assert Checkpoint.from_meta(meta) == CP


@pytest.mark.parametrize(
    "change",
    [
        {"replica.checkpoint.version": None},
        {"replica.checkpoint.hub_id": None},
        {"replica.checkpoint.version": "ten"},
        {"replica.checkpoint.version": "-1"},
        {"replica.checkpoint.synced_at_ms": "1.5"},
        {"replica.checkpoint.version": ""},
    ],
)
def test_malformed_checkpoint_meta_means_full_resync(change: dict[str, str | None]) -> None:
    meta: dict[str, str | None] = {**CP.to_meta(), **change}
    assert Checkpoint.from_meta(meta) == Checkpoint()


def test_missing_checkpoint_meta_is_the_zero_checkpoint() -> None:
    assert Checkpoint.from_meta({}) == Checkpoint()


# --------------------------------------------------------------------------- incremental


def test_good_page_moves_checkpoint_to_last_version() -> None:
    page = [entry("a", 11), entry("b", 14), entry("a", 15, active=False)]
    r = accept_page(CP, page, asked=None, hub_id="n1", now_ms=99)
    assert r.accepted == tuple(page)
    assert r.checkpoint == Checkpoint(15, "n1", 99)
    assert r.rejected == ()
    assert r.complete


def test_full_page_asks_again_short_page_completes() -> None:
    page = [entry("a", 11), entry("b", 12)]
    full = accept_page(CP, page, asked=2, hub_id="n0", now_ms=1)
    assert not full.complete and full.checkpoint.version == 12
    short = accept_page(full.checkpoint, [entry("c", 20)], asked=2, hub_id="n0", now_ms=2)
    assert short.complete and short.checkpoint.version == 20


def test_empty_answer_completes_without_moving() -> None:
    for asked in (None, 1, 500):
        r = accept_page(CP, [], asked=asked, hub_id="n0", now_ms=7)
        assert r.accepted == () and r.rejected == () and r.complete
        assert r.checkpoint == Checkpoint(10, "n0", 7)


def test_asked_must_be_positive() -> None:
    with pytest.raises(ValueError, match="asked"):
        accept_page(CP, [], asked=0, hub_id="n0", now_ms=0)


def test_bad_checksum_in_the_middle_keeps_the_prefix_and_stops_before_it() -> None:
    page = [entry("a", 11), entry("b", 12), corrupt(entry("c", 13)), entry("d", 14)]
    r = accept_page(CP, page, asked=None, hub_id="n0", now_ms=1)
    assert r.accepted == tuple(page[:2])
    assert r.checkpoint.version == 12  # never past the bad entry
    assert len(r.rejected) == 1
    assert r.rejected[0][:2] == ("c", 13)
    assert "checksum" in r.rejected[0][2]
    assert not r.complete  # refetch from 12 even though the answer was "short"
    # the refetch heals a transient corruption
    again = accept_page(r.checkpoint, [entry("c", 13), entry("d", 14)], asked=None,
                        hub_id="n0", now_ms=2)  # fmt: skip
    assert again.accepted == (entry("c", 13), entry("d", 14)) and again.complete
    assert again.checkpoint.version == 14


def test_bad_first_entry_accepts_nothing() -> None:
    r = accept_page(CP, [corrupt(entry("a", 11)), entry("b", 12)], asked=5, hub_id="n0",
                    now_ms=1)  # fmt: skip
    assert r.accepted == () and r.checkpoint.version == 10 and not r.complete


@pytest.mark.parametrize(
    ("versions", "accepted"),
    [
        ([10, 11], 0),  # at the checkpoint: stale
        ([3], 0),  # below it
        ([11, 13, 12], 2),  # out of order
        ([11, 11], 1),  # repeated
    ],
)
def test_stale_and_out_of_order_entries_are_bad(versions: list[int], accepted: int) -> None:
    page = [entry(f"id{i}", v) for i, v in enumerate(versions)]
    r = accept_page(CP, page, asked=None, hub_id="n0", now_ms=1)
    assert r.accepted == tuple(page[:accepted])
    assert r.rejected[0][1] == versions[accepted]
    assert "does not follow" in r.rejected[0][2]
    assert not r.complete


def test_limits_are_checked() -> None:
    big = entry("a", 11)
    r = accept_page(CP, [big], asked=None, hub_id="n0", now_ms=1,
                    limits=Limits(max_document_bytes=5))  # fmt: skip
    assert r.accepted == () and "blueprint_document" in r.rejected[0][2]
    bad_id = attrs.evolve(entry("a", 11), blueprint_id="no spaces")
    assert accept_page(CP, [bad_id], asked=None, hub_id="n0", now_ms=1).rejected


# --------------------------------------------------------------------------- retries


def test_retry_budget_counts_failures_at_the_same_place() -> None:
    budget = RetryBudget(max_attempts=3)
    bad = accept_page(CP, [corrupt(entry("a", 11))], asked=None, hub_id="n0", now_ms=1)
    budget = budget.after(bad).after(bad)
    assert budget.failures == 2 and not budget.exhausted
    # progress to a later stuck point starts counting again
    later = accept_page(CP, [entry("a", 11), corrupt(entry("b", 12))], asked=None, hub_id="n0",
                        now_ms=1)  # fmt: skip
    budget = budget.after(later)
    assert budget.failures == 1 and budget.stuck_at == 11
    budget = budget.after(later).after(later)
    assert budget.exhausted
    good = accept_page(CP, [entry("a", 11)], asked=None, hub_id="n0", now_ms=1)
    assert budget.after(good) == RetryBudget(max_attempts=3)


# --------------------------------------------------------------------------- full sync


def test_full_sync_stages_pages_and_checkpoints_at_the_head_read_before() -> None:
    sync = FullSync()
    assert sync.feed([entry("a", 2), entry("b", 5)]) == ((entry("a", 2), entry("b", 5)), ())
    # an entry updated during the stream may come again, at a version above the head
    assert sync.feed([entry("a", 12)]) == ((entry("a", 12),), ())
    assert sync.feed([]) == ((), ())
    cp = sync.finish(9, 77, hub_id="n2")
    assert cp == Checkpoint(9, "n2", 77)  # not 12: versions 6..9 may hold unseen changes
    assert sync.staged == 3


def test_full_sync_with_a_bad_entry_is_never_committed() -> None:
    sync = FullSync()
    sync.feed([entry("a", 2)])
    good, rejects = sync.feed([entry("b", 3), corrupt(entry("c", 4)), entry("d", 5)])
    assert good == () and rejects[0][:2] == ("c", 4)
    assert sync.failed
    assert sync.feed([entry("e", 6)]) == ((), ())  # nothing more is staged
    with pytest.raises(FullSyncFailed, match="'c' at version 4"):
        sync.finish(6, 1, hub_id="n0")


def test_full_sync_refuses_out_of_order_versions() -> None:
    sync = FullSync()
    sync.feed([entry("a", 4)])
    assert sync.feed([entry("b", 4)])[1]
    with pytest.raises(FullSyncFailed):
        sync.finish(4, 1, hub_id="n0")


def test_empty_full_sync() -> None:
    assert FullSync().finish(0, 3, hub_id="n0") == Checkpoint(0, "n0", 3)


# --------------------------------------------------------------------------- history check


def run_check(check: HistoryCheck, hub: list[Entry]) -> tuple[Verdict | None, list[int]]:
    """Drive a check against a hub register given as its rows (IncrementalSync(v, 1))."""
    asked = []
    while (after := check.next_probe()) is not None:
        asked.append(after)
        answer = sorted((e for e in hub if e.version > after), key=lambda e: e.version)[:1]
        check.answer(answer)
    return check.verdict(), asked


OURS = [entry("a", 1), entry("b", 2), entry("c", 3), entry("d", 4)]


def test_same_register_is_recognised_from_the_newest_entry() -> None:
    hub = [*OURS, entry("e", 5)]
    check = HistoryCheck(Checkpoint(4, "n0", 1), OURS, hub_head=5)
    assert run_check(check, hub) == (Verdict.SAME, [3])
    assert "same change" in check.reason


def test_different_register_with_same_ids_and_documents_differs_by_transaction() -> None:
    # seeded with the same blueprints at the same versions: still another history
    hub = [entry(e.blueprint_id, e.version, tx=f"other{e.version}") for e in OURS]
    check = HistoryCheck(Checkpoint(4, "n0", 1), OURS, hub_head=4)
    assert run_check(check, hub) == (Verdict.DIFFERENT, [3])


def test_superseded_probes_fall_back_to_older_entries() -> None:
    # on the hub, d (4) and c (3) were changed again since; b at 2 still matches
    hub = [entry("a", 1), entry("b", 2), entry("d", 7), entry("c", 8)]
    check = HistoryCheck(Checkpoint(4, "n0", 1), OURS, hub_head=8)
    assert run_check(check, hub) == (Verdict.SAME, [3, 2, 1])
    assert check.probes_sent == 3


def test_all_probes_inconclusive_means_different() -> None:
    hub = [entry("x", 10), entry("y", 11)]
    check = HistoryCheck(Checkpoint(4, "n0", 1), OURS, hub_head=11, max_probes=2)
    assert run_check(check, hub) == (Verdict.DIFFERENT, [3, 2])
    assert "inconclusive" in check.reason


def test_hub_behind_the_checkpoint_is_different_without_asking() -> None:
    check = HistoryCheck(Checkpoint(4, "n0", 1), OURS, hub_head=3)
    assert check.verdict() is Verdict.DIFFERENT and check.next_probe() is None
    assert "behind" in check.reason


def test_empty_replica_needs_a_full_sync() -> None:
    check = HistoryCheck(Checkpoint(4, "n0", 1), [], hub_head=9)
    assert check.verdict() is Verdict.DIFFERENT and check.next_probe() is None


def test_hub_answering_nothing_or_below_is_different() -> None:
    check = HistoryCheck(Checkpoint(4, "n0", 1), OURS, hub_head=9)
    assert check.answer([]) is Verdict.DIFFERENT
    check = HistoryCheck(Checkpoint(4, "n0", 1), OURS, hub_head=9)
    assert check.answer([entry("d", 2)]) is Verdict.DIFFERENT
    with pytest.raises(RuntimeError):
        check.answer([])


def test_probes_take_the_newest_entries_whatever_the_order_given() -> None:
    check = HistoryCheck(Checkpoint(4, "n0", 1), list(reversed(OURS)), hub_head=4,
                         max_probes=2)  # fmt: skip
    assert check.next_probe() == 3
    assert check.answer([entry("d", 6)]) is None
    assert check.next_probe() == 2


# --------------------------------------------------------------------------- session decisions


def test_plan_first_sync() -> None:
    from sorcha_peerd.peer.replication import FirstSync, plan_first_sync

    synced = Checkpoint(10, "h1", 5)
    assert plan_first_sync(Checkpoint(), 0, "h1", 10) is FirstSync.FULL  # empty replica
    assert plan_first_sync(synced, 0, "h1", 10) is FirstSync.FULL  # nothing held
    assert plan_first_sync(synced, 3, "h1", 10) is FirstSync.INCREMENTAL
    assert plan_first_sync(synced, 3, "h1", 12) is FirstSync.INCREMENTAL
    assert plan_first_sync(synced, 3, "h1", 9) is FirstSync.FULL  # same hub, wiped or restored
    assert plan_first_sync(synced, 3, "h2", 10) is FirstSync.CHECK_HISTORY
    assert plan_first_sync(synced, 3, "h2", 4) is FirstSync.FULL


def test_commit_only_when_something_changed() -> None:
    from sorcha_peerd.peer.replication import commit_needed

    before = Checkpoint(2, "h1", 5)
    idle = accept_page(before, [], asked=10, hub_id="h1", now_ms=99)
    assert not commit_needed(before, idle)  # only the time would change
    other_hub = accept_page(before, [], asked=10, hub_id="h2", now_ms=99)
    assert commit_needed(before, other_hub)
    new = accept_page(before, [entry("a", 3)], asked=10, hub_id="h1", now_ms=99)
    assert commit_needed(before, new)


def test_sync_period_falls_back_to_heartbeats_while_push_is_down() -> None:
    from sorcha_peerd.peer.replication import sync_period

    assert sync_period(300.0, 30.0, push_up=True) == 300.0
    assert sync_period(300.0, 30.0, push_up=False) == 30.0
    assert sync_period(10.0, 30.0, push_up=False) == 10.0
