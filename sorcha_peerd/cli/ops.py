"""The operator commands of ``sorcha-peerctl``: health, peers, metrics, version, reload.

``health`` follows the Nagios plugin convention so any monitoring system can
run it: exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN, and one line of output
with performance data after a ``|``. A daemon that cannot be reached is
CRITICAL; a hub that drains, or a peer that is connecting, behind or isolated
(still serving its replica) is a WARNING. The verdict is a plain function of
the status document (:func:`health_verdict`), tested without a daemon.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from sorcha_peerd import __version__
from sorcha_peerd.control.client import ControlClient
from sorcha_peerd.control.protocol import INTERFACE, SERVICE_INTERFACE

NAGIOS_OK, NAGIOS_WARNING, NAGIOS_CRITICAL, NAGIOS_UNKNOWN = 0, 1, 2, 3
_NAGIOS_WORD = {0: "OK", 1: "WARNING", 2: "CRITICAL", 3: "UNKNOWN"}


@attrs.frozen
class Verdict:
    code: int
    summary: str
    perfdata: Mapping[str, int | float]

    def line(self) -> str:
        perf = " ".join(f"{k}={v}" for k, v in self.perfdata.items())
        text = f"SORCHA-PEERD {_NAGIOS_WORD[self.code]} - {self.summary}"
        return f"{text} | {perf}" if perf else text


def health_verdict(status: Mapping[str, Any]) -> Verdict:
    """The Nagios verdict for a daemon's status document."""
    role = status.get("role")
    node = status.get("node_id", "?")
    perf: dict[str, int | float] = {}
    for key in (
        "version",
        "blueprints",
        "peers",
        "missed_heartbeats",
        "hub_version",
        "rejected_entries",
    ):
        value = status.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            perf[key] = value
    state = status.get("status")
    if role == "hub":
        if state == "serving":
            return Verdict(NAGIOS_OK, f"hub {node} serving version {status.get('version')}", perf)
        return Verdict(NAGIOS_WARNING, f"hub {node} is {state}", perf)
    if role == "peer":
        hub = status.get("hub")
        if state == "connected" and status.get("in_sync") is True:
            return Verdict(
                NAGIOS_OK,
                f"peer {node} connected to {hub}, version {status.get('version')} in sync",
                perf,
            )
        if state == "connected":
            return Verdict(
                NAGIOS_WARNING,
                f"peer {node} connected to {hub} but behind "
                f"(version {status.get('version')} of {status.get('hub_version')})",
                perf,
            )
        return Verdict(
            NAGIOS_WARNING,
            f"peer {node} is {state}, serving its replica at version {status.get('version')}",
            perf,
        )
    return Verdict(NAGIOS_UNKNOWN, f"unexpected status document (role {role!r})", perf)


async def cmd_health(client: ControlClient, *, as_json: bool) -> int:
    status = (await client.call(f"{INTERFACE}.Status"))["status"]
    verdict = health_verdict(status)
    if as_json:
        print(
            json.dumps(
                {
                    "code": verdict.code,
                    "state": _NAGIOS_WORD[verdict.code],
                    "summary": verdict.summary,
                    "perfdata": dict(verdict.perfdata),
                }
            )
        )
    else:
        print(verdict.line())
    return verdict.code


def _table(rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


async def cmd_peers(client: ControlClient, *, as_json: bool) -> int:
    """A hub's connected peers; a peer's hubs (its active peers list)."""
    status = (await client.call(f"{INTERFACE}.Status"))["status"]
    if status.get("role") == "hub":
        peers = list(status.get("connected_peers", []))
        columns: tuple[str, ...] = (
            "peer_id",
            "address",
            "state",
            "last_sync_version",
            "last_heartbeat",
        )
    else:
        peers = list(status.get("active_peers", []))
        columns = ("hub", "address", "connected", "attempts", "failures", "last_failure")
    if as_json:
        print(json.dumps(peers, indent=2))
        return 0
    if not peers:
        print("no peers" if status.get("role") == "hub" else "no hubs")
        return 0
    _table([[c.upper() for c in columns]] + [[_cell(p.get(c)) for c in columns] for p in peers])
    return 0


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


async def cmd_metrics(client: ControlClient, *, as_json: bool) -> int:
    metrics = (await client.call(f"{INTERFACE}.Metrics"))["metrics"]
    if as_json:
        print(json.dumps(metrics, indent=2, sort_keys=True))
        return 0
    from sorcha_peerd.telemetry import format_metrics  # the SDK only for this command

    for line in format_metrics(metrics):
        print(line)
    return 0


async def cmd_version(client: ControlClient, *, as_json: bool) -> int:
    info = await client.call(f"{SERVICE_INTERFACE}.GetInfo")
    if as_json:
        print(json.dumps({"sorcha-peerctl": __version__, "daemon": info}))
    else:
        print(f"sorcha-peerctl {__version__}")
        print(f"daemon: {info.get('product')} {info.get('version')}")
    return 0


async def cmd_reload(client: ControlClient, *, check: bool, as_json: bool) -> int:
    reply = await client.call(f"{INTERFACE}.Reload", {"check": check})
    if as_json:
        print(json.dumps({"check": check, **reply}))
        return 0
    verb = "would apply" if check else "applied"
    print(f"configuration OK; {verb}: {', '.join(reply['applied']) or 'nothing'}")
    if reply["needs_restart"]:
        print(f"needs a restart: {', '.join(reply['needs_restart'])}")
    return 0
