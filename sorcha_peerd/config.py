"""Settings: one TOML file plus command-line flags, validated into frozen values.

Why it is shaped like this:

- Every part of the daemon reads one immutable :class:`Settings`, so no task
  can see a half-changed configuration, and a reload is "build a new object
  and swap a reference" like the register snapshot.
- Nothing here reads process globals: the environment, the host name, the
  working directory and the system search path are arguments, so tests (and a
  later reload) control them completely.
- An operator's mistake must be caught before anything starts and explained
  in terms of the file they edited: every problem names its key (or the flag
  that set it), all problems are reported at once, and unknown keys are errors
  rather than silently ignored typos.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import tomllib
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, Literal, TypeVar, cast

import attrs

from sorcha_peerd.register import DEFAULT_LIMITS, Limits, ValidationError, validate_peer_id

__all__ = [
    "CONFIG_FILE_NAME",
    "EX_CONFIG",
    "FLAG_FOR_KEY",
    "SYSTEM_CONFIG_PATHS",
    "Address",
    "ConfigError",
    "ConfigProblem",
    "ControlSettings",
    "GrpcSettings",
    "HubSettings",
    "LimitsSettings",
    "LogSettings",
    "NodeSettings",
    "Settings",
    "StoreSettings",
    "TelemetrySettings",
    "TimingSettings",
    "find_config_file",
    "load_settings",
    "parse_address",
    "parse_settings",
    "resolve_role",
]

Role = Literal["hub", "peer"]
RoleSetting = Literal["hub", "peer", "auto"]
StoreBackend = Literal["sqlite", "mongodb"]
LogLevel = Literal["debug", "info", "warning", "error"]
TelemetryExporter = Literal["none", "otlp"]

#: sysexits.h EX_CONFIG: what the daemon exits with on any configuration problem.
EX_CONFIG: Final = 78
CONFIG_FILE_NAME: Final = "sorcha-peerd.toml"
#: Searched after ``$CONFIGURATION_DIRECTORY``; injectable so tests never touch /etc.
SYSTEM_CONFIG_PATHS: Final[tuple[Path, ...]] = (Path("/etc/sorcha-peerd") / CONFIG_FILE_NAME,)
DEFAULT_HUB_HOSTNAME_PATTERN: Final = r"^n[0-9]+\.sorcha\.dev$"
DEFAULT_LISTEN: Final = "127.0.0.1:5000"
#: Linux ``sun_path`` is 108 bytes including the terminating NUL.
MAX_UNIX_SOCKET_PATH: Final = 107

#: The settings a command-line flag may override, and the flag's spelling.
#: Problems with an overridden value name the flag, so the operator looks in
#: the right place (the unit file's ExecStart, not the TOML file).
FLAG_FOR_KEY: Final[Mapping[str, str]] = MappingProxyType(
    {
        "node.id": "--node-id",
        "node.role": "--role",
        "node.state_dir": "--state-dir",
        "grpc.listen": "--listen",
        "control.socket": "--control-socket",
        "store.backend": "--store",
        "store.mongodb_uri": "--mongodb-uri",
        "store.mongodb_database": "--mongodb-database",
        "log.level": "--log-level",
    }
)


# --------------------------------------------------------------------------- errors


@attrs.frozen
class ConfigProblem:
    """One thing wrong with the configuration, tied to the key (or flag) that caused it."""

    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.key}: {self.message}"


class ConfigError(Exception):
    """The configuration cannot be used; ``problems`` lists every reason found.

    Reporting all problems at once saves an operator an edit-restart loop per typo.
    """

    def __init__(self, problems: Iterable[ConfigProblem], source: Path | None = None) -> None:
        self.problems: tuple[ConfigProblem, ...] = tuple(problems)
        self.source = source
        super().__init__("\n".join(self.lines()))

    def lines(self) -> list[str]:
        """One ``config error: key: message`` line per problem, ready for stderr."""
        return [f"config error: {p}" for p in self.problems]


# --------------------------------------------------------------------------- values


@attrs.frozen
class Address:
    """A TCP endpoint as ``host:port``; IPv6 literals are kept without brackets."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


_HOST_LABEL_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


def _valid_hostname(host: str) -> bool:
    if len(host) > 253:
        return False
    labels = host[:-1].split(".") if host.endswith(".") else host.split(".")
    return all(_HOST_LABEL_RE.fullmatch(label) for label in labels)


def parse_address(text: str, *, allow_port_zero: bool = False) -> Address:
    """Parse ``host:port`` (``[v6]:port`` for IPv6); raise ValueError saying what is wrong.

    Port 0 ("any free port") only makes sense for a listening socket in tests,
    so callers opt in to it.
    """
    if not text:
        raise ValueError("must be host:port, got an empty string")
    if text.startswith("["):
        close = text.find("]")
        if close == -1:
            raise ValueError(f"missing ']' in IPv6 address {text!r}")
        host, rest = text[1:close], text[close + 1 :]
        if not rest.startswith(":"):
            raise ValueError(f"must be [ipv6]:port, got {text!r}")
        port_text = rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} in {text!r} is not an IPv6 address") from None
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ValueError(f"must be host:port, got {text!r} (no port)")
        if ":" in host:
            raise ValueError(f"IPv6 addresses must be in brackets, as [::1]:5000, got {text!r}")
        if not host:
            raise ValueError(f"must be host:port, got {text!r} (no host)")
        if not _valid_hostname(host):
            raise ValueError(f"{host!r} in {text!r} is not a valid host name or IPv4 address")
    if not port_text.isascii() or not port_text.isdigit():
        raise ValueError(f"port must be a number, got {port_text!r} in {text!r}")
    port = int(port_text)
    low = 0 if allow_port_zero else 1
    if not low <= port <= 65535:
        raise ValueError(f"port must be {low}-65535, got {port} in {text!r}")
    return Address(host=host, port=port)


# --------------------------------------------------------------------------- settings


@attrs.frozen
class NodeSettings:
    """Who this node is and where it keeps its state."""

    id: str
    #: What the file or flag asked for ("auto" included).
    role: RoleSetting
    #: What this node actually runs as; "auto" resolved against ``hostname``.
    effective_role: Role
    #: The host name role detection and the default id were derived from.
    hostname: str
    validate_hostname: bool
    hub_hostname_pattern: re.Pattern[str]
    state_dir: Path


@attrs.frozen
class GrpcSettings:
    """The gRPC (peer protocol) listener."""

    listen: Address


@attrs.frozen
class ControlSettings:
    """The unix control socket that sorcha-peerctl talks to."""

    socket: Path


@attrs.frozen
class StoreSettings:
    """Where the register is kept durably."""

    backend: StoreBackend
    sqlite_path: Path
    mongodb_uri: str
    mongodb_database: str
    #: Seconds between change-feed polls (hub: see other hubs' publishes).
    poll_interval: float
    #: Seconds pymongo may wait for a server or an answer before failing a call.
    mongodb_timeout: float


@attrs.frozen
class TimingSettings:
    """Every timing of the protocol, in seconds (floats so tests can run fast)."""

    heartbeat_interval: float
    heartbeat_timeout: float
    missed_heartbeats_for_failover: int
    sync_interval: float
    connect_timeout: float
    call_timeout: float
    backoff_initial: float
    backoff_max: float
    shutdown_timeout: float


@attrs.frozen
class LimitsSettings:
    """Resource limits; each bounds memory or work a remote party can cause."""

    max_document_bytes: int
    max_page_size: int
    max_peers: int
    max_concurrent_syncs: int
    push_queue_size: int

    def register_limits(self) -> Limits:
        """The :class:`register.Limits` these settings imply, for entry validation."""
        return attrs.evolve(DEFAULT_LIMITS, max_document_bytes=self.max_document_bytes)


@attrs.frozen
class LogSettings:
    level: LogLevel


@attrs.frozen
class TelemetrySettings:
    """OpenTelemetry export; metrics are readable through the control socket whatever it is."""

    #: "none": nothing leaves the process; "otlp": OTLP/HTTP (needs sorcha-peerd[otlp]).
    exporter: TelemetryExporter = "none"
    #: The collector's base URL (``/v1/metrics`` and ``/v1/traces`` are appended);
    #: None: the exporter's default and ``OTEL_EXPORTER_OTLP_*`` variables.
    endpoint: str | None = None
    service_name: str = "sorcha-peerd"


@attrs.frozen
class HubSettings:
    """One hub a peer may connect to; list order is connection priority."""

    id: str
    address: Address


def _freeze_overrides(value: Mapping[str, str]) -> Mapping[str, str]:
    return MappingProxyType(dict(value))


@attrs.frozen
class Settings:
    """The whole validated configuration of one daemon run."""

    node: NodeSettings
    grpc: GrpcSettings
    control: ControlSettings
    store: StoreSettings
    timing: TimingSettings
    limits: LimitsSettings
    log: LogSettings
    hubs: tuple[HubSettings, ...]
    #: The file read (None: built-in defaults), kept for messages and reload.
    source: Path | None
    #: The flag overrides applied on top of the file (dotted key -> raw text), for reload.
    overrides: Mapping[str, str] = attrs.field(factory=dict, converter=_freeze_overrides)
    telemetry: TelemetrySettings = attrs.field(factory=TelemetrySettings)

    def summary(self) -> str:
        """A one-line description for --check-config and the startup log."""
        source = str(self.source) if self.source is not None else "built-in defaults"
        return (
            f"role={self.node.effective_role} node_id={self.node.id} "
            f"listen={self.grpc.listen} store={self.store.backend} config={source}"
        )


def resolve_role(role: RoleSetting, pattern: re.Pattern[str], hostname: str) -> Role:
    """Which role a node runs: "auto" means hub exactly when the host name matches.

    The whole (fully qualified) host name must match, case-insensitively as
    DNS names are; a pattern without anchors therefore cannot match part of a name.
    """
    if role != "auto":
        return role
    matched = re.fullmatch(pattern.pattern, hostname, pattern.flags | re.IGNORECASE)
    return "hub" if matched else "peer"


# --------------------------------------------------------------------------- reading

T = TypeVar("T")


class _Bad(ValueError):
    """A value failed a check; the message reads after ``key:``."""


def _describe(value: object) -> str:
    """A value as the operator wrote it, in TOML's vocabulary."""
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, int):
        return f"integer {value}"
    if isinstance(value, float):
        return f"float {value}"
    if isinstance(value, str):
        return f"string {value!r}"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__


def _positive_float(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Bad(f"must be a number of seconds, got {_describe(value)}")
    if not math.isfinite(value) or value <= 0:
        raise _Bad(f"must be a positive number, got {value}")
    return float(value)


def _int_at_least(low: int, high: int | None = None) -> Callable[[object], int]:
    def check(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Bad(f"must be an integer, got {_describe(value)}")
        if value < low or (high is not None and value > high):
            bound = f">= {low}" if high is None else f"between {low} and {high}"
            raise _Bad(f"must be an integer {bound}, got {value}")
        return value

    return check


def _bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise _Bad(f"must be true or false, got {_describe(value)}")
    return value


def _string(value: object) -> str:
    if not isinstance(value, str):
        raise _Bad(f"must be a string, got {_describe(value)}")
    if not value:
        raise _Bad("must not be empty")
    return value


def _choice(*choices: str) -> Callable[[object], str]:
    def check(value: object) -> str:
        text = _string(value)
        if text.lower() not in choices:
            raise _Bad(f"must be one of {', '.join(choices)}; got {text!r}")
        return text.lower()

    return check


def _address(allow_port_zero: bool) -> Callable[[object], Address]:
    def check(value: object) -> Address:
        try:
            return parse_address(_string(value), allow_port_zero=allow_port_zero)
        except _Bad:
            raise
        except ValueError as exc:
            raise _Bad(str(exc)) from None

    return check


def _regex(value: object) -> re.Pattern[str]:
    text = _string(value)
    try:
        return re.compile(text)
    except re.error as exc:
        raise _Bad(f"not a valid regular expression ({exc}): {text!r}") from None


def _peer_id(value: object) -> str:
    try:
        return validate_peer_id(value)
    except ValidationError as exc:
        raise _Bad(exc.problem) from None


def _http_url(value: object) -> str:
    text = _string(value)
    try:
        parts = urllib.parse.urlsplit(text)
        _ = parts.port  # raises ValueError on a bad port
    except ValueError as exc:
        raise _Bad(f"not a valid URL ({exc}): {text!r}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _Bad(f"must be an http:// or https:// URL with a host, got {text!r}")
    return text


def _mongodb_uri(value: object) -> str:
    text = _string(value)
    if not text.startswith(("mongodb://", "mongodb+srv://")):
        raise _Bad("must start with mongodb:// or mongodb+srv://")
    return text


_MONGODB_DB_FORBIDDEN = frozenset('/\\. "$\x00')


def _mongodb_database(value: object) -> str:
    text = _string(value)
    if len(text) > 63:
        raise _Bad(f"is {len(text)} characters, at most 63 allowed")
    if _MONGODB_DB_FORBIDDEN.intersection(text):
        raise _Bad(f'may not contain any of / \\ . space " $; got {text!r}')
    return text


class _Reader:
    """Reads one table's keys through checks, collecting problems instead of stopping.

    It remembers which keys were read, so whatever is left over afterwards is
    an unknown key, and which failed, so cross-checks skip values already reported.
    """

    def __init__(
        self,
        prefix: str,
        table: Mapping[str, Any],
        problems: list[ConfigProblem],
        labels: Mapping[str, str],
    ) -> None:
        self._prefix = prefix
        self._table = table
        self._problems = problems
        self._labels = labels
        self._read: set[str] = set()
        self.failed: set[str] = set()

    def label(self, key: str) -> str:
        full = f"{self._prefix}.{key}"
        flag = self._labels.get(full)
        return f"{flag} ({full})" if flag else full

    def problem(self, key: str, message: str) -> None:
        self.failed.add(key)
        self._problems.append(ConfigProblem(self.label(key), message))

    def has(self, key: str) -> bool:
        return key in self._table

    def get(self, key: str, default: T, check: Callable[[object], T]) -> T:
        self._read.add(key)
        if key not in self._table:
            return default
        try:
            return check(self._table[key])
        except _Bad as exc:
            self.problem(key, str(exc))
            return default

    def finish(self) -> None:
        for key in self._table:
            if key not in self._read:
                self._problems.append(ConfigProblem(f"{self._prefix}.{key}", "unknown key"))


def _absolute(path_text: str, cwd: Path) -> Path:
    """Relative paths are taken from the working directory (``~`` is not expanded)."""
    return (cwd / path_text).absolute()


def _first_env_dir(env: Mapping[str, str], name: str) -> str | None:
    """First entry of a systemd directory variable (they may list several, colon-separated)."""
    value = env.get(name, "")
    first = value.split(":", 1)[0]
    return first or None


_SECTIONS: Final = ("node", "grpc", "control", "store", "timing", "limits", "log", "telemetry")


def parse_settings(
    data: Mapping[str, Any],
    *,
    env: Mapping[str, str],
    hostname: str,
    cwd: Path,
    overrides: Mapping[str, str] | None = None,
    source: Path | None = None,
) -> Settings:
    """Validate a parsed TOML document plus flag overrides into :class:`Settings`.

    Pure: no file or environment access beyond the arguments. Raises
    :class:`ConfigError` listing every problem.
    """
    overrides = dict(overrides or {})
    for key in overrides:
        if key not in FLAG_FOR_KEY:
            raise ValueError(f"{key!r} cannot be overridden from the command line")
    problems: list[ConfigProblem] = []

    tables: dict[str, dict[str, Any]] = {}
    for name in _SECTIONS:
        raw = data.get(name, {})
        if not isinstance(raw, dict):
            problems.append(
                ConfigProblem(name, f"must be a table ([{name}]), got {_describe(raw)}")
            )
            raw = {}
        tables[name] = dict(raw)
    for name in data:
        if name not in _SECTIONS and name != "hubs":
            problems.append(ConfigProblem(name, "unknown key (not a known section)"))
    labels: dict[str, str] = {}
    for key, value in overrides.items():
        section, _, leaf = key.partition(".")
        tables[section][leaf] = value
        labels[key] = FLAG_FOR_KEY[key]

    def reader(name: str) -> _Reader:
        return _Reader(name, tables[name], problems, labels)

    # [node]
    r = reader("node")
    short_host = hostname.split(".", 1)[0]
    node_id = r.get("id", short_host, _peer_id)
    if not r.has("id"):
        try:
            validate_peer_id(short_host)
        except ValidationError as exc:
            r.problem(
                "id",
                f"not set, and the short host name {short_host!r} is not a valid node id "
                f"({exc.problem}); set node.id",
            )
    role = cast(RoleSetting, r.get("role", "auto", _choice("hub", "peer", "auto")))
    validate_hostname = r.get("validate_hostname", False, _bool)
    pattern = r.get("hub_hostname_pattern", re.compile(DEFAULT_HUB_HOSTNAME_PATTERN), _regex)
    state_env = _first_env_dir(env, "STATE_DIRECTORY")
    state_dir = r.get("state_dir", _absolute(state_env or "var", cwd), _string_path(cwd))
    r.finish()
    effective_role = resolve_role(role, pattern, hostname)
    if (
        validate_hostname
        and effective_role == "hub"
        and not {"role", "hub_hostname_pattern"} & r.failed
        and resolve_role("auto", pattern, hostname) != "hub"
    ):
        r.problem(
            "validate_hostname",
            f"this node is a hub but its host name {hostname!r} does not match "
            f"node.hub_hostname_pattern '{pattern.pattern}'; refusing to start",
        )
    node = NodeSettings(
        id=node_id,
        role=role,
        effective_role=effective_role,
        hostname=hostname,
        validate_hostname=validate_hostname,
        hub_hostname_pattern=pattern,
        state_dir=state_dir,
    )

    # [grpc]
    r = reader("grpc")
    grpc = GrpcSettings(
        listen=r.get("listen", parse_address(DEFAULT_LISTEN), _address(allow_port_zero=True))
    )
    r.finish()

    # [control]
    r = reader("control")
    runtime_env = _first_env_dir(env, "RUNTIME_DIRECTORY")
    default_socket = (_absolute(runtime_env, cwd) if runtime_env else state_dir) / "control.sock"
    socket_path = r.get("socket", default_socket, _string_path(cwd))
    if "socket" not in r.failed and len(os.fsencode(socket_path)) > MAX_UNIX_SOCKET_PATH:
        r.problem(
            "socket",
            f"{str(socket_path)!r} is longer than {MAX_UNIX_SOCKET_PATH} bytes, "
            "too long for a unix socket",
        )
    control = ControlSettings(socket=socket_path)
    r.finish()

    # [store]
    r = reader("store")
    store = StoreSettings(
        backend=cast(StoreBackend, r.get("backend", "sqlite", _choice("sqlite", "mongodb"))),
        sqlite_path=r.get("sqlite_path", state_dir / "register.sqlite3", _string_path(cwd)),
        mongodb_uri=r.get("mongodb_uri", "mongodb://127.0.0.1:27017", _mongodb_uri),
        mongodb_database=r.get("mongodb_database", "sorcha", _mongodb_database),
        poll_interval=r.get("poll_interval", 0.5, _positive_float),
        mongodb_timeout=r.get("mongodb_timeout", 10.0, _positive_float),
    )
    r.finish()

    # [timing]
    r = reader("timing")
    timing = TimingSettings(
        heartbeat_interval=r.get("heartbeat_interval", 30.0, _positive_float),
        heartbeat_timeout=r.get("heartbeat_timeout", 30.0, _positive_float),
        missed_heartbeats_for_failover=r.get("missed_heartbeats_for_failover", 2, _int_at_least(1)),
        sync_interval=r.get("sync_interval", 300.0, _positive_float),
        connect_timeout=r.get("connect_timeout", 30.0, _positive_float),
        call_timeout=r.get("call_timeout", 10.0, _positive_float),
        backoff_initial=r.get("backoff_initial", 1.0, _positive_float),
        backoff_max=r.get("backoff_max", 60.0, _positive_float),
        shutdown_timeout=r.get("shutdown_timeout", 10.0, _positive_float),
    )
    r.finish()
    if not {"backoff_initial", "backoff_max"} & r.failed and (
        timing.backoff_max < timing.backoff_initial
    ):
        r.problem(
            "backoff_max",
            f"must be >= timing.backoff_initial ({timing.backoff_initial}), "
            f"got {timing.backoff_max}",
        )

    # [limits]
    r = reader("limits")
    contract_max = DEFAULT_LIMITS.max_document_bytes
    limits = LimitsSettings(
        max_document_bytes=r.get(
            "max_document_bytes", contract_max, _int_at_least(1, contract_max)
        ),
        max_page_size=r.get("max_page_size", 500, _int_at_least(1)),
        max_peers=r.get("max_peers", 1000, _int_at_least(1)),
        max_concurrent_syncs=r.get("max_concurrent_syncs", 4, _int_at_least(1)),
        push_queue_size=r.get("push_queue_size", 1000, _int_at_least(1)),
    )
    r.finish()

    # [log]
    r = reader("log")
    log = LogSettings(
        level=cast(LogLevel, r.get("level", "info", _choice("debug", "info", "warning", "error")))
    )
    r.finish()

    # [telemetry]
    r = reader("telemetry")
    telemetry = TelemetrySettings(
        exporter=cast(TelemetryExporter, r.get("exporter", "none", _choice("none", "otlp"))),
        endpoint=r.get("endpoint", None, _http_url),
        service_name=r.get("service_name", "sorcha-peerd", _string),
    )
    r.finish()
    if telemetry.endpoint is not None and telemetry.exporter == "none" and not r.failed:
        r.problem(
            "endpoint",
            'is set but telemetry.exporter is "none", so nothing would be sent there; '
            'set exporter = "otlp" or remove endpoint',
        )

    hubs = _parse_hubs(data.get("hubs", []), problems)

    if problems:
        raise ConfigError(problems, source)
    return Settings(
        node=node,
        grpc=grpc,
        control=control,
        store=store,
        timing=timing,
        limits=limits,
        log=log,
        hubs=hubs,
        source=source,
        overrides=overrides,
        telemetry=telemetry,
    )


def _string_path(cwd: Path) -> Callable[[object], Path]:
    def check(value: object) -> Path:
        return _absolute(_string(value), cwd)

    return check


def _parse_hubs(raw: object, problems: list[ConfigProblem]) -> tuple[HubSettings, ...]:
    """``[[hubs]]``: the hubs a peer tries, in priority order."""
    if not isinstance(raw, list) or not all(isinstance(item, dict) for item in raw):
        problems.append(ConfigProblem("hubs", "must be an array of tables ([[hubs]])"))
        return ()
    hubs: list[HubSettings] = []
    seen: set[str] = set()
    for index, table in enumerate(raw):
        r = _Reader(f"hubs[{index}]", table, problems, {})
        for key in ("id", "address"):
            if not r.has(key):
                r.problem(key, "required")
        hub_id = r.get("id", "", _peer_id)
        address = r.get("address", Address("", 0), _address(allow_port_zero=False))
        r.finish()
        if hub_id and hub_id in seen:
            r.problem("id", f"duplicate hub id {hub_id!r}")
        seen.add(hub_id)
        if not r.failed:
            hubs.append(HubSettings(id=hub_id, address=address))
    return tuple(hubs)


# --------------------------------------------------------------------------- loading


def find_config_file(
    explicit: Path | None,
    env: Mapping[str, str],
    system_paths: Sequence[Path] = SYSTEM_CONFIG_PATHS,
) -> Path | None:
    """Which file to read: --config, else $CONFIGURATION_DIRECTORY, else /etc, else none.

    Only an explicit path must exist: the others are optional so that a bare
    ``sorcha-peerd`` runs on built-in defaults.
    """
    if explicit is not None:
        if not explicit.is_file():
            reason = "is not a file" if explicit.exists() else "no such file"
            raise ConfigError([ConfigProblem("--config", f"{explicit}: {reason}")], explicit)
        return explicit
    candidates: list[Path] = [
        Path(d) / CONFIG_FILE_NAME for d in env.get("CONFIGURATION_DIRECTORY", "").split(":") if d
    ]
    candidates.extend(system_paths)
    for path in candidates:
        if path.is_file():
            return path
    return None


def read_config_file(path: Path) -> dict[str, Any]:
    """Parse one TOML file; any failure is a ConfigError naming the file (and line)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        problem = ConfigProblem(str(path), f"cannot read: {exc.strerror}")
        raise ConfigError([problem], path) from None
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(
            [ConfigProblem(str(path), f"not UTF-8 at byte {exc.start}")], path
        ) from None
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message already ends "(at line N, column M)".
        raise ConfigError([ConfigProblem(str(path), f"TOML syntax error: {exc}")], path) from None


def load_settings(
    overrides: Mapping[str, str] | None = None,
    *,
    config_path: Path | None = None,
    env: Mapping[str, str],
    hostname: str,
    cwd: Path,
    system_paths: Sequence[Path] = SYSTEM_CONFIG_PATHS,
) -> Settings:
    """Find, read and validate the configuration, flags applied on top of the file.

    ``overrides`` maps dotted keys (see :data:`FLAG_FOR_KEY`) to the flag's text.
    Raises :class:`ConfigError`.
    """
    source = find_config_file(config_path, env, system_paths)
    data = read_config_file(source) if source is not None else {}
    return parse_settings(
        data, env=env, hostname=hostname, cwd=cwd, overrides=overrides, source=source
    )
