"""``sorcha-peerctl``: talk to a running sorcha-peerd over its control socket.

Exit statuses are part of the interface (scripts and the systemd health
check rely on them): 0 success, 1 the operation was refused (bad file,
unknown id, invalid argument, usage error), 2 the daemon cannot be reached.

``publish`` checks every file before sending any, so a batch with one bad
file publishes nothing; then it sends them all over one connection.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, NoReturn

import attrs
import trio

from sorcha_peerd import __version__, register
from sorcha_peerd.cli import ops
from sorcha_peerd.cli.daemon import system_hostname
from sorcha_peerd.config import ConfigError, load_settings
from sorcha_peerd.control.client import DEFAULT_TIMEOUT, ControlClient, DaemonUnreachable
from sorcha_peerd.control.interface import DEFAULT_PAGE
from sorcha_peerd.control.protocol import (
    CONFIG_INVALID,
    INTERFACE,
    INTERNAL_ERROR,
    INVALID_ARGUMENT,
    INVALID_PARAMETER,
    NOT_FOUND,
    NOT_SUPPORTED,
    PERMISSION_DENIED,
    STORE_UNAVAILABLE,
    SYNC_FAILED,
    ControlError,
)

PROG = "sorcha-peerctl"
EX_OK = 0
#: Exit status when the daemon refused the operation, or the command line or a file is wrong.
EX_REFUSED = 1
#: Exit status when the daemon cannot be reached (the health check's "down").
EX_UNREACHABLE = 2


class Refused(Exception):
    """The command cannot go ahead; the message is the one line to print."""


class _Parser(argparse.ArgumentParser):
    """Usage errors exit 1: status 2 is reserved for "the daemon cannot be reached"."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EX_REFUSED, f"{self.prog}: error: {message}\n")


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds: {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Control a running sorcha-peerd.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--socket", metavar="PATH", help="the daemon's control socket")
    where.add_argument(
        "--config", metavar="PATH", help="read the control socket path from this config file"
    )
    parser.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=_positive_seconds,
        default=DEFAULT_TIMEOUT,
        help=f"bound on each request (default {DEFAULT_TIMEOUT:g})",
    )
    parser.add_argument("--json", action="store_true", help="print JSON (any command)")
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_Parser
    )

    p = commands.add_parser("status", help="show the daemon's state; exit 0 when it answers")
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")

    p = commands.add_parser("blueprints", help="list the blueprints the daemon holds")
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")
    p.add_argument("--all", action="store_true", help="include deprecated blueprints")

    p = commands.add_parser("get", help="print a blueprint's document")
    p.add_argument("id", metavar="ID")

    p = commands.add_parser("publish", help="publish blueprint documents (hub only)")
    p.add_argument("files", metavar="FILE", nargs="+", type=Path)
    p.add_argument("--id", help="the blueprint id (one file only; default: the document's 'id')")
    p.add_argument("--publisher", metavar="NAME", help="recorded as published_by (default $USER)")
    p.add_argument(
        "--meta",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="a metadata entry (repeatable)",
    )

    p = commands.add_parser("sync", help="synchronise with the hub now (peer only)")
    p.add_argument("--full", action="store_true", help="a full resynchronisation")

    p = commands.add_parser("deprecate", help="mark a blueprint inactive (hub only)")
    p.add_argument("id", metavar="ID")
    p.add_argument("--by", metavar="NAME", help="recorded as published_by (default $USER)")

    p = commands.add_parser(
        "health", help="Nagios-style check: exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN"
    )
    p = commands.add_parser("peers", help="a hub's connected peers, or a peer's hubs")
    p = commands.add_parser("metrics", help="the daemon's current metric values")
    p = commands.add_parser("version", help="the versions of sorcha-peerctl and the daemon")
    p = commands.add_parser("reload", help="re-read the daemon's configuration")
    p.add_argument("--check", action="store_true", help="only validate it; change nothing")
    for sub in commands.choices.values():
        if not any("--json" in a.option_strings for a in sub._actions):
            sub.add_argument(
                "--json", action="store_true", default=argparse.SUPPRESS, help="print JSON"
            )
    return parser


#: Commands that only read: by default they use the group-accessible status socket.
READ_ONLY_COMMANDS = frozenset(
    {"status", "blueprints", "get", "health", "peers", "metrics", "version"}
)


# --------------------------------------------------------------------------- finding the daemon


def socket_path(args: argparse.Namespace, env: Mapping[str, str]) -> Path:
    """``--socket``, else the socket of the configuration the daemon would read.

    Commands that only read use the status socket beside the control socket
    (monitoring may reach it without being able to publish), when it exists.
    """
    if args.socket is not None:
        return Path(args.socket)
    settings = load_settings(
        config_path=Path(args.config) if args.config is not None else None,
        env=env,
        hostname=system_hostname(),
        cwd=Path.cwd(),
    )
    control = settings.control.socket
    status = control.with_name("status.sock")
    if args.command in READ_ONLY_COMMANDS and status.exists():
        return status
    return control


def describe(error: ControlError) -> str:
    """A daemon's error reply as one line an operator can act on."""
    p = error.parameters
    if error.error == INVALID_ARGUMENT:
        return f"invalid {p.get('field')}: {p.get('reason')}"
    if error.error == NOT_FOUND:
        return f"no blueprint {p.get('id')!r}"
    if error.error == NOT_SUPPORTED:
        return str(p.get("reason"))
    if error.error == STORE_UNAVAILABLE:
        return f"the daemon's store is unavailable: {p.get('reason')}"
    if error.error == SYNC_FAILED:
        return f"sync failed: {p.get('reason')}"
    if error.error == CONFIG_INVALID:
        return "the configuration does not validate; the daemon keeps the running one: " + (
            "; ".join(str(x) for x in p.get("problems", []))
        )
    if error.error == PERMISSION_DENIED:
        return "not allowed on this socket (the status socket only reads; use the control socket)"
    if error.error == INTERNAL_ERROR:
        return "the daemon failed (internal error; see its log)"
    if error.error == INVALID_PARAMETER:
        return f"the daemon refused parameter {p.get('parameter')!r}"
    return f"{error.error}: {json.dumps(p)}"


def _default_user(env: Mapping[str, str]) -> str:
    return env.get("USER") or PROG


# --------------------------------------------------------------------------- publish: local checks


@attrs.frozen
class Upload:
    """A file that passed the local checks: what to publish and how to recognise it again."""

    path: Path
    blueprint_id: str
    sha256: str
    size: int


def check_file(path: Path, explicit_id: str | None) -> Upload:
    """Read one file and check it as the hub will; :class:`Refused` naming the file if not."""
    data = _read(path)
    try:
        register.validate_document(data)
    except register.ValidationError as exc:
        raise Refused(f"{path}: the document {exc.problem}") from None
    if explicit_id is not None:
        blueprint_id: object = explicit_id
    else:
        document = json.loads(data)
        if not isinstance(document, dict) or "id" not in document:
            raise Refused(f'{path}: the document has no top-level "id"; give one with --id')
        blueprint_id = document["id"]
        if not isinstance(blueprint_id, str):
            raise Refused(f'{path}: the document\'s "id" must be a string')
    try:
        checked = register.validate_blueprint_id(blueprint_id)
    except register.ValidationError as exc:
        shown = repr(blueprint_id if len(str(blueprint_id)) <= 60 else f"{blueprint_id!s:.60}...")
        raise Refused(f"{path}: blueprint id {shown} {exc.problem}") from None
    return Upload(
        path=path, blueprint_id=checked, sha256=hashlib.sha256(data).hexdigest(), size=len(data)
    )


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise Refused(f"{path}: cannot read: {exc.strerror}") from None


def check_uploads(files: Sequence[Path], explicit_id: str | None) -> list[Upload]:
    """Check every file (and that no id comes twice); the first problem is :class:`Refused`."""
    if explicit_id is not None and len(files) > 1:
        raise Refused("--id can only be used with a single file")
    uploads: list[Upload] = []
    seen: dict[str, Path] = {}
    for path in files:
        upload = check_file(path, explicit_id)
        first = seen.setdefault(upload.blueprint_id, path)
        if first != path:
            raise Refused(f"{path}: blueprint id {upload.blueprint_id!r} is also in {first}")
        uploads.append(upload)
    return uploads


def parse_metadata(items: Sequence[str]) -> dict[str, str]:
    metadata: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise Refused(f"--meta {item!r}: must be KEY=VALUE")
        if key in metadata:
            raise Refused(f"--meta: key {key!r} given twice")
        metadata[key] = value
    try:
        register.validate_metadata(metadata)
    except register.ValidationError as exc:
        raise Refused(f"--meta: {exc.problem}") from None
    return metadata


def _check_name(flag: str, name: str) -> str:
    try:
        return register.validate_published_by(name)
    except register.ValidationError as exc:
        raise Refused(f"{flag}: {exc.problem}") from None


# --------------------------------------------------------------------------- commands


async def cmd_status(client: ControlClient, *, args: argparse.Namespace) -> int:
    status = (await client.call(f"{INTERFACE}.Status"))["status"]
    if args.json:
        print(json.dumps(status, indent=2, sort_keys=True))
    else:
        for line in _status_lines(status):
            print(line)
    return status_exit_code(status)


EX_DEGRADED = 1


def status_exit_code(status: Mapping[str, Any]) -> int:
    """0 when the node is healthy, 1 when it answers but is degraded (2 is "unreachable").

    A peer is healthy when connected and in sync with its hub; isolated,
    connecting or behind is degraded. A hub is healthy while serving; a
    draining one is degraded.
    """
    if status.get("role") == "peer":
        healthy = status.get("status") == "connected" and status.get("in_sync") is True
    else:
        healthy = status.get("status") in ("serving", "ok")
    return EX_OK if healthy else EX_DEGRADED


def _status_lines(value: Mapping[str, Any], prefix: str = "") -> list[str]:
    first = ("role", "node_id", "status", "version", "blueprints")
    keys = [k for k in first if k in value] + sorted(k for k in value if k not in first)
    lines: list[str] = []
    for key in keys:
        item = value[key]
        if isinstance(item, Mapping):
            lines.extend(_status_lines(item, f"{prefix}{key}."))
        elif isinstance(item, list) and item and all(isinstance(i, Mapping) for i in item):
            for index, element in enumerate(item):
                lines.extend(_status_lines(element, f"{prefix}{key}[{index}]."))
        elif isinstance(item, str):
            lines.append(f"{prefix}{key}: {item}")
        else:
            lines.append(f"{prefix}{key}: {json.dumps(item)}")
    return lines


async def list_all(client: ControlClient, *, include_inactive: bool) -> list[dict[str, Any]]:
    """Every blueprint, page by page (no reply is ever the whole register)."""
    found: list[dict[str, Any]] = []
    after = 0
    while True:
        page = await client.call(
            f"{INTERFACE}.ListBlueprints",
            {"all": include_inactive, "after_version": after, "limit": DEFAULT_PAGE},
        )
        found.extend(page["blueprints"])
        if len(page["blueprints"]) < DEFAULT_PAGE:
            return found
        after = page["next_after_version"]


async def cmd_blueprints(client: ControlClient, *, args: argparse.Namespace) -> int:
    blueprints = await list_all(client, include_inactive=args.all)
    if args.json:
        print(json.dumps(blueprints, indent=2))
        return EX_OK
    rows = [("ID", "VERSION", "ACTIVE", "PUBLISHED_AT", "PUBLISHED_BY", "CHECKSUM")]
    rows.extend(
        (
            b["id"],
            str(b["version"]),
            "yes" if b["is_active"] else "no",
            _iso(b["published_at"]),
            b["published_by"],
            b["checksum"].removeprefix(register.CHECKSUM_PREFIX)[:12],
        )
        for b in blueprints
    )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return EX_OK


def _iso(ms: int) -> str:
    return (
        datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    )


async def cmd_get(client: ControlClient, *, args: argparse.Namespace) -> int:
    reply = await client.call(f"{INTERFACE}.GetBlueprint", {"id": args.id})
    if args.json:
        print(json.dumps(reply, indent=2))
        return EX_OK
    sys.stdout.buffer.write(reply["document"].encode("utf-8"))
    sys.stdout.buffer.flush()
    return EX_OK


async def cmd_publish(
    client: ControlClient,
    *,
    uploads: Sequence[Upload],
    publisher: str,
    metadata: Mapping[str, str],
    as_json: bool = False,
) -> int:
    # The node may accept less than the protocol's 16 MiB: check every file
    # against its own limit first, so that a too-large file publishes nothing.
    status = (await client.call(f"{INTERFACE}.Status"))["status"]
    limit = status.get("max_document_bytes")
    if isinstance(limit, int):
        for upload in uploads:
            if upload.size > limit:
                raise Refused(
                    f"{upload.path}: the document is {upload.size} bytes, "
                    f"this node accepts at most {limit}"
                )
    for upload in uploads:
        data = _read(upload.path)
        if hashlib.sha256(data).hexdigest() != upload.sha256:
            raise Refused(f"{upload.path}: changed while publishing; nothing more published")
        params = {
            "id": upload.blueprint_id,
            "document": data.decode("utf-8"),
            "publisher": publisher,
            "metadata": dict(metadata),
        }
        try:
            blueprint = (await client.call(f"{INTERFACE}.Publish", params))["blueprint"]
        except ControlError as exc:
            raise Refused(f"{upload.path}: {describe(exc)}") from None
        if as_json:
            print(json.dumps({"file": str(upload.path), **blueprint}))
        else:
            print(f"{upload.path}: {blueprint['id']} version {blueprint['version']}")
    return EX_OK


async def cmd_deprecate(client: ControlClient, *, args: argparse.Namespace, by: str) -> int:
    reply = await client.call(f"{INTERFACE}.Deprecate", {"id": args.id, "deprecated_by": by})
    blueprint = reply["blueprint"]
    if args.json:
        print(json.dumps(blueprint))
        return EX_OK
    print(f"{blueprint['id']} deprecated at version {blueprint['version']}")
    return EX_OK


async def cmd_sync(client: ControlClient, *, full: bool, as_json: bool = False) -> int:
    result = (await client.call(f"{INTERFACE}.Sync", {"full": full}))["result"]
    if as_json:
        print(json.dumps(result))
        return EX_OK
    kind = "full" if full else "incremental"
    print(
        f"{kind} sync done: version {result.get('version')} (was {result.get('previous_version')})"
    )
    return EX_OK


# --------------------------------------------------------------------------- main


Command = Callable[[ControlClient], Awaitable[int]]


def prepare(args: argparse.Namespace, env: Mapping[str, str]) -> Command:
    """Check what can be checked locally (raising :class:`Refused`); return what to send."""
    if args.command == "status":
        return partial(cmd_status, args=args)
    if args.command == "blueprints":
        return partial(cmd_blueprints, args=args)
    if args.command == "get":
        return partial(cmd_get, args=args)
    if args.command == "publish":
        return partial(
            cmd_publish,
            uploads=check_uploads(args.files, args.id),
            metadata=parse_metadata(args.meta),
            publisher=_check_name("--publisher", args.publisher or _default_user(env)),
            as_json=args.json,
        )
    if args.command == "sync":
        return partial(cmd_sync, full=args.full, as_json=args.json)
    if args.command == "health":
        return partial(ops.cmd_health, as_json=args.json)
    if args.command == "peers":
        return partial(ops.cmd_peers, as_json=args.json)
    if args.command == "metrics":
        return partial(ops.cmd_metrics, as_json=args.json)
    if args.command == "version":
        return partial(ops.cmd_version, as_json=args.json)
    if args.command == "reload":
        return partial(ops.cmd_reload, check=args.check, as_json=args.json)
    if args.command == "deprecate":
        by = _check_name("--by", args.by or _default_user(env))
        return partial(cmd_deprecate, args=args, by=by)
    raise AssertionError(f"unhandled command {args.command!r}")


async def session(path: Path, timeout: float, command: Command) -> int:
    """One connection for the whole command (publishing N files is N calls, one connect)."""
    async with await ControlClient.connect(path, timeout=timeout) as client:
        return await command(client)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``sorcha-peerctl``; returns the process exit status."""
    args = build_parser().parse_args(argv)
    env = os.environ
    try:
        path = socket_path(args, env)
    except ConfigError as exc:
        runtime_dir = env.get("RUNTIME_DIRECTORY")
        if args.command != "reload" or not runtime_dir:
            for line in exc.lines():
                print(f"{PROG}: {line}", file=sys.stderr)
            return EX_UNREACHABLE
        # The file being reloaded is what is broken (systemctl reload): still
        # ask the daemon, at the unit's socket, so that it answers ConfigInvalid.
        path = Path(runtime_dir.split(":")[0]) / "control.sock"
    return _run(args, env, path)


def _run(args: argparse.Namespace, env: Mapping[str, str], path: Path) -> int:
    try:
        command = prepare(args, env)
        return trio.run(session, path, args.timeout, command)
    except DaemonUnreachable as exc:
        if args.command == "health":  # Nagios: a daemon that does not answer is CRITICAL
            print(f"SORCHA-PEERD CRITICAL - {exc}")
            return ops.NAGIOS_CRITICAL
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EX_UNREACHABLE
    except ControlError as exc:
        if args.command == "health":
            print(f"SORCHA-PEERD UNKNOWN - {describe(exc)}")
            return ops.NAGIOS_UNKNOWN
        print(f"{PROG}: {describe(exc)}", file=sys.stderr)
        return EX_REFUSED
    except Refused as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EX_REFUSED


if __name__ == "__main__":
    sys.exit(main())
