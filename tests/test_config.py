"""Configuration: file search, validation messages, flag overrides, role detection.

Logic is tested in-process with the environment, host name, working directory
and system search path passed in. Exit statuses are tested through the real
entry point in a subprocess, because "exits 78 and names the key" is the
contract an operator (and systemd) sees.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Mapping
from pathlib import Path

import pytest

from sorcha_peerd.cli import daemon as daemon_cli
from sorcha_peerd.cli import peerctl
from sorcha_peerd.config import (
    EX_CONFIG,
    Address,
    ConfigError,
    Settings,
    find_config_file,
    load_settings,
    parse_address,
    parse_settings,
)

HUB_HOST = "n0.sorcha.dev"
PEER_HOST = "laptop.example.org"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load(
    tmp_path: Path,
    text: str | None = None,
    *,
    overrides: Mapping[str, str] | None = None,
    env: Mapping[str, str] | None = None,
    hostname: str = PEER_HOST,
) -> Settings:
    """Load settings from ``text`` (or from nothing) with no system paths and a fixed cwd."""
    config = write(tmp_path / "conf.toml", text) if text is not None else None
    return load_settings(
        overrides,
        config_path=config,
        env=env or {},
        hostname=hostname,
        cwd=tmp_path,
        system_paths=(),
    )


def problems(tmp_path: Path, text: str, **kwargs: object) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text, **kwargs)  # type: ignore[arg-type]
    return [str(p) for p in info.value.problems]


def check_config(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run the real entry point with --check-config in a clean environment."""
    env = {k: v for k, v in os.environ.items() if not k.endswith("_DIRECTORY")}
    return subprocess.run(
        [sys.executable, "-m", "sorcha_peerd.cli.daemon", "--check-config", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=30,
        check=False,
    )


# ---------------------------------------------------------------- defaults and search


def test_defaults_without_any_file(tmp_path: Path) -> None:
    s = load(tmp_path, hostname="box7.example.org")
    assert s.source is None
    assert s.node.id == "box7"
    assert s.node.role == "auto"
    assert s.node.effective_role == "peer"
    assert s.node.validate_hostname is False
    assert s.node.state_dir == tmp_path / "var"
    assert s.control.socket == tmp_path / "var" / "control.sock"
    assert s.grpc.listen == Address("127.0.0.1", 5000)
    assert s.store.backend == "sqlite"
    assert s.store.sqlite_path == tmp_path / "var" / "register.sqlite3"
    assert s.store.mongodb_uri == "mongodb://127.0.0.1:27017"
    assert s.store.mongodb_database == "sorcha"
    assert s.store.poll_interval == 0.5
    t = s.timing
    assert (t.heartbeat_interval, t.heartbeat_timeout, t.missed_heartbeats_for_failover) == (
        30.0,
        30.0,
        2,
    )
    assert (t.sync_interval, t.connect_timeout, t.backoff_initial, t.backoff_max) == (
        300.0,
        30.0,
        1.0,
        60.0,
    )
    assert s.limits.max_document_bytes == 16 * 1024 * 1024
    assert s.limits.register_limits().max_document_bytes == 16 * 1024 * 1024
    assert s.limits.max_page_size == 500
    assert s.log.level == "info"
    assert s.hubs == ()


def test_full_file_is_read(tmp_path: Path) -> None:
    s = load(
        tmp_path,
        """
        [node]
        id = "n0"
        role = "hub"
        state_dir = "/srv/sorcha"
        [grpc]
        listen = "[::1]:0"
        [control]
        socket = "/run/x/control.sock"
        [store]
        backend = "mongodb"
        mongodb_uri = "mongodb://db.example.org:27017/?replicaSet=rs0"
        mongodb_database = "reg"
        poll_interval = 0.1
        [timing]
        heartbeat_interval = 0.1
        heartbeat_timeout = 1
        missed_heartbeats_for_failover = 3
        backoff_initial = 0.05
        backoff_max = 0.05
        [limits]
        max_document_bytes = 1024
        max_page_size = 7
        [log]
        level = "DEBUG"
        [[hubs]]
        id = "n0"
        address = "n0.sorcha.dev:5000"
        [[hubs]]
        id = "n1"
        address = "[2001:db8::1]:5000"
        """,
    )
    assert s.source == tmp_path / "conf.toml"
    assert s.node.id == "n0"
    assert s.node.effective_role == "hub"
    assert s.node.state_dir == Path("/srv/sorcha")
    assert s.grpc.listen == Address("::1", 0)
    assert str(s.grpc.listen) == "[::1]:0"
    assert s.control.socket == Path("/run/x/control.sock")
    assert s.store.backend == "mongodb"
    assert s.store.mongodb_database == "reg"
    assert s.timing.heartbeat_timeout == 1.0
    assert isinstance(s.timing.heartbeat_timeout, float)
    assert s.timing.missed_heartbeats_for_failover == 3
    assert s.limits.max_page_size == 7
    assert s.limits.register_limits().max_document_bytes == 1024
    assert s.log.level == "debug"
    assert [(h.id, str(h.address)) for h in s.hubs] == [
        ("n0", "n0.sorcha.dev:5000"),
        ("n1", "[2001:db8::1]:5000"),
    ]


def test_search_order(tmp_path: Path) -> None:
    conf_dir = tmp_path / "confdir"
    system = tmp_path / "etc" / "sorcha-peerd.toml"
    env = {"CONFIGURATION_DIRECTORY": str(conf_dir)}
    assert find_config_file(None, env, [system]) is None
    write(system, "")
    assert find_config_file(None, env, [system]) == system
    write(conf_dir / "sorcha-peerd.toml", "")
    assert find_config_file(None, env, [system]) == conf_dir / "sorcha-peerd.toml"
    explicit = write(tmp_path / "explicit.toml", "")
    assert find_config_file(explicit, env, [system]) == explicit
    # an unset (or empty) $CONFIGURATION_DIRECTORY falls through to the system path
    assert find_config_file(None, {"CONFIGURATION_DIRECTORY": ""}, [system]) == system


def test_search_result_is_the_file_read(tmp_path: Path) -> None:
    system = write(tmp_path / "etc" / "sorcha-peerd.toml", '[node]\nid = "from-etc"\n')
    s = load_settings(env={}, hostname=PEER_HOST, cwd=tmp_path, system_paths=[system])
    assert (s.node.id, s.source) == ("from-etc", system)
    conf = write(tmp_path / "cd" / "sorcha-peerd.toml", '[node]\nid = "from-confdir"\n')
    s = load_settings(
        env={"CONFIGURATION_DIRECTORY": str(conf.parent)},
        hostname=PEER_HOST,
        cwd=tmp_path,
        system_paths=[system],
    )
    assert (s.node.id, s.source) == ("from-confdir", conf)


def test_systemd_directories_set_defaults(tmp_path: Path) -> None:
    s = load(tmp_path, env={"STATE_DIRECTORY": "/var/lib/sp:/var/lib/other"})
    assert s.node.state_dir == Path("/var/lib/sp")
    assert s.control.socket == Path("/var/lib/sp/control.sock")
    s = load(tmp_path, env={"STATE_DIRECTORY": "/var/lib/sp", "RUNTIME_DIRECTORY": "/run/sp"})
    assert s.node.state_dir == Path("/var/lib/sp")
    assert s.control.socket == Path("/run/sp/control.sock")
    # an explicit setting beats the environment; relative paths are made absolute
    s = load(tmp_path, '[node]\nstate_dir = "data"\n', env={"STATE_DIRECTORY": "/x"})
    assert s.node.state_dir == tmp_path / "data"
    assert s.control.socket == tmp_path / "data" / "control.sock"


def test_flags_override_file(tmp_path: Path) -> None:
    s = load(
        tmp_path,
        """
        [node]
        id = "file-id"
        role = "peer"
        [grpc]
        listen = "127.0.0.1:5000"
        [store]
        backend = "sqlite"
        [log]
        level = "info"
        """,
        overrides={
            "node.id": "flag-id",
            "node.role": "hub",
            "grpc.listen": "0.0.0.0:6000",
            "node.state_dir": "st",
            "control.socket": "/tmp/c.sock",
            "store.backend": "mongodb",
            "store.mongodb_uri": "mongodb://h:1",
            "store.mongodb_database": "db2",
            "log.level": "warning",
        },
    )
    assert s.node.id == "flag-id"
    assert s.node.effective_role == "hub"
    assert s.grpc.listen == Address("0.0.0.0", 6000)
    assert s.node.state_dir == tmp_path / "st"
    assert s.control.socket == Path("/tmp/c.sock")
    assert (s.store.backend, s.store.mongodb_uri, s.store.mongodb_database) == (
        "mongodb",
        "mongodb://h:1",
        "db2",
    )
    assert s.log.level == "warning"
    assert s.overrides["node.id"] == "flag-id"


def test_cli_flags_reach_settings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = write(tmp_path / "c.toml", '[node]\nid = "file-id"\nrole = "peer"\n')
    rc = daemon_cli.main(
        ["--check-config", "--config", str(conf), "--node-id", "n9", "--listen", "[::]:7000"]
    )
    out = capsys.readouterr().out
    assert rc == 0
    assert "node_id=n9" in out and "listen=[::]:7000" in out and "role=peer" in out


# --------------------------------------------------------------------------- role


@pytest.mark.parametrize(
    ("hostname", "expected"),
    [
        ("n0.sorcha.dev", "hub"),
        ("n12.sorcha.dev", "hub"),
        ("N1.Sorcha.Dev", "hub"),
        ("n0", "peer"),
        ("n0.sorcha.dev.evil.example", "peer"),
        ("peer3.sorcha.dev", "peer"),
    ],
)
def test_auto_role_follows_hostname(tmp_path: Path, hostname: str, expected: str) -> None:
    s = load(tmp_path, hostname=hostname)
    assert s.node.effective_role == expected
    assert s.node.id == hostname.split(".")[0]


def test_auto_role_uses_configured_pattern(tmp_path: Path) -> None:
    text = '[node]\nhub_hostname_pattern = "hub-[a-z]+"\n'
    assert load(tmp_path, text, hostname="hub-east").node.effective_role == "hub"
    assert load(tmp_path, text, hostname="hub-east.x").node.effective_role == "peer"


def test_explicit_role_wins_over_hostname(tmp_path: Path) -> None:
    assert load(tmp_path, '[node]\nrole = "peer"\n', hostname=HUB_HOST).node.effective_role == (
        "peer"
    )
    assert load(tmp_path, '[node]\nrole = "hub"\n', hostname=PEER_HOST).node.effective_role == (
        "hub"
    )


def test_validate_hostname_refuses_mismatched_hub(tmp_path: Path) -> None:
    text = '[node]\nrole = "hub"\nvalidate_hostname = true\n'
    [message] = problems(tmp_path, text, hostname=PEER_HOST)
    assert message.startswith("node.validate_hostname: ")
    assert PEER_HOST in message
    # on a matching host, or for a peer, it is fine
    assert load(tmp_path, text, hostname=HUB_HOST).node.effective_role == "hub"
    peer = '[node]\nrole = "peer"\nvalidate_hostname = true\n'
    assert load(tmp_path, peer, hostname=PEER_HOST).node.effective_role == "peer"


def test_default_node_id_must_be_valid(tmp_path: Path) -> None:
    [message] = problems(tmp_path, "", hostname="bad+host.example")
    assert message.startswith("node.id: ")
    assert load(tmp_path, '[node]\nid = "ok"\n', hostname="bad+host").node.id == "ok"


# ---------------------------------------------------------------- validation, in-process


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[timing]\nheartbeat_interval = -1\n", "timing.heartbeat_interval: must be a positive"),
        ("[timing]\nsync_interval = 0\n", "timing.sync_interval: must be a positive"),
        ("[timing]\nconnect_timeout = nan\n", "timing.connect_timeout: must be a positive"),
        ("[timing]\nheartbeat_timeout = true\n", "timing.heartbeat_timeout: must be a number"),
        ("[timing]\nmissed_heartbeats_for_failover = 0\n", "timing.missed_heartbeats_for_"),
        ("[timing]\nmissed_heartbeats_for_failover = 1.5\n", "must be an integer, got float"),
        ("[limits]\nmax_page_size = 0\n", "limits.max_page_size: must be an integer >= 1"),
        ("[limits]\nmax_document_bytes = 16777217\n", "limits.max_document_bytes: must be"),
        ('[node]\nid = "has space"\n', "node.id: may only contain"),
        ("[node]\nid = 5\n", "node.id: must be a string"),
        ('[node]\nvalidate_hostname = "yes"\n', "node.validate_hostname: must be true or false"),
        ('[node]\nstate_dir = ""\n', "node.state_dir: must not be empty"),
        ('[store]\nbackend = "redis"\n', "store.backend: must be one of sqlite, mongodb"),
        ('[store]\nmongodb_uri = "http://x"\n', "store.mongodb_uri: must start with"),
        ('[store]\nmongodb_database = "a.b"\n', "store.mongodb_database: may not contain"),
        ('[log]\nlevel = "loud"\n', "log.level: must be one of"),
        ("node = 1\n", "node: must be a table"),
        ("hubs = 1\n", "hubs: must be an array of tables"),
        ('[[hubs]]\nid = "n0"\n', "hubs[0].address: required"),
        ('[[hubs]]\nid = "n0"\naddress = "h:0"\n', "hubs[0].address: port must be 1-65535"),
        ('[[hubs]]\nid = "n0"\naddress = "h:1"\nweight = 2\n', "hubs[0].weight: unknown key"),
        (
            '[[hubs]]\nid = "n0"\naddress = "a:1"\n[[hubs]]\nid = "n0"\naddress = "b:1"\n',
            "hubs[1].id: duplicate hub id",
        ),
        (f'[control]\nsocket = "/{"x" * 120}"\n', "control.socket: "),
    ],
)
def test_bad_values_name_their_key(tmp_path: Path, text: str, expected: str) -> None:
    found = problems(tmp_path, text)
    assert any(expected in p for p in found), found


def test_all_problems_are_reported_together(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """
        colour = "red"
        [node]
        colour = "blue"
        role = "boss"
        [timing]
        heartbeat_interval = "30"
        """,
    )
    assert sorted(p.split(":")[0] for p in found) == [
        "colour",
        "node.colour",
        "node.role",
        "timing.heartbeat_interval",
    ]


def test_config_error_lines(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, "[node]\ncolour = 1\n")
    assert info.value.lines() == ["config error: node.colour: unknown key"]
    assert info.value.source == tmp_path / "conf.toml"


def test_bad_flag_names_flag_and_key(tmp_path: Path) -> None:
    [message] = problems(tmp_path, "", overrides={"grpc.listen": "nonsense"})
    assert message.startswith("--listen (grpc.listen): ")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:5000", Address("127.0.0.1", 5000)),
        ("[::1]:5000", Address("::1", 5000)),
        ("n0.sorcha.dev:65535", Address("n0.sorcha.dev", 65535)),
        ("localhost:1", Address("localhost", 1)),
    ],
)
def test_parse_address_good(text: str, expected: Address) -> None:
    assert parse_address(text) == expected
    assert str(parse_address(text)) == text


@pytest.mark.parametrize(
    "text",
    [
        "",
        "host",
        "host:",
        ":5000",
        "host:70000",
        "host:-1",
        "host:5x",
        "::1:5000",
        "[::1]5000",
        "[nope]:1",
        "exa mple:5000",
        "bad_host!:1",
        "a..b:1",
        "host:0",
    ],
)
def test_parse_address_bad(text: str) -> None:
    with pytest.raises(ValueError, match=r"."):
        parse_address(text)


def test_port_zero_only_for_listen() -> None:
    assert parse_address("127.0.0.1:0", allow_port_zero=True).port == 0


def test_parse_settings_is_pure() -> None:
    s = parse_settings({}, env={}, hostname="n3.sorcha.dev", cwd=Path("/w"))
    assert (s.node.id, s.node.effective_role, s.node.state_dir) == ("n3", "hub", Path("/w/var"))


# ---------------------------------------------------------------- exit status, subprocess


EXIT_CASES = {
    "unknown_key": ('[node]\ncolour = "red"\n', "node.colour: unknown key"),
    "unknown_section": ("[tracing]\nx = 1\n", "tracing: unknown key"),
    "string_for_float": (
        '[timing]\nheartbeat_interval = "30"\n',
        "timing.heartbeat_interval: must be a number of seconds, got string '30'",
    ),
    "bool_for_int": (
        "[limits]\nmax_page_size = true\n",
        "limits.max_page_size: must be an integer, got boolean true",
    ),
    "address_no_port": ('[grpc]\nlisten = "127.0.0.1"\n', "grpc.listen: must be host:port"),
    "address_port_range": ('[grpc]\nlisten = "127.0.0.1:70000"\n', "grpc.listen: port must be"),
    "address_garbage_host": ('[grpc]\nlisten = "no such host:5000"\n', "grpc.listen: "),
    "bad_regex": ('[node]\nhub_hostname_pattern = "n[0-9"\n', "node.hub_hostname_pattern: not"),
    "bad_role": ('[node]\nrole = "leader"\n', "node.role: must be one of hub, peer, auto"),
    "backoff_order": (
        "[timing]\nbackoff_initial = 10\nbackoff_max = 5\n",
        "timing.backoff_max: must be >= timing.backoff_initial",
    ),
    "toml_syntax": ('[node]\nid = "n0"\nrole = \n', "TOML syntax error"),
}


@pytest.mark.parametrize("case", sorted(EXIT_CASES))
def test_check_config_exits_78_naming_the_key(tmp_path: Path, case: str) -> None:
    text, expected = EXIT_CASES[case]
    conf = write(tmp_path / "c.toml", text)
    result = check_config("--config", str(conf), cwd=tmp_path)
    assert result.returncode == EX_CONFIG, result
    assert expected in result.stderr, result.stderr
    assert result.stdout == ""


def test_toml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    conf = write(tmp_path / "c.toml", '[node]\nid = "n0"\nrole = \n')
    result = check_config("--config", str(conf), cwd=tmp_path)
    assert result.returncode == EX_CONFIG
    assert str(conf) in result.stderr and "line 3" in result.stderr, result.stderr


def test_missing_explicit_config_exits_78(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    result = check_config("--config", str(missing), cwd=tmp_path)
    assert result.returncode == EX_CONFIG
    assert f"--config: {missing}: no such file" in result.stderr


def test_bad_flag_value_exits_78(tmp_path: Path) -> None:
    conf = write(tmp_path / "c.toml", "")
    result = check_config("--config", str(conf), "--listen", "nonsense", cwd=tmp_path)
    assert result.returncode == EX_CONFIG
    assert "--listen (grpc.listen): must be host:port" in result.stderr


def test_check_config_good_file_exits_0(tmp_path: Path) -> None:
    text = '[node]\nid = "n0"\nrole = "hub"\n[grpc]\nlisten = "[::1]:0"\n'
    conf = write(tmp_path / "c.toml", text)
    result = check_config("--config", str(conf), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("\n") == 1
    assert "role=hub node_id=n0 listen=[::1]:0 store=sqlite" in result.stdout
    assert result.stderr == ""


# --------------------------------------------------------------------------- other entry points


def test_daemon_hands_settings_and_a_reloader_to_run_daemon(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sorcha_peerd.daemon as daemon_module
    from sorcha_peerd.runtime import DaemonContext

    seen: list[tuple[Settings, DaemonContext | None]] = []

    def fake_run(settings: Settings, context: DaemonContext | None = None) -> int:
        seen.append((settings, context))
        return 3

    monkeypatch.setattr(daemon_module, "run_daemon", fake_run)
    conf = write(tmp_path / "c.toml", '[node]\nid = "p1"\nrole = "peer"\n')
    assert daemon_cli.main(["--config", str(conf), "--state-dir", str(tmp_path)]) == 3
    ((settings, context),) = seen
    assert settings.node.id == "p1"
    assert context is not None and context.load_settings is not None
    # the reloader reads the same file (and flags) again
    conf.write_text('[node]\nid = "p1"\nrole = "peer"\n[log]\nlevel = "debug"\n')
    again = context.load_settings()
    assert again.log.level == "debug" and again.node.state_dir == settings.node.state_dir


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        daemon_cli.main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith("sorcha-peerd ")


def test_peerctl_unreachable_daemon(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "x.sock"
    assert peerctl.main(["--socket", str(missing), "status"]) == 2
    assert f"cannot reach the daemon at {missing}" in capsys.readouterr().err


# ---------------------------------------------------------------- [telemetry]


def test_telemetry_defaults(tmp_path: Path) -> None:
    settings = load(tmp_path)
    assert settings.telemetry.exporter == "none"
    assert settings.telemetry.endpoint is None
    assert settings.telemetry.service_name == "sorcha-peerd"


def test_telemetry_section_is_read(tmp_path: Path) -> None:
    settings = load(
        tmp_path,
        """
        [telemetry]
        exporter = "OTLP"
        endpoint = "http://collector.sorcha.dev:4318"
        service_name = "sorcha-peerd-eu"
        """,
    )
    assert settings.telemetry.exporter == "otlp"
    assert settings.telemetry.endpoint == "http://collector.sorcha.dev:4318"
    assert settings.telemetry.service_name == "sorcha-peerd-eu"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[telemetry]\nexporter = "jaeger"\n', "telemetry.exporter: must be one of none, otlp"),
        ("[telemetry]\nexporter = 1\n", "telemetry.exporter: must be a string"),
        (
            '[telemetry]\nexporter = "otlp"\nendpoint = "collector:4318"\n',
            "telemetry.endpoint: must be an http:// or https:// URL",
        ),
        (
            '[telemetry]\nexporter = "otlp"\nendpoint = "http://c:99999"\n',
            "telemetry.endpoint: not a valid URL",
        ),
        ('[telemetry]\nendpoint = "http://c:4318"\n', "telemetry.endpoint: is set but telemetry"),
        ('[telemetry]\nservice_name = ""\n', "telemetry.service_name: must not be empty"),
        ('[telemetry]\nprotocol = "grpc"\n', "telemetry.protocol: unknown key"),
        ("telemetry = 1\n", "telemetry: must be a table"),
    ],
)
def test_bad_telemetry_values_name_their_key(tmp_path: Path, text: str, expected: str) -> None:
    found = problems(tmp_path, text)
    assert any(expected in p for p in found), found


def test_bad_telemetry_exporter_exits_78(tmp_path: Path) -> None:
    conf = write(tmp_path / "c.toml", '[telemetry]\nexporter = "zipkin"\n')
    result = check_config("--config", str(conf), cwd=tmp_path)
    assert result.returncode == EX_CONFIG, result
    assert "telemetry.exporter: must be one of none, otlp" in result.stderr, result.stderr
