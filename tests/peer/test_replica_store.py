"""The SQLite store as a peer's replica: full-sync staging, and crashes at any instant."""

from __future__ import annotations

import os
import signal
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import attrs
import pytest
import trio

from sorcha_peerd.peer.replication import META_KEYS, Checkpoint
from sorcha_peerd.register import Entry
from sorcha_peerd.store.base import StoreError
from sorcha_peerd.store.sqlite import SqliteRegisterStore
from tests.peer.entries import entry

ROOT = Path(__file__).resolve().parents[2]


async def contents(store: SqliteRegisterStore) -> dict[str, int]:
    return {e.blueprint_id: e.version for e in await store.read_since(0, 1_000_000)}


async def checkpoint(store: SqliteRegisterStore) -> Checkpoint:
    return Checkpoint.from_meta({k: await store.get_meta(k) for k in META_KEYS})


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteRegisterStore]:
    async with SqliteRegisterStore(tmp_path / "replica.sqlite3") as s:
        await s.apply_replica([entry("a", 1), entry("b", 2)], Checkpoint(2, "hub-1", 10).to_meta())
        yield s


async def test_stage_commit_replaces_replica_and_checkpoint_together(
    store: SqliteRegisterStore,
) -> None:
    await store.stage_begin()
    await store.stage_entries([entry("c", 5), entry("a", 7)])
    await store.stage_entries([entry("d", 9), entry("a", 8)])  # an id twice: newer wins
    await store.stage_entries([entry("a", 6)])  # older than the staged one: ignored
    await store.stage_commit(Checkpoint(9, "hub-2", 20).to_meta())
    assert await contents(store) == {"a": 8, "c": 5, "d": 9}
    assert await checkpoint(store) == Checkpoint(9, "hub-2", 20)
    assert await store.head_version() == 9
    assert await store.counts() == (3, 3)
    with pytest.raises(StoreError, match="stage_begin"):
        await store.stage_commit({})  # the staging ended with the commit


async def test_commit_may_lower_the_counter_for_another_register(
    store: SqliteRegisterStore,
) -> None:
    await store.apply_replica([entry("z", 50)], Checkpoint(50, "hub-1", 11).to_meta())
    await store.stage_begin()
    await store.stage_entries([entry("x", 3)])
    await store.stage_commit(Checkpoint(4, "hub-other", 30).to_meta())
    assert await store.head_version() == 3
    assert await contents(store) == {"x": 3}


async def test_empty_full_sync_empties_the_replica(store: SqliteRegisterStore) -> None:
    await store.stage_begin()
    await store.stage_commit(Checkpoint(7, "hub-2", 20).to_meta())  # everything deprecated
    assert await contents(store) == {}
    assert await store.head_version() == 0
    assert await checkpoint(store) == Checkpoint(7, "hub-2", 20)


async def test_staging_is_invisible_to_readers_until_commit(
    store: SqliteRegisterStore, tmp_path: Path
) -> None:
    await store.stage_begin()
    await store.stage_entries([entry("c", 5)])
    async with SqliteRegisterStore(tmp_path / "replica.sqlite3") as other:
        for s in (store, other):
            assert await contents(s) == {"a": 1, "b": 2}
            assert await s.get("c") is None
            assert await s.head_version() == 2
            assert await checkpoint(s) == Checkpoint(2, "hub-1", 10)
        await store.stage_commit(Checkpoint(5, "hub-2", 20).to_meta())
        assert await contents(other) == {"c": 5}


async def test_stage_abort_leaves_the_replica(store: SqliteRegisterStore) -> None:
    await store.stage_begin()
    await store.stage_entries([entry("c", 5)])
    await store.stage_abort()
    await store.stage_abort()  # idempotent
    assert await contents(store) == {"a": 1, "b": 2}
    assert await checkpoint(store) == Checkpoint(2, "hub-1", 10)
    with pytest.raises(StoreError, match="stage_begin"):
        await store.stage_entries([entry("d", 6)])
    with pytest.raises(StoreError, match="stage_begin"):
        await store.stage_commit(Checkpoint(6, "hub-2", 20).to_meta())
    assert await contents(store) == {"a": 1, "b": 2}


async def test_stage_entries_validates_before_any_write(store: SqliteRegisterStore) -> None:
    await store.stage_begin()
    bad = Entry("bad", 4, b"{}", 0, "hub", checksum="sha256:" + "0" * 64)
    with pytest.raises(ValueError, match="checksum"):
        await store.stage_entries([entry("c", 3), bad])
    await store.stage_commit(Checkpoint(4, "hub-2", 20).to_meta())
    assert await contents(store) == {}  # not even the good entry of the refused page


async def test_leftover_staging_of_a_crash_is_discarded(tmp_path: Path) -> None:
    path = tmp_path / "replica.sqlite3"
    async with SqliteRegisterStore(path) as s:
        await s.apply_replica([entry("a", 1)], Checkpoint(1, "hub-1", 10).to_meta())
        await s.stage_begin()
        await s.stage_entries([entry("left", 4)])
        # the process "dies" here: no commit, no abort
    async with SqliteRegisterStore(path) as s:
        assert await contents(s) == {"a": 1}
        assert await checkpoint(s) == Checkpoint(1, "hub-1", 10)
        await s.stage_begin()
        await s.stage_entries([entry("new", 6)])
        await s.stage_commit(Checkpoint(6, "hub-2", 20).to_meta())
        assert await contents(s) == {"new": 6}


async def test_apply_replica_writes_entries_and_checkpoint_or_nothing(
    store: SqliteRegisterStore,
) -> None:
    bad = attrs.evolve(entry("c", 3), checksum="sha256:" + "f" * 64)
    with pytest.raises(ValueError, match="checksum"):
        await store.apply_replica([entry("d", 4), bad], Checkpoint(4, "hub-1", 11).to_meta())
    assert await contents(store) == {"a": 1, "b": 2}
    assert await checkpoint(store) == Checkpoint(2, "hub-1", 10)
    await store.apply_replica([entry("a", 3), entry("b", 1)], Checkpoint(3, "hub-1", 12).to_meta())
    assert await contents(store) == {"a": 3, "b": 2}  # b at 1 is older: ignored
    assert await checkpoint(store) == Checkpoint(3, "hub-1", 12)
    assert await store.head_version() == 3


# --------------------------------------------------------------------------- SIGKILL


# A writer that loops forever: a full resync to a fresh register per round
# (staged page by page), then incremental apply_replica steps. Every commit
# carries a checkpoint from which the exact expected contents follow, so the
# parent can check, after killing it at an arbitrary instant, that the entries
# on disk are exactly the ones the checkpoint describes.
_WRITER = textwrap.dedent(
    """
    import sys, trio
    from pathlib import Path
    from sorcha_peerd.peer.replication import Checkpoint
    from sorcha_peerd.store.sqlite import SqliteRegisterStore
    from tests.peer.test_replica_store import expected_round, round_entries, step_entry

    async def main(path, first_round, ready):
        async with SqliteRegisterStore(Path(path)) as store:
            r = int(first_round)
            while True:
                await store.stage_begin()
                base = round_entries(r)
                for i in range(0, len(base), 7):
                    await store.stage_entries(base[i:i + 7])
                await store.stage_commit(Checkpoint(0, f"round-{r}", r).to_meta())
                Path(ready).touch()
                for j in range(1, 6):
                    await store.apply_replica(
                        [step_entry(r, j)], Checkpoint(j, f"round-{r}", r).to_meta()
                    )
                r += 1

    trio.run(main, *sys.argv[1:])
    """
)


def round_entries(r: int) -> list[Entry]:
    return [entry(f"r{r}-{k}", 1000 * r + k + 1) for k in range(40)]


def step_entry(r: int, j: int) -> Entry:
    # step 1 updates an id of the round, the others add ids
    blueprint_id = f"r{r}-0" if j == 1 else f"r{r}-step{j}"
    return entry(blueprint_id, 1000 * r + 500 + j)


def expected_round(r: int, j: int) -> dict[str, int]:
    want = {e.blueprint_id: e.version for e in round_entries(r)}
    for step in range(1, j + 1):
        e = step_entry(r, step)
        want[e.blueprint_id] = e.version
    return want


@pytest.mark.parametrize("delay", [0.0, 0.013, 0.037, 0.071, 0.15])
async def test_sigkill_at_any_instant_leaves_a_consistent_replica(
    tmp_path: Path, delay: float
) -> None:
    path = tmp_path / "replica.sqlite3"
    async with SqliteRegisterStore(path) as s:
        await s.apply_replica([entry("old", 1)], Checkpoint(1, "round-0", 0).to_meta())
    start_round = 1
    for attempt in range(3):
        ready = tmp_path / f"ready-{attempt}"
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-c", _WRITER, str(path), str(start_round), str(ready)],
            cwd=ROOT,
            env=env,
        )
        try:
            with trio.fail_after(30):
                while not ready.exists():
                    assert proc.poll() is None, "writer died on its own"
                    await trio.sleep(0.01)
            await trio.sleep(delay * (attempt + 1))
        finally:
            proc.send_signal(signal.SIGKILL)  # no clean-up of any kind
            with trio.CancelScope(shield=True):
                await proc.wait()
        async with SqliteRegisterStore(path) as s:
            cp = await checkpoint(s)
            r = int(cp.hub_id.removeprefix("round-"))
            assert cp.synced_at_ms == r
            assert await contents(s) == expected_round(r, cp.version)
            assert await s.head_version() == max(expected_round(r, cp.version).values())
        start_round = r + 1
