"""Push latency: a publish on a hub -> the entry applied on N peers (p50/p99/max).

    .venv/bin/python bench/push_latency.py [--peers 1,50,200] [--publishes 30] [--spacing 0.15]

For every N and every mode, a fresh real hub daemon (``hubproc.Hub``: embedded
SQLite, heartbeats every 5 s so that heartbeats do not do the work, periodic
sync every 300 s) and a fresh **client process** (spawned) which runs, in one
trio loop:

``applied``   N in-process :class:`sorcha_peerd.peer.node.Peer` objects, each
              with its own ``SqliteRegisterStore`` file, its own gRPC
              connection, heartbeats and push subscription, exactly as
              ``daemon.run_peer`` builds them. A peer's replica is a
              ``Replica`` subclass that timestamps every swap of
              ``replica.view`` (after the durable commit) with its checkpoint
              version.
``notified``  (baseline) N plain connections that only hold a
              SubscribeToPushNotifications stream and timestamp each
              BlueprintNotification as it is decoded: no sync, no apply.

Once every observer is connected and in sync (and has seen a warm-up publish),
the client publishes ``--publishes`` blueprints through the hub's control
socket (``ControlClient``, ``io.sorcha.peerd.Publish``), one every
``--spacing`` seconds. The latency of (publish, observer) is from just before
the Publish call to the first timestamp of that observer at or beyond the
publish's version. Publisher and observers are in the same process, so both
ends are read from the same monotonic clock (``time.perf_counter``).

The ratio applied/notified is what the incremental sync (an IncrementalSync
call) and the durable commit (SQLite, synchronous=FULL) add to the push.
"""

from __future__ import annotations

import argparse
import bisect
import json
import math
import multiprocessing as mp
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
for _p in (str(REPO), str(BENCH)):  # run as a script from anywhere
    if _p not in sys.path:
        sys.path.insert(0, _p)

import hubproc  # noqa: E402  (bench/hubproc.py)

MODES = ("notified", "applied")
HUB_TIMING = {
    "heartbeat_interval": 5.0, "heartbeat_timeout": 5.0, "connect_timeout": 10.0,
    "backoff_initial": 0.1, "backoff_max": 1.0, "call_timeout": 10.0, "sync_interval": 300.0,
}
DOC_PAD = 1000  # bytes of padding in each published document (~1.1 KB documents)


# --------------------------------------------------------------------------- client process


def client_process(mode: str, n: int, port: int, control_socket: str, hub_pid: int,
                   publishes: int, spacing: float, work: str, conn: Connection) -> None:
    import trio

    try:
        result = trio.run(_client, mode, n, port, control_socket, hub_pid, publishes, spacing,
                          Path(work))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        import traceback

        result = {"error": "".join(traceback.format_exception(exc))}
    conn.send(result)


async def _client(mode: str, n: int, port: int, control_socket: str, hub_pid: int,
                  publishes: int, spacing: float, work: Path) -> dict[str, Any]:
    from contextlib import AsyncExitStack

    import trio

    from sorcha_peerd.control import ControlClient
    from sorcha_peerd.peer.link import HubEndpoint, LinkState
    from sorcha_peerd.peer.node import Peer
    from sorcha_peerd.peer.replica import Replica
    from sorcha_peerd.peer.session import PeerTiming
    from sorcha_peerd.register import DEFAULT_LIMITS
    from sorcha_peerd.store.sqlite import SqliteRegisterStore
    from sorcha_peerd.wire import messages as pb
    from sorcha_peerd.wire import services
    from sorcha_peerd.wire.client import open_channel

    clock = time.perf_counter
    # per observer: (time, version) whenever what it holds (or has been told) moves on
    seen: list[list[tuple[float, int]]] = [[] for _ in range(n)]
    peers: list[Peer] = []
    errors: list[str] = []

    class TimedReplica(Replica):
        """A replica that notes when its view changes, and to which version."""

        def __init__(self, store: SqliteRegisterStore, log: list[tuple[float, int]]) -> None:
            super().__init__(store)
            self._log = log

        async def _execute(self, command: Any) -> None:
            await super()._execute(command)
            self._log.append((clock(), self.view.checkpoint.version))

    async def subscriber(i: int, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        log = seen[i]
        request = pb.SubscriptionRequest(peer_id=f"bench-s{i:03d}",
                                         subscribe_time=time.time_ns() // 1_000_000)
        started = False
        try:
            async with open_channel("127.0.0.1", port, connect_timeout=10.0) as channel, \
                    channel.server_stream(services.SUBSCRIBE, request, timeout=None) as notes:
                task_status.started()
                started = True
                async for note in notes:
                    log.append((clock(), note.version))
        except Exception as exc:  # noqa: BLE001
            errors.append(f"subscriber {i}: {exc!r}")
            if not started:
                task_status.started()

    def level(i: int) -> int:
        return seen[i][-1][1] if seen[i] else 0

    def peer_ready(p: Peer) -> bool:
        return p.link.state is LinkState.CONNECTED and p.in_sync and p.state.push_up

    async def wait_until(what: str, check: Any, timeout: float) -> float:
        t0 = clock()
        while not check():
            if clock() - t0 > timeout:
                raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
            await trio.sleep(0.01)
        return clock() - t0

    async with AsyncExitStack() as stack, trio.open_nursery() as nursery:
        t_setup = clock()
        if mode == "notified":
            for i in range(n):
                await nursery.start(subscriber, i)
        else:
            timing = PeerTiming(
                heartbeat_interval=HUB_TIMING["heartbeat_interval"],
                heartbeat_timeout=HUB_TIMING["heartbeat_timeout"],
                missed_for_failover=2, sync_interval=HUB_TIMING["sync_interval"],
                call_timeout=HUB_TIMING["call_timeout"], page_size=500,
            )
            hub = HubEndpoint("h1", "127.0.0.1", port)
            for i in range(n):
                store = await stack.enter_async_context(
                    SqliteRegisterStore(work / f"peer-{i:03d}.sqlite3"))
                replica = TimedReplica(store, seen[i])
                await replica.load()
                peer = Peer(f"bench-p{i:03d}", [hub], replica, timing,
                            HUB_TIMING["connect_timeout"], DEFAULT_LIMITS,
                            backoff_initial=HUB_TIMING["backoff_initial"],
                            backoff_max=HUB_TIMING["backoff_max"])
                await nursery.start(peer.run)
                peers.append(peer)
            await wait_until(f"{n} peers connected, subscribed and in sync",
                             lambda: all(peer_ready(p) for p in peers), 120)
        setup_s = clock() - t_setup

        async with await ControlClient.connect(control_socket, timeout=30.0) as ctl:

            async def publish(blueprint_id: str) -> tuple[float, float, int]:
                doc = json.dumps({"id": blueprint_id, "name": blueprint_id, "pad": "x" * DOC_PAD})
                t0 = clock()
                reply = await ctl.call("io.sorcha.peerd.Publish", {
                    "id": blueprint_id, "document": doc, "publisher": "bench"})
                return t0, clock(), int(reply["blueprint"]["version"])

            # warm-up: every observer has seen one publish before the clock runs
            for attempt in range(50):
                _, _, v = await publish(f"warmup-{attempt}")
                try:
                    await wait_until("the warm-up publish everywhere",
                                     lambda v=v: all(level(i) >= v for i in range(n)), 5)
                    break
                except RuntimeError:
                    if errors:
                        raise RuntimeError("; ".join(errors[:5])) from None
            else:
                raise RuntimeError("the observers never all saw a warm-up publish")
            await trio.sleep(0.5)
            marks = [len(s) for s in seen]
            notes_before = sum(p.state.notifications for p in peers)
            syncs_before = sum(p.state.syncs for p in peers)

            cpu0 = resource.getrusage(resource.RUSAGE_SELF)
            hub_cpu0 = hubproc.proc_cpu(hub_pid)
            wall0 = clock()
            sent: list[tuple[float, float, int]] = []
            for k in range(publishes):
                await trio.sleep(max(0.0, wall0 + k * spacing - clock()))
                sent.append(await publish(f"bench-{k:04d}"))
            last = sent[-1][2]
            converged = True
            try:
                await wait_until("every observer at the last publish",
                                 lambda: all(level(i) >= last for i in range(n)), 60)
            except RuntimeError:
                converged = False
            wall = clock() - wall0
            cpu1 = resource.getrusage(resource.RUSAGE_SELF)
            hub_cpu = hubproc.proc_cpu(hub_pid) - hub_cpu0

        lat: list[float] = []
        missing = 0
        for t0, _t_reply, v in sent:
            for i in range(n):
                log = seen[i][marks[i]:]
                versions = [x[1] for x in log]
                j = bisect.bisect_left(versions, v)
                if j == len(log):
                    missing += 1
                else:
                    lat.append(log[j][0] - t0)
        behind = [i for i in range(n) if level(i) < last]
        extra: dict[str, Any] = {}
        if peers:
            extra = {
                "view_changes_per_peer": statistics.mean(len(seen[i]) - marks[i]
                                                         for i in range(n)),
                "syncs_per_peer": (sum(p.state.syncs for p in peers) - syncs_before) / n,
                "notifications_per_peer": (sum(p.state.notifications for p in peers)
                                           - notes_before) / n,
                "behind_detail": [
                    {"peer": peers[i].node_id, "version": level(i), "hub_head": last,
                     "status": peers[i].connection_status, "push": peers[i].state.push_up,
                     "last_sync_error": peers[i].state.last_sync_error}
                    for i in behind[:5]
                ],
            }
        nursery.cancel_scope.cancel()
    return {
        "latencies": lat,
        "missing": missing,
        "converged": converged,
        "behind": len(behind),
        "publish_rtt": [r - t for t, r, _ in sent],
        "setup_s": setup_s,
        "wall_s": wall,
        "client_cpu": (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime),
        "hub_cpu": hub_cpu,
        "errors": errors[:10],
        **extra,
    }


# --------------------------------------------------------------------------- orchestration


def pct(values: list[float], q: float) -> float:
    """The q-quantile (0..1) by nearest rank, as commonly reported for p50/p99."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(q * len(s)) - 1))
    return s[k]


def run_phase(ctx: Any, mode: str, n: int, args: argparse.Namespace, work: Path,
              tag: str) -> dict[str, Any]:
    phase_dir = work / tag
    hub = hubproc.Hub("h1", phase_dir / "hub", phase_dir / "logs", timing=HUB_TIMING)
    hub.start()
    try:
        parent_c, child_c = ctx.Pipe()
        (phase_dir / "peers").mkdir(parents=True, exist_ok=True)
        client = ctx.Process(target=client_process, args=(
            mode, n, hub.port, str(hub.control_socket), hub.pid, args.publishes, args.spacing,
            str(phase_dir / "peers"), child_c), daemon=True)
        client.start()
        if not parent_c.poll(600):
            client.terminate()
            raise RuntimeError(f"{tag}: the client gave no result")
        result: dict[str, Any] = parent_c.recv()
        client.join(30)
    finally:
        code = hub.stop()
        hub.close()
    result["hub_exit"] = code
    result["hub_log"] = str(hub.log_path)
    if "error" in result:
        raise RuntimeError(f"{tag} client failed:\n{result['error']}\nhub log {hub.log_path}")
    return result


def summary_line(tag: str, r: dict[str, Any]) -> str:
    lat = [x * 1000 for x in r["latencies"]]
    conv = "ok" if r["converged"] and not r["missing"] else (
        f"NOT CONVERGED: {r['behind']} behind, {r['missing']} (publish, observer) missing")
    line = (f"{tag:18s} n={len(lat):5d}  p50 {pct(lat, .5):7.1f} ms  p99 {pct(lat, .99):7.1f} ms"
            f"  max {max(lat) if lat else float('nan'):7.1f} ms"
            f"  publish rtt p50 {pct([x * 1000 for x in r['publish_rtt']], .5):5.1f} ms"
            f"  cpu client {r['client_cpu']:5.2f} s hub {r['hub_cpu']:5.2f} s"
            f"  over {r['wall_s']:4.1f} s  setup {r['setup_s']:4.1f} s  {conv}")
    if "syncs_per_peer" in r:
        line += (f"\n{'':18s} per peer: {r['notifications_per_peer']:.1f} notifications, "
                 f"{r['syncs_per_peer']:.1f} sync commits, "
                 f"{r['view_changes_per_peer']:.1f} view changes")
    if r.get("behind_detail"):
        line += f"\n{'':18s} behind: {r['behind_detail']}"
    if r.get("errors"):
        line += f"\n{'':18s} errors: {r['errors']}"
    return line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peers", default="1,50,200", help="comma-separated N (default 1,50,200)")
    parser.add_argument("--publishes", type=int, default=30, help="measured publishes per phase")
    parser.add_argument("--spacing", type=float, default=0.15, help="seconds between publishes")
    parser.add_argument("--rounds", type=int, default=1,
                        help="phases per (N, mode); the mode order alternates from round to round")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs)")
    args = parser.parse_args(argv)
    ns = [int(x) for x in args.peers.split(",") if x]
    modes = [m for m in args.modes.split(",") if m]
    for m in modes:
        if m not in MODES:
            parser.error(f"unknown mode {m!r}")

    work = Path(tempfile.mkdtemp(prefix="push-latency-"))
    print(f"# push_latency: N = {ns}, {args.publishes} publishes {args.spacing * 1000:.0f} ms "
          f"apart, {args.rounds} round(s); hub timing {HUB_TIMING}; nproc {os.cpu_count()}; "
          f"Python {platform.python_version()}; {platform.platform()}", flush=True)
    ctx = mp.get_context("spawn")
    results: dict[tuple[int, str], list[dict[str, Any]]] = {}
    failed = False
    t_start = time.monotonic()
    try:
        for n in ns:
            for rnd in range(args.rounds):
                order = modes if rnd % 2 == 0 else modes[::-1]
                for mode in order:
                    tag = f"{mode}-n{n}-r{rnd + 1}"
                    r = run_phase(ctx, mode, n, args, work, tag)
                    results.setdefault((n, mode), []).append(r)
                    print(summary_line(tag, r), flush=True)
                    failed |= not r["converged"] or bool(r["missing"])
    finally:
        if args.keep or failed:
            print(f"kept {work} (hub logs under */logs)")
        else:
            shutil.rmtree(work, ignore_errors=True)

    print(f"\n# total {time.monotonic() - t_start:.0f} s\n")
    print("| N | mode | pairs | p50 ms | p99 ms | max ms | ratio p50 applied/notified | "
          "ratio p99 | client CPU s | hub CPU s |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n in ns:
        agg: dict[str, tuple[float, float]] = {}
        for mode in modes:
            rs = results.get((n, mode), [])
            lat = [x * 1000 for r in rs for x in r["latencies"]]
            agg[mode] = (pct(lat, .5), pct(lat, .99))
            ratio50 = ratio99 = ""
            if mode == "applied" and "notified" in agg:
                ratio50 = f"{agg['applied'][0] / agg['notified'][0]:.2f}"
                ratio99 = f"{agg['applied'][1] / agg['notified'][1]:.2f}"
            print(f"| {n} | {mode} | {len(lat)} | {pct(lat, .5):.1f} | {pct(lat, .99):.1f} | "
                  f"{max(lat) if lat else float('nan'):.1f} | {ratio50} | {ratio99} | "
                  f"{statistics.median(r['client_cpu'] for r in rs):.2f} | "
                  f"{statistics.median(r['hub_cpu'] for r in rs):.2f} |")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
