"""sorcha-peerctl as an operator runs it: a subprocess against a server in this trio loop."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from sorcha_peerd.control import ControlServer
from sorcha_peerd.store.sqlite import SqliteRegisterStore
from tests.control.conftest import StoreBackend


async def peerctl(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if k not in ("CONFIGURATION_DIRECTORY",)}
    env["USER"] = "tester"
    with trio.fail_after(30):
        return await trio.run_process(
            [sys.executable, "-m", "sorcha_peerd.cli.peerctl", *map(str, args)],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=env,
            cwd=cwd,
        )


def lines(data: bytes) -> list[str]:
    return data.decode().splitlines()


@pytest.fixture
def sock(server: ControlServer) -> str:
    return str(server.socket_path)


async def test_status(sock: str, store: SqliteRegisterStore) -> None:
    await store.publish("a", b"{}", published_by="t")
    text = await peerctl("--socket", sock, "status")
    assert text.returncode == 0, text.stderr
    assert lines(text.stdout)[:5] == [
        "role: hub",
        "node_id: n0",
        "status: ok",
        "version: 1",
        "blueprints: 1",
    ]
    assert "store.backend: sqlite" in lines(text.stdout)
    as_json = await peerctl("--socket", sock, "status", "--json")
    assert as_json.returncode == 0
    status = json.loads(as_json.stdout)
    assert {
        "role": "hub",
        "node_id": "n0",
        "status": "ok",
        "version": 1,
        "blueprints": 1,
    }.items() <= status.items()


async def test_socket_from_config_file(sock: str, tmp_path: Path) -> None:
    config = tmp_path / "peerd.toml"
    config.write_text(f'[node]\nid = "n0"\n[control]\nsocket = "{sock}"\n')
    result = await peerctl("--config", config, "status", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["node_id"] == "n0"


async def test_unreachable_daemon_exits_2(sock_dir: Path, tmp_path: Path) -> None:
    missing = sock_dir / "nobody.sock"
    result = await peerctl("--socket", missing, "status")
    assert result.returncode == 2
    assert lines(result.stderr) == [
        f"sorcha-peerctl: cannot reach the daemon at {missing}: No such file or directory"
    ]
    bad_config = tmp_path / "bad.toml"
    bad_config.write_text("[control]\nsocket = 5\n")
    result = await peerctl("--config", bad_config, "status")
    assert result.returncode == 2
    assert "control.socket" in result.stderr.decode()


async def test_blueprints_table_and_json(sock: str, store: SqliteRegisterStore) -> None:
    await store.publish("alpha", b'{"a": 1}', published_by="alice", published_at=1_700_000_000_000)
    await store.publish("beta", b"{}", published_by="bob", metadata={"k": "v"})
    await store.deprecate("beta", deprecated_by="carol")
    table = await peerctl("--socket", sock, "blueprints")
    assert table.returncode == 0, table.stderr
    rows = [row.split() for row in lines(table.stdout)]
    assert rows[0] == ["ID", "VERSION", "ACTIVE", "PUBLISHED_AT", "PUBLISHED_BY", "CHECKSUM"]
    alpha = await store.get("alpha")
    assert alpha is not None
    assert rows[1:] == [
        ["alpha", "1", "yes", "2023-11-14T22:13:20Z", "alice", alpha.checksum[7:19]]
    ]
    every = await peerctl("--socket", sock, "blueprints", "--all", "--json")
    listed = json.loads(every.stdout)
    assert [(b["id"], b["version"], b["is_active"]) for b in listed] == [
        ("alpha", 1, True),
        ("beta", 3, False),
    ]
    assert listed[1]["published_by"] == "carol" and listed[1]["metadata"] == {"k": "v"}
    assert {"checksum", "published_at"} <= set(listed[0])


async def test_get_prints_the_document_exactly(sock: str, store: SqliteRegisterStore) -> None:
    document = '{"id":"g","name":"Zoë \\"q\\""}\n\n  '.encode()
    await store.publish("g", document, published_by="t")
    result = await peerctl("--socket", sock, "get", "g")
    assert result.returncode == 0
    assert result.stdout == document
    missing = await peerctl("--socket", sock, "get", "nope")
    assert missing.returncode == 1
    assert lines(missing.stderr) == ["sorcha-peerctl: no blueprint 'nope'"]


async def test_publish_one_file_with_id_and_metadata(
    sock: str, store: SqliteRegisterStore, tmp_path: Path
) -> None:
    path = tmp_path / "doc.json"
    path.write_bytes(b'{"title": "no id inside"}')
    result = await peerctl(
        "--socket",
        sock,
        "publish",
        path,
        "--id",
        "given",
        "--meta",
        "team=core",
        "--meta",
        "note=a=b",
        "--publisher",
        "alice",
    )
    assert result.returncode == 0, result.stderr
    assert lines(result.stdout) == [f"{path}: given version 1"]
    entry = await store.get("given")
    assert entry is not None
    assert entry.document == path.read_bytes()
    assert dict(entry.metadata) == {"team": "core", "note": "a=b"}
    assert entry.published_by == "alice"


async def test_publish_many_files_ids_from_documents(
    sock: str, store: SqliteRegisterStore, tmp_path: Path
) -> None:
    paths = []
    for i in range(40):
        path = tmp_path / f"bp{i}.json"
        path.write_text(json.dumps({"id": f"bp-{i}", "n": i}))
        paths.append(path)
    result = await peerctl("--socket", sock, "publish", *paths)
    assert result.returncode == 0, result.stderr
    assert len(lines(result.stdout)) == 40
    assert lines(result.stdout)[39] == f"{paths[39]}: bp-39 version 40"
    assert await store.counts() == (40, 40)
    entry = await store.get("bp-7")
    assert entry is not None and entry.published_by == "tester"  # $USER


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"{not json", "the document is not JSON"),
        (b"\xff{}", "the document is not UTF-8"),
        (b"", "the document must not be empty"),
        (b'{"name": "x"}', 'the document has no top-level "id"; give one with --id'),
        (b"[1, 2]", 'the document has no top-level "id"; give one with --id'),
        (b'{"id": 42}', 'the document\'s "id" must be a string'),
        (b'{"id": "has space"}', "blueprint id 'has space' may only contain"),
        (json.dumps({"id": "x" * 300}).encode(), "is 300 characters, at most 255 allowed"),
    ],
)
async def test_one_bad_file_publishes_nothing(
    sock: str, store: SqliteRegisterStore, tmp_path: Path, content: bytes, problem: str
) -> None:
    good = tmp_path / "good.json"
    good.write_text('{"id": "good"}')
    bad = tmp_path / "bad.json"
    bad.write_bytes(content)
    result = await peerctl("--socket", sock, "publish", good, bad, good.with_name("later.json"))
    assert result.returncode == 1
    [line] = lines(result.stderr)
    assert line.startswith(f"sorcha-peerctl: {bad}: ")
    assert problem in line
    assert result.stdout == b""
    assert await store.counts() == (0, 0)


async def test_publish_refusals(sock: str, store: SqliteRegisterStore, tmp_path: Path) -> None:
    a = tmp_path / "a.json"
    a.write_text('{"id": "same"}')
    b = tmp_path / "b.json"
    b.write_text('{"id": "same", "v": 2}')
    cases = [
        (["publish", a, b], f"sorcha-peerctl: {b}: blueprint id 'same' is also in {a}"),
        (
            ["publish", a, b, "--id", "x"],
            "sorcha-peerctl: --id can only be used with a single file",
        ),
        (
            ["publish", a, "--meta", "novalue"],
            "sorcha-peerctl: --meta 'novalue': must be KEY=VALUE",
        ),
        (
            ["publish", tmp_path / "missing.json"],
            f"sorcha-peerctl: {tmp_path / 'missing.json'}: cannot read: No such file or directory",
        ),
    ]
    for args, message in cases:
        result = await peerctl("--socket", sock, *args)
        assert (result.returncode, lines(result.stderr)) == (1, [message])
    assert await store.counts() == (0, 0)


async def test_publish_refused_by_a_peer(
    nursery: trio.Nursery, sock_dir: Path, store: SqliteRegisterStore, tmp_path: Path
) -> None:
    srv = ControlServer(sock_dir / "peer.sock", StoreBackend(store, role="peer"))
    await nursery.start(srv.serve)
    doc = tmp_path / "d.json"
    doc.write_text('{"id": "d"}')
    result = await peerctl("--socket", srv.socket_path, "publish", doc)
    assert result.returncode == 1
    assert lines(result.stderr) == [f"sorcha-peerctl: {doc}: this node is a peer; publish on a hub"]


async def test_deprecate(sock: str, store: SqliteRegisterStore) -> None:
    await store.publish("old", b"{}", published_by="t")
    result = await peerctl("--socket", sock, "deprecate", "old", "--by", "ops")
    assert result.returncode == 0, result.stderr
    assert lines(result.stdout) == ["old deprecated at version 2"]
    entry = await store.get("old")
    assert entry is not None and not entry.is_active and entry.published_by == "ops"
    missing = await peerctl("--socket", sock, "deprecate", "ghost")
    assert (missing.returncode, lines(missing.stderr)) == (
        1,
        ["sorcha-peerctl: no blueprint 'ghost'"],
    )


async def test_usage_error_is_not_exit_2(sock: str) -> None:
    result = await peerctl("--socket", sock, "frobnicate")
    assert result.returncode == 1


async def test_sync_command(
    nursery: trio.Nursery, sock_dir: Path, store: SqliteRegisterStore
) -> None:
    for node_id, code, out in (("p1", 0, "full sync done: version 0"), ("isolated", 1, "")):
        backend = StoreBackend(store, role="peer", node_id=node_id)
        srv = ControlServer(sock_dir / f"{node_id}.sock", backend)
        await nursery.start(srv.serve)
        result = await peerctl("--socket", srv.socket_path, "sync", "--full")
        assert result.returncode == code, result.stderr
        assert result.stdout.decode().startswith(out)
        if code:
            assert "no hub reachable" in result.stderr.decode()


async def test_sync_on_a_hub_is_refused(sock: str) -> None:
    refused = await peerctl("--socket", sock, "sync")
    assert refused.returncode == 1
    assert "hub" in refused.stderr.decode()
