"""The peer's replica: one owner task over the local store and the published snapshot.

Every change to the replica — a page of an incremental sync, the pages of a
full sync being staged, the commit of a staged full sync — is sent over a
memory channel to :meth:`Replica.run`, the only task that writes the store.
It commits durably first (entries and checkpoint in one transaction), then
swaps :attr:`Replica.view`, a single immutable value that every reader
(control socket, status, heartbeats) takes as is: readers never lock and never
see half an update, and a crash at any instant leaves a replica that is a
prefix of the hub's history with the checkpoint that describes it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import aclosing
from typing import Any

import attrs
import trio

from sorcha_peerd.peer.replication import Checkpoint
from sorcha_peerd.register import Entry, Snapshot
from sorcha_peerd.store.sqlite import SqliteRegisterStore

log = logging.getLogger(__name__)


@attrs.frozen
class ReplicaView:
    """What readers see: the register as held, and how far it goes."""

    snapshot: Snapshot
    checkpoint: Checkpoint


@attrs.define(eq=False)
class _Command:
    kind: str
    entries: Sequence[Entry] = ()
    checkpoint: Checkpoint | None = None
    done: trio.Event = attrs.field(factory=trio.Event)
    error: BaseException | None = None


class Replica:
    """The replica's owner. Build, ``await load()``, then run :meth:`run` in a nursery."""

    def __init__(self, store: SqliteRegisterStore, *, page_size: int = 500) -> None:
        self._store = store
        self._page_size = page_size
        self.view = ReplicaView(Snapshot(), Checkpoint())
        self._send, self._receive = trio.open_memory_channel[_Command](0)

    async def load(self) -> ReplicaView:
        """Read the durable replica and its checkpoint (at start, before serving)."""
        self.view = ReplicaView(await self._read_snapshot(), await self._read_checkpoint())
        return self.view

    async def _read_checkpoint(self) -> Checkpoint:
        meta = {key: await self._store.get_meta(key) for key in Checkpoint().to_meta()}
        return Checkpoint.from_meta(meta)

    async def _read_snapshot(self) -> Snapshot:
        snapshot = Snapshot()
        pages = self._store.iter_since(0, page_size=self._page_size)
        async with aclosing(pages):
            async for page in pages:
                snapshot = snapshot.apply(page)
        return snapshot

    # ------------------------------------------------------------------ the owner

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        async for command in self._receive:
            try:
                await self._execute(command)
            except Exception as exc:  # noqa: BLE001 - handed back to the caller, who owns the policy
                command.error = exc
            finally:
                command.done.set()

    async def _execute(self, command: _Command) -> None:
        if command.kind == "commit":
            assert command.checkpoint is not None
            await self._store.apply_replica(command.entries, command.checkpoint.to_meta())
            snapshot = self.view.snapshot.apply(command.entries)
            self.view = ReplicaView(snapshot, command.checkpoint)
        elif command.kind == "stage_begin":
            await self._store.stage_begin()
        elif command.kind == "stage":
            await self._store.stage_entries(command.entries)
        elif command.kind == "stage_commit":
            assert command.checkpoint is not None
            await self._store.stage_commit(command.checkpoint.to_meta())
            self.view = ReplicaView(await self._read_snapshot(), command.checkpoint)
        elif command.kind == "stage_abort":
            await self._store.stage_abort()
        else:  # pragma: no cover - a programming error
            raise AssertionError(command.kind)

    async def _call(self, kind: str, **kw: Any) -> ReplicaView:
        command = _Command(kind, **kw)
        await self._send.send(command)
        await command.done.wait()
        if command.error is not None:
            raise command.error
        return self.view

    # ------------------------------------------------------------------ what syncs ask for

    async def commit(self, entries: Sequence[Entry], checkpoint: Checkpoint) -> ReplicaView:
        """Entries and checkpoint, durable in one transaction, then visible."""
        return await self._call("commit", entries=tuple(entries), checkpoint=checkpoint)

    async def stage_begin(self) -> None:
        await self._call("stage_begin")

    async def stage(self, entries: Sequence[Entry]) -> None:
        await self._call("stage", entries=tuple(entries))

    async def stage_commit(self, checkpoint: Checkpoint) -> ReplicaView:
        """Replace the whole replica with the staged one (a completed full sync)."""
        return await self._call("stage_commit", checkpoint=checkpoint)

    async def stage_abort(self) -> None:
        await self._call("stage_abort")
