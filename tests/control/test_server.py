"""The control server on a real unix socket: framing, methods, errors, lifecycle.

Requests are sent as raw bytes (the framing is what any varlink client sees)
and through the PyPI ``varlink`` package, an independent implementation.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import stat
from pathlib import Path
from typing import Any

import pytest
import trio
import varlink

from sorcha_peerd.control import (
    IDL,
    ControlClient,
    ControlError,
    ControlServer,
    ControlService,
    ControlSocketError,
    ControlSocketInUse,
    DaemonUnreachable,
)
from sorcha_peerd.control.interface import SERVICE_IDL
from sorcha_peerd.store.sqlite import SqliteRegisterStore
from tests.control.conftest import StoreBackend

DOC = b'{"id": "bp-1", "title": "caf\xc3\xa9"}'


class Raw:
    """A bare socket: bytes in, NUL-terminated JSON out, nothing else."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buf = b""

    @classmethod
    async def open(cls, path: Path) -> Raw:
        return cls(await trio.open_unix_socket(os.fspath(path)))

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def reply(self) -> dict[str, Any]:
        with trio.fail_after(5):
            while b"\0" not in self.buf:
                chunk = await self.stream.receive_some(65536)
                if not chunk:
                    raise EOFError(self.buf)
                self.buf += chunk
        message, _, self.buf = self.buf.partition(b"\0")
        value = json.loads(message)
        assert isinstance(value, dict)
        return value

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        await self.send(json.dumps({"method": method, "parameters": params}).encode() + b"\0")
        return await self.reply()

    async def closed(self) -> bool:
        """True once the server closed (a reset counts: it closed with our bytes unread)."""
        with trio.fail_after(5):
            try:
                return await self.stream.receive_some(1) == b""
            except trio.BrokenResourceError:
                return True


async def still_serving(server: ControlServer) -> None:
    raw = await Raw.open(server.socket_path)
    answer = await raw.call("io.sorcha.peerd.Status")
    assert answer["parameters"]["status"]["role"] == "hub"
    await raw.stream.aclose()


# --------------------------------------------------------------------------- framing


async def test_pipelined_and_split_requests_are_answered_in_order(server: ControlServer) -> None:
    raw = await Raw.open(server.socket_path)
    status = json.dumps({"method": "io.sorcha.peerd.Status"}).encode() + b"\0"
    info = json.dumps({"method": "org.varlink.service.GetInfo", "parameters": {}}).encode()
    await raw.send(status + status[:10])
    await raw.send(status[10:] + info[:5])
    await trio.sleep(0.01)
    await raw.send(info[5:] + b"\0")
    first, second, third = await raw.reply(), await raw.reply(), await raw.reply()
    assert first == second
    assert set(first) == {"parameters"}
    assert first["parameters"]["status"]["node_id"] == "n0"
    assert third["parameters"]["product"] == "sorcha-peerd"


async def test_publish_get_list_deprecate_raw(server: ControlServer) -> None:
    raw = await Raw.open(server.socket_path)
    published = await raw.call(
        "io.sorcha.peerd.Publish",
        id="bp-1",
        document=DOC.decode(),
        publisher="alice",
        metadata={"team": "x"},
    )
    bp = published["parameters"]["blueprint"]
    assert bp["id"] == "bp-1" and bp["version"] == 1 and bp["is_active"] is True
    assert bp["published_by"] == "alice" and bp["metadata"] == {"team": "x"}
    assert bp["checksum"].startswith("sha256:") and isinstance(bp["published_at"], int)
    assert bp["publication_transaction_id"]

    got = (await raw.call("io.sorcha.peerd.GetBlueprint", id="bp-1"))["parameters"]
    assert got["document"].encode() == DOC
    assert got["blueprint"] == bp

    gone = await raw.call("io.sorcha.peerd.Deprecate", id="bp-1", deprecated_by="bob")
    assert gone["parameters"]["blueprint"]["is_active"] is False
    assert gone["parameters"]["blueprint"]["version"] == 2

    active = (await raw.call("io.sorcha.peerd.ListBlueprints"))["parameters"]
    assert active == {"blueprints": [], "next_after_version": 0}
    every = (await raw.call("io.sorcha.peerd.ListBlueprints", all=True))["parameters"]
    assert [b["id"] for b in every["blueprints"]] == ["bp-1"]
    assert every["next_after_version"] == 2


async def test_publish_without_publisher_records_the_calling_user(server: ControlServer) -> None:
    import pwd

    raw = await Raw.open(server.socket_path)
    answer = await raw.call("io.sorcha.peerd.Publish", id="bp-1", document="{}")
    assert answer["parameters"]["blueprint"]["published_by"] == pwd.getpwuid(os.getuid()).pw_name


async def test_list_pages(server: ControlServer, store: SqliteRegisterStore) -> None:
    for i in range(25):
        await store.publish(f"bp-{i}", b"{}", published_by="t", metadata={"n": str(i)})
    await store.deprecate("bp-3", deprecated_by="t")
    raw = await Raw.open(server.socket_path)
    seen: list[str] = []
    after = 0
    pages = 0
    while True:
        page = (await raw.call("io.sorcha.peerd.ListBlueprints", after_version=after, limit=10))[
            "parameters"
        ]
        pages += 1
        seen.extend(b["id"] for b in page["blueprints"])
        after = page["next_after_version"]
        if len(page["blueprints"]) < 10:
            break
    assert pages == 3
    assert len(seen) == 24 and "bp-3" not in seen
    versions = await raw.call("io.sorcha.peerd.ListBlueprints", all=True, limit=100)
    assert [b["version"] for b in versions["parameters"]["blueprints"]] == [
        *range(1, 4),
        *range(5, 26),
        26,
    ]


async def test_oneway_call_gets_no_reply(server: ControlServer, store: SqliteRegisterStore) -> None:
    raw = await Raw.open(server.socket_path)
    call = {
        "method": "io.sorcha.peerd.Publish",
        "oneway": True,
        "parameters": {"id": "quiet", "document": "{}", "publisher": "t"},
    }
    await raw.send(json.dumps(call).encode() + b"\0")
    answer = await raw.call("io.sorcha.peerd.GetBlueprint", id="quiet")
    assert answer["parameters"]["blueprint"]["id"] == "quiet"


async def test_more_flag_gets_a_single_final_reply(server: ControlServer) -> None:
    raw = await Raw.open(server.socket_path)
    await raw.send(b'{"method": "io.sorcha.peerd.Status", "more": true}\0')
    answer = await raw.reply()
    assert "continues" not in answer and answer["parameters"]["status"]["role"] == "hub"


async def test_many_clients_at_once(server: ControlServer) -> None:
    results: list[int] = []

    async def client(n: int) -> None:
        async with await ControlClient.connect(server.socket_path, timeout=5) as c:
            for k in range(5):
                reply = await c.call(
                    "io.sorcha.peerd.Publish",
                    {"id": f"c{n}-{k}", "document": "{}", "publisher": "t"},
                )
                results.append(reply["blueprint"]["version"])

    async with trio.open_nursery() as nursery:
        for n in range(20):
            nursery.start_soon(client, n)
    assert sorted(results) == list(range(1, 101))


# --------------------------------------------------------------------------- service interface


async def test_get_info_and_descriptions(server: ControlServer) -> None:
    raw = await Raw.open(server.socket_path)
    info = (await raw.call("org.varlink.service.GetInfo"))["parameters"]
    assert info["interfaces"] == ["org.varlink.service", "io.sorcha.peerd"]
    assert {"vendor", "product", "version", "url"} <= set(info)
    own = await raw.call("org.varlink.service.GetInterfaceDescription", interface="io.sorcha.peerd")
    assert own["parameters"]["description"] == IDL
    std = await raw.call(
        "org.varlink.service.GetInterfaceDescription", interface="org.varlink.service"
    )
    assert std["parameters"]["description"] == SERVICE_IDL
    missing = await raw.call("org.varlink.service.GetInterfaceDescription", interface="a.b")
    assert missing == {
        "error": "org.varlink.service.InterfaceNotFound",
        "parameters": {"interface": "a.b"},
    }


def test_idl_parses_and_matches_the_implemented_methods() -> None:
    interface = varlink.Interface(IDL)
    assert interface.name == "io.sorcha.peerd"
    methods = {
        f"io.sorcha.peerd.{name}"
        for name, member in interface.members.items()
        if type(member).__name__ == "_Method"
    }
    implemented = ControlService(Broken(RuntimeError())).methods
    service = {m for m in implemented if m.startswith("io.sorcha.peerd.")}
    assert methods == service
    errors = {name for name, m in interface.members.items() if type(m).__name__ == "_Error"}
    assert errors == {
        "NotFound",
        "InvalidArgument",
        "NotSupported",
        "SyncFailed",
        "ConfigInvalid",
        "StoreUnavailable",
        "InternalError",
        "InvalidRequest",
    }
    varlink.Interface(SERVICE_IDL)


async def test_python_varlink_client(server: ControlServer) -> None:
    address = f"unix:{server.socket_path}"

    def session() -> dict[str, Any]:
        out: dict[str, Any] = {}
        with varlink.Client(address=address) as client:
            out["interfaces"] = client.get_interfaces()
            with client.open("io.sorcha.peerd") as conn:
                out["published"] = conn.Publish("vl-1", '{"a": 1}', "varlink", {"k": "v"})[
                    "blueprint"
                ]
                out["got"] = conn.GetBlueprint("vl-1")
                out["status"] = conn.Status()["status"]
                out["list"] = conn.ListBlueprints(limit=5)
                out["deprecated"] = conn.Deprecate("vl-1")["blueprint"]
                try:
                    conn.GetBlueprint("nope")
                except varlink.VarlinkError as exc:
                    out["error"] = (exc.error(), exc.parameters())
        return out

    out = await trio.to_thread.run_sync(session)
    assert "io.sorcha.peerd" in out["interfaces"]
    assert out["published"]["metadata"] == {"k": "v"}
    assert out["got"]["document"] == '{"a": 1}'
    assert out["status"]["blueprints"] == 1
    assert [b["id"] for b in out["list"]["blueprints"]] == ["vl-1"]
    assert out["list"]["next_after_version"] == 1
    assert out["deprecated"]["is_active"] is False
    assert out["error"] == ("io.sorcha.peerd.NotFound", {"id": "nope"})


# --------------------------------------------------------------------------- errors


class Broken:
    """A backend whose every method raises the exception it was given."""

    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    async def status(self) -> Any:
        raise self.exc

    async def list_blueprints(self, **kwargs: Any) -> Any:
        raise self.exc

    async def get_blueprint(self, blueprint_id: str) -> Any:
        raise self.exc

    async def publish(self, *args: Any, **kwargs: Any) -> Any:
        raise self.exc

    async def deprecate(self, *args: Any, **kwargs: Any) -> Any:
        raise self.exc


async def test_validation_error_is_invalid_argument(server: ControlServer) -> None:
    raw = await Raw.open(server.socket_path)
    bad_id = await raw.call("io.sorcha.peerd.Publish", id="a b", document="{}", publisher="t")
    assert bad_id["error"] == "io.sorcha.peerd.InvalidArgument"
    assert bad_id["parameters"]["field"] == "blueprint_id"
    assert "A-Z" in bad_id["parameters"]["reason"]
    not_json = await raw.call("io.sorcha.peerd.Publish", id="a", document="{", publisher="t")
    assert not_json["parameters"]["field"] == "blueprint_document"
    surrogate = b'{"method":"io.sorcha.peerd.Publish","parameters":{"id":"a","document":"\\ud800"}}'
    await raw.send(surrogate + b"\0")
    assert (await raw.reply())["parameters"]["field"] == "blueprint_document"
    for params, field in [
        ({"limit": 0}, "limit"),
        ({"limit": 10001}, "limit"),
        ({"after_version": -1}, "after_version"),
    ]:
        answer = await raw.call("io.sorcha.peerd.ListBlueprints", **params)
        assert answer["error"] == "io.sorcha.peerd.InvalidArgument"
        assert answer["parameters"]["field"] == field


async def test_not_found(server: ControlServer) -> None:
    raw = await Raw.open(server.socket_path)
    for method in ("GetBlueprint", "Deprecate"):
        answer = await raw.call(f"io.sorcha.peerd.{method}", id="ghost")
        assert answer == {"error": "io.sorcha.peerd.NotFound", "parameters": {"id": "ghost"}}


async def test_not_supported_on_a_peer(
    nursery: trio.Nursery, sock_dir: Path, store: SqliteRegisterStore
) -> None:
    srv = ControlServer(sock_dir / "c.sock", StoreBackend(store, role="peer"))
    await nursery.start(srv.serve)
    raw = await Raw.open(srv.socket_path)
    answer = await raw.call("io.sorcha.peerd.Publish", id="x", document="{}")
    assert answer == {
        "error": "io.sorcha.peerd.NotSupported",
        "parameters": {"reason": "this node is a peer; publish on a hub"},
    }


async def test_store_error_is_store_unavailable(
    server: ControlServer, store: SqliteRegisterStore
) -> None:
    await store.aclose()
    raw = await Raw.open(server.socket_path)
    answer = await raw.call("io.sorcha.peerd.GetBlueprint", id="x")
    assert answer["error"] == "io.sorcha.peerd.StoreUnavailable"
    assert "not open" in answer["parameters"]["reason"]


async def test_unexpected_error_is_internal_and_logged(
    nursery: trio.Nursery, sock_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    srv = ControlServer(sock_dir / "c.sock", Broken(RuntimeError("secret detail")))
    await nursery.start(srv.serve)
    raw = await Raw.open(srv.socket_path)
    with caplog.at_level(logging.ERROR):
        answer = await raw.call("io.sorcha.peerd.Status")
    assert answer == {"error": "io.sorcha.peerd.InternalError", "parameters": {}}
    assert "secret detail" in caplog.text and "Traceback" in caplog.text
    await still_serving_raw(raw)


async def still_serving_raw(raw: Raw) -> None:
    info = await raw.call("org.varlink.service.GetInfo")
    assert info["parameters"]["product"] == "sorcha-peerd"


async def test_unencodable_status_is_internal_error(
    nursery: trio.Nursery, sock_dir: Path, store: SqliteRegisterStore
) -> None:
    class OddBackend(StoreBackend):
        async def status(self) -> Any:
            return {"role": "hub", "when": object()}

    srv = ControlServer(sock_dir / "c.sock", OddBackend(store))
    await nursery.start(srv.serve)
    raw = await Raw.open(srv.socket_path)
    assert (await raw.call("io.sorcha.peerd.Status"))["error"] == "io.sorcha.peerd.InternalError"
    await still_serving_raw(raw)


@pytest.mark.parametrize(
    ("method", "params", "parameter"),
    [
        ("GetBlueprint", {}, "id"),
        ("GetBlueprint", {"id": 5}, "id"),
        ("Publish", {"id": "a"}, "document"),
        ("Publish", {"id": "a", "document": {"x": 1}}, "document"),
        ("Publish", {"id": "a", "document": "{}", "metadata": {"k": 1}}, "metadata"),
        ("Publish", {"id": "a", "document": "{}", "metadata": ["k"]}, "metadata"),
        ("Publish", {"id": "a", "document": "{}", "publisher": 7}, "publisher"),
        ("ListBlueprints", {"all": "yes"}, "all"),
        ("ListBlueprints", {"limit": "10"}, "limit"),
        ("ListBlueprints", {"limit": True}, "limit"),
        ("ListBlueprints", {"after_version": 1.5}, "after_version"),
        ("ListBlueprints", {"after": 3}, "after"),
        ("Status", {"verbose": True}, "verbose"),
        ("Deprecate", {"id": "a", "deprecated_by": False}, "deprecated_by"),
    ],
)
async def test_missing_or_ill_typed_parameter(
    server: ControlServer, method: str, params: dict[str, Any], parameter: str
) -> None:
    raw = await Raw.open(server.socket_path)
    answer = await raw.call(f"io.sorcha.peerd.{method}", **params)
    assert answer == {
        "error": "org.varlink.service.InvalidParameter",
        "parameters": {"parameter": parameter},
    }


async def test_unknown_method_and_interface(server: ControlServer) -> None:
    raw = await Raw.open(server.socket_path)
    assert await raw.call("io.sorcha.peerd.Explode") == {
        "error": "org.varlink.service.MethodNotFound",
        "parameters": {"method": "io.sorcha.peerd.Explode"},
    }
    assert await raw.call("org.example.Ping") == {
        "error": "org.varlink.service.InterfaceNotFound",
        "parameters": {"interface": "org.example"},
    }


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (b"this is not json", "not JSON"),
        (b"\xff\xfe", "not UTF-8"),
        (b"[1, 2, 3]", "must be a JSON object"),
        (b'"Status"', "must be a JSON object"),
        (b"{}", "'method'"),
        (b'{"method": 5}', "'method'"),
        (b'{"method": "Status"}', "'method'"),
        (b'{"method": "io.sorcha.peerd.Status", "parameters": [1]}', "'parameters'"),
        (b'{"method": "io.sorcha.peerd.Status", "oneway": "yes"}', "'oneway'"),
        (b'{"method": "io.sorcha.peerd.Status", "upgrade": true}', "upgrade"),
        (b"[" * 100_000, "nested too deeply"),
        (b"", "not JSON"),
    ],
)
async def test_garbage_gets_an_error_and_the_connection_goes_on(
    server: ControlServer, message: bytes, reason: str
) -> None:
    raw = await Raw.open(server.socket_path)
    await raw.send(message + b"\0")
    answer = await raw.reply()
    assert answer["error"] == "io.sorcha.peerd.InvalidRequest"
    assert reason in answer["parameters"]["reason"]
    await still_serving_raw(raw)


async def test_oversized_message_is_refused_and_closed(
    nursery: trio.Nursery, sock_dir: Path, backend: StoreBackend
) -> None:
    srv = ControlServer(sock_dir / "c.sock", backend, max_message_bytes=100_000)
    await nursery.start(srv.serve)
    raw = await Raw.open(srv.socket_path)
    with pytest.raises(trio.BrokenResourceError):  # the server may close while we still send
        await raw.send(b'{"method": "io.sorcha.peerd.Status", "x": "' + b"a" * 10_000_000)
    answer = await raw.reply()
    assert answer["error"] == "io.sorcha.peerd.InvalidRequest"
    assert "100000-byte limit" in answer["parameters"]["reason"]
    assert await raw.closed()
    # A whole message just over the limit, NUL included, is refused the same way.
    raw = await Raw.open(srv.socket_path)
    await raw.send(b" " * 100_001 + b"\0")
    assert (await raw.reply())["error"] == "io.sorcha.peerd.InvalidRequest"
    await still_serving(srv)


async def test_client_closing_mid_message_or_silently(server: ControlServer) -> None:
    raw = await Raw.open(server.socket_path)
    await raw.send(b'{"method": "io.sorcha.peerd.Sta')
    await raw.stream.aclose()
    raw = await Raw.open(server.socket_path)
    await raw.stream.aclose()
    raw = await Raw.open(server.socket_path)
    await raw.send(b'{"method": "io.sorcha.peerd.Status"}\0')
    await raw.stream.aclose()  # gone before the reply
    await still_serving(server)


# --------------------------------------------------------------------------- lifecycle


async def test_socket_mode_and_directory(server: ControlServer) -> None:
    st = server.socket_path.stat()
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600  # the control socket: owner only
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(server.socket_path.parent.stat().st_mode) == 0o750 & ~umask


async def test_the_status_socket_only_reads(
    nursery: trio.Nursery, sock_dir: Path, backend: StoreBackend, store: SqliteRegisterStore
) -> None:
    from sorcha_peerd.control import STATUS_SOCKET_MODE

    srv = ControlServer(sock_dir / "status.sock", backend, mode=STATUS_SOCKET_MODE, read_only=True)
    await nursery.start(srv.serve)
    assert stat.S_IMODE(srv.socket_path.stat().st_mode) == 0o660  # group: monitoring
    raw = await Raw.open(srv.socket_path)
    assert "status" in (await raw.call("io.sorcha.peerd.Status"))["parameters"]
    assert "blueprints" in (await raw.call("io.sorcha.peerd.ListBlueprints"))["parameters"]
    for method, params in (
        ("io.sorcha.peerd.Publish", {"id": "x", "document": "{}"}),
        ("io.sorcha.peerd.Deprecate", {"id": "x"}),
        ("io.sorcha.peerd.Sync", {}),
        ("io.sorcha.peerd.Reload", {}),
    ):
        reply = await raw.call(method, **params)
        assert reply["error"] == "org.varlink.service.PermissionDenied", reply
    assert await store.counts() == (0, 0)


async def test_stale_socket_is_replaced(
    nursery: trio.Nursery, sock_dir: Path, backend: StoreBackend
) -> None:
    path = sock_dir / "c.sock"
    leftover = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    leftover.bind(os.fspath(path))
    leftover.close()  # the file stays; nothing listens: a crashed daemon's socket
    srv = ControlServer(path, backend)
    await nursery.start(srv.serve)
    await still_serving(srv)


async def test_live_socket_is_refused(server: ControlServer, backend: StoreBackend) -> None:
    second = ControlServer(server.socket_path, backend)
    with pytest.raises(ControlSocketInUse, match="is in use by another daemon"):
        await second.serve()
    await still_serving(server)


async def test_path_that_is_not_a_socket_is_left_alone(
    sock_dir: Path, backend: StoreBackend
) -> None:
    path = sock_dir / "c.sock"
    path.write_text("precious")
    with pytest.raises(ControlSocketError, match="not a socket"):
        await ControlServer(path, backend).serve()
    assert path.read_text() == "precious"


async def test_socket_removed_on_exit_even_with_a_client_connected(
    sock_dir: Path, backend: StoreBackend
) -> None:
    path = sock_dir / "c.sock"
    async with trio.open_nursery() as nursery:
        await nursery.start(ControlServer(path, backend).serve)
        raw = await Raw.open(path)
        await raw.send(b'{"method": "io.sorcha.peerd.Sta')  # a connection mid-message
        nursery.cancel_scope.cancel()
    assert not path.exists()
    assert await raw.closed()


# --------------------------------------------------------------------------- client


async def test_client_raises_control_error(server: ControlServer) -> None:
    async with await ControlClient.connect(server.socket_path) as client:
        with pytest.raises(ControlError) as caught:
            await client.call("io.sorcha.peerd.GetBlueprint", {"id": "ghost"})
        assert caught.value.error == "io.sorcha.peerd.NotFound"
        assert caught.value.parameters == {"id": "ghost"}
        assert (await client.call("io.sorcha.peerd.Status"))["status"]["role"] == "hub"


async def test_client_unreachable(sock_dir: Path) -> None:
    with pytest.raises(DaemonUnreachable, match="No such file"):
        await ControlClient.connect(sock_dir / "missing.sock", timeout=1)
    stale = sock_dir / "stale.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(os.fspath(stale))
    s.close()
    with pytest.raises(DaemonUnreachable, match="refused"):
        await ControlClient.connect(stale, timeout=1)
    silent = sock_dir / "silent.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(os.fspath(silent))
    listener.listen(1)
    with listener:
        async with await ControlClient.connect(silent, timeout=0.2) as client:
            with pytest.raises(DaemonUnreachable, match=r"no answer within 0\.2 s"):
                await client.call("io.sorcha.peerd.Status")


async def test_unusable_directory_is_a_clear_error(sock_dir: Path, backend: StoreBackend) -> None:
    (sock_dir / "file").write_text("")
    with pytest.raises(ControlSocketError, match="cannot create the control socket directory"):
        await ControlServer(sock_dir / "file" / "c.sock", backend).serve()
