"""Failover time: a hub stops -> the peer is connected to the next hub.

    .venv/bin/python bench/failover_time.py [--runs 5] [--heartbeat 1.0] [--scenarios term,kill]

Two real hub daemons (``hubproc.Hub``) share one SQLite register (the same
``--state-dir``, their own ports, control sockets and logs), as in
``tests/peer/test_peer_daemon.py::test_failover_isolation_and_catching_up``.
One in-process :class:`sorcha_peerd.peer.node.Peer` (built as
``daemon.run_peer`` builds it, its replica in a SQLite file kept from run to
run, hubs ``[h1, h2]`` in that order) runs in this script's trio loop, with the
same ``[timing]`` as the hubs: heartbeat interval and timeout ``--heartbeat``,
2 misses for failover, connect timeout 1 s, backoff 0.1-0.5 s.

Each run starts a fresh ``Peer``, waits until it is connected to h1, in sync
and subscribed, waits a random fraction of a heartbeat interval (so the signal
lands at any phase of the heartbeat cycle), then signals h1:

``term``  SIGTERM: the hub drains (heartbeats are answered FAILOVER, push
          streams end) and exits;
``kill``  SIGKILL: a crash, the kernel closes the TCP connection;
``stop``  SIGSTOP: the hub freezes without closing anything; only the
          heartbeat deadlines can notice it (expected: about misses x timeout,
          plus up to one interval until the next beat).

The figure is the time from just before ``os.kill`` to the moment the peer's
link reports CONNECTED to h2 (``Peer.link``, polled every ``--poll`` seconds in
the same loop, and cross-checked with the timestamp of the peer's own
"connected to hub h2" log record), plus the time until it is in sync again.
Between runs h1 is restarted (SIGCONT + SIGKILL first for ``stop``). The peer's
log records of each run are kept with their times relative to the signal, and
printed for the slowest run of each scenario.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import random
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
for _p in (str(REPO), str(BENCH)):  # run as a script from anywhere
    if _p not in sys.path:
        sys.path.insert(0, _p)

import hubproc  # noqa: E402  (bench/hubproc.py)

SCENARIOS = {"term": signal.SIGTERM, "kill": signal.SIGKILL, "stop": signal.SIGSTOP}
MISSES = 2


class Recorder(logging.Handler):
    """Keeps the peer's log records with the monotonic time they were emitted."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[tuple[float, str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append((time.monotonic(), record.name, record.getMessage()))

    def take(self) -> list[tuple[float, str, str]]:
        out, self.records = self.records, []
        return out


def timing(hb: float) -> dict[str, float | int]:
    return {
        "heartbeat_interval": hb, "heartbeat_timeout": hb,
        "missed_heartbeats_for_failover": MISSES, "connect_timeout": 1.0,
        "backoff_initial": 0.1, "backoff_max": 0.5, "call_timeout": 5.0,
        "sync_interval": 300.0,
    }


async def one_run(scenario: str, h1: hubproc.Hub, h2: hubproc.Hub, replica_path: Path,
                  t: dict[str, Any], poll: float, rng: random.Random,
                  recorder: Recorder) -> dict[str, Any]:
    import trio

    from sorcha_peerd.peer.link import HubEndpoint, LinkState
    from sorcha_peerd.peer.node import Peer
    from sorcha_peerd.peer.replica import Replica
    from sorcha_peerd.peer.session import PeerTiming
    from sorcha_peerd.register import DEFAULT_LIMITS
    from sorcha_peerd.store.sqlite import SqliteRegisterStore

    hubs = [HubEndpoint("h1", "127.0.0.1", h1.port), HubEndpoint("h2", "127.0.0.1", h2.port)]
    ptiming = PeerTiming(
        heartbeat_interval=t["heartbeat_interval"], heartbeat_timeout=t["heartbeat_timeout"],
        missed_for_failover=MISSES, sync_interval=t["sync_interval"],
        call_timeout=t["call_timeout"], page_size=500,
    )

    def on(p: Peer, hub_id: str) -> bool:
        cur = p.link.current
        return p.link.state is LinkState.CONNECTED and cur is not None and cur.id == hub_id

    async def wait_for(what: str, check: Any, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{scenario}: timed out after {timeout} s waiting for {what}")
            await trio.sleep(poll)
        return time.monotonic()

    recorder.take()
    async with SqliteRegisterStore(replica_path) as store:
        replica = Replica(store)
        await replica.load()
        peer = Peer("bench-peer", hubs, replica, ptiming, t["connect_timeout"], DEFAULT_LIMITS,
                    backoff_initial=t["backoff_initial"], backoff_max=t["backoff_max"])
        async with trio.open_nursery() as nursery:
            await nursery.start(peer.run)
            await wait_for("connected to h1, in sync, subscribed",
                           lambda: on(peer, "h1") and peer.in_sync and peer.state.push_up, 20)
            await trio.sleep(0.2 + rng.random() * t["heartbeat_interval"])
            failovers0 = peer.link.failovers
            t_sig = time.monotonic()
            h1.send(SCENARIOS[scenario])
            error = ""
            t_conn = t_sync = float("nan")
            try:
                t_conn = await wait_for("connected to h2", lambda: on(peer, "h2"), 30)
                t_sync = await wait_for("in sync on h2", lambda: on(peer, "h2") and peer.in_sync,
                                        30)
            except RuntimeError as exc:
                error = str(exc)
            failovers = peer.link.failovers - failovers0
            h1_exit_after = float("nan")
            if scenario != "stop":  # when did h1 itself exit, relative to the signal
                proc = h1.proc
                assert proc is not None
                with trio.move_on_after(30):
                    while proc.poll() is None:  # noqa: ASYNC110 - a subprocess has no event
                        await trio.sleep(poll)
                    h1_exit_after = time.monotonic() - t_sig
            await peer.shutdown()
            nursery.cancel_scope.cancel()
    log = [(ts - t_sig, name, msg) for ts, name, msg in recorder.take()]
    logged_conn = next((dt for dt, _, msg in log
                        if dt > 0 and msg.startswith("connected to hub h2")), float("nan"))
    return {"scenario": scenario, "connected": t_conn - t_sig, "in_sync": t_sync - t_sig,
            "logged_connected": logged_conn, "failovers": failovers, "error": error, "log": log,
            "h1_exit_after": h1_exit_after}


async def run_all(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    import trio

    t = timing(args.heartbeat)
    register = work / "shared"
    logs = work / "logs"
    h1 = hubproc.Hub("h1", register, logs, timing=t, port=hubproc.free_port())
    h2 = hubproc.Hub("h2", register, logs, timing=t, port=hubproc.free_port())
    await trio.to_thread.run_sync(h1.start)
    await trio.to_thread.run_sync(h2.start)
    rng = random.Random(args.seed)
    recorder = Recorder()
    root = logging.getLogger("sorcha_peerd")
    root.addHandler(recorder)
    root.setLevel(logging.DEBUG)
    results: list[dict[str, Any]] = []
    scenarios = [s for s in args.scenarios.split(",") if s]
    try:
        for run in range(args.runs):
            for scenario in scenarios:  # interleaved, so machine noise spreads over all
                r = await one_run(scenario, h1, h2, work / "replica.sqlite3", t, args.poll, rng,
                                  recorder)
                r["run"] = run + 1
                # h1 back, for the next run (a stopped one is woken and killed first)
                sig = signal.SIGKILL if scenario == "stop" else signal.SIGTERM
                code = await trio.to_thread.run_sync(h1.stop, sig)
                r["h1_exit"] = code
                r["h1_log"] = str(h1.log_path)
                await trio.to_thread.run_sync(h1.start)
                results.append(r)
                flag = f"  ERROR {r['error']}" if r["error"] else ""
                print(f"run {run + 1} {scenario:4s}  connected to h2 after {r['connected']:6.3f} s"
                      f" (log {r['logged_connected']:6.3f} s)  in sync {r['in_sync']:6.3f} s"
                      f"  = {r['connected'] / args.heartbeat:5.2f} x interval"
                      f"  failovers {r['failovers']}  h1 exit {code}"
                      f" after {r['h1_exit_after']:.3f} s{flag}", flush=True)
    finally:
        root.removeHandler(recorder)
        h1.close()
        h2.close()
    return results


def main(argv: list[str] | None = None) -> int:
    import trio

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="runs of every scenario")
    parser.add_argument("--heartbeat", type=float, default=1.0,
                        help="heartbeat interval = timeout, seconds (hubs and peer)")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--poll", type=float, default=0.005, help="status poll interval, s")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--show-log", action="store_true",
                        help="print the peer's log of every run, not only the slowest")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    for s in args.scenarios.split(","):
        if s and s not in SCENARIOS:
            parser.error(f"unknown scenario {s!r}")

    work = Path(tempfile.mkdtemp(prefix="failover-time-"))
    print(f"# failover_time: {args.runs} runs x {args.scenarios}; timing {timing(args.heartbeat)};"
          f" poll {args.poll * 1000:.0f} ms; nproc {os.cpu_count()}; Python "
          f"{platform.python_version()}; {platform.platform()}", flush=True)
    t_start = time.monotonic()
    results: list[dict[str, Any]] = []
    try:
        results = trio.run(run_all, args, work)
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\n# total {time.monotonic() - t_start:.0f} s\n")
    hb = args.heartbeat
    print("| scenario | runs | connected to h2: median s | min-max s | median / interval | "
          "in sync: median s | hub exit after s (median) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    bad = False
    for s in [x for x in args.scenarios.split(",") if x]:
        rs = [r for r in results if r["scenario"] == s]
        ok = [r for r in rs if not r["error"]]
        bad |= len(ok) != len(rs)
        if not ok:
            print(f"| {s} | 0 of {len(rs)} | | | | | |")
            continue
        c = sorted(r["connected"] for r in ok)
        med = statistics.median(c)
        exit_after = (f"{statistics.median(r['h1_exit_after'] for r in ok):.3f}"
                      if s != "stop" else "")
        print(f"| {s} | {len(ok)} of {len(rs)} | {med:.3f} | {c[0]:.3f}-{c[-1]:.3f} | "
              f"{med / hb:.2f} | {statistics.median(r['in_sync'] for r in ok):.3f} | "
              f"{exit_after} |")
    for s in [x for x in args.scenarios.split(",") if x]:
        rs = [r for r in results if r["scenario"] == s]
        if not rs:
            continue
        shown = rs if args.show_log else [max(rs, key=lambda r: (bool(r["error"]),
                                                                  r["connected"]))]
        for r in shown:
            print(f"\n## peer log, {s} run {r['run']} (connected to h2 after "
                  f"{r['connected']:.3f} s); times relative to the signal")
            for dt, name, msg in r["log"]:
                if dt > -0.05:
                    print(f"  {dt:+8.3f} s  {name}: {msg}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
