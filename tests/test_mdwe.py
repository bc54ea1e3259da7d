"""trio and the daemon work under the unit's ``MemoryDenyWriteExecute=yes``.

PID 1 is not systemd where the tests run, so each process is confined the
way systemd would confine it, by a small wrapper that sets the restriction and
then ``execve``\\s the interpreter that runs the daemon (or ``sorcha-peerctl``,
which ``ExecReload=`` runs under the same sandbox):

- ``prctl``: ``prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN)``, which systemd
  254 and later use on Linux 6.3 and later;
- ``seccomp``: what older systemd (Debian 12 has 252) loads instead: a seccomp
  filter refusing ``mmap`` with PROT_WRITE|PROT_EXEC, ``mprotect`` and
  ``pkey_mprotect`` with PROT_EXEC, and ``shmat`` with SHM_EXEC; together with
  the unit's own ``SystemCallFilter=`` allow list (read from the committed
  unit, expanded with ``systemd-analyze syscall-filter``), its
  ``SystemCallErrorNumber=`` and ``NoNewPrivileges=yes``.

The restricted process itself checks that the restriction is in force before
it imports anything of the daemon (``PR_GET_MDWE`` reports it; a W+X mapping
is refused), and says so on stderr; the test requires that line. A kernel
without PR_SET_MDWE, or a machine without libseccomp or systemd-analyze, fails
the test with the reason: it must not pass by skipping.

Each case runs a real hub and a real peer (both confined), publishes through
``sorcha-peerctl`` (confined), waits for the peer to replicate it, reads both
statuses, and stops both with SIGTERM, expecting exit status 0.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "systemd" / "sorcha-peerd.service"
BLUEPRINT = ROOT / "examples" / "blueprints" / "membership-v1.json"
MARKER = "sandbox: in force"

#: Run as ``python -c SANDBOX SPEC_JSON MODULE ARGS...``. Stage 1 confines the
#: process and re-executes the interpreter with ``--confined``; stage 2 (the
#: process that runs the daemon) checks the confinement and runs MODULE.
SANDBOX = r"""
import ctypes, json, mmap, os, runpy, sys

PR_SET_NO_NEW_PRIVS, PR_SET_MDWE, PR_GET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 38, 65, 66, 1
libc = ctypes.CDLL(None, use_errno=True)

def die(message):
    print(f"sandbox: {message}", file=sys.stderr, flush=True)
    sys.exit(97)

def seccomp(spec):
    try:
        lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    except OSError as exc:
        die(f"libseccomp is needed to emulate systemd's seccomp filters: {exc}")

    class Cmp(ctypes.Structure):
        _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                    ("a", ctypes.c_uint64), ("b", ctypes.c_uint64)]

    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint, ctypes.POINTER(Cmp)]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    ALLOW, MASKED_EQ = 0x7FFF0000, 7
    ERRNO = 0x00050000 | spec["errno"]

    def nr(name):
        return lib.seccomp_syscall_resolve_name(name.encode())

    def rule(ctx, action, name, *cmps):
        if nr(name) < 0:
            return  # not a system call of this architecture
        arr = (Cmp * max(1, len(cmps)))(*cmps)
        if lib.seccomp_rule_add_array(ctx, action, nr(name), len(cmps), arr) != 0:
            die(f"seccomp rule for {name} refused")

    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        die("PR_SET_NO_NEW_PRIVS failed")
    # one filter per setting, in systemd's order (the allow list last, next to execve);
    # the kernel applies the strictest answer of all
    ctx = lib.seccomp_init(ALLOW)
    wx, x, shm_exec = mmap.PROT_WRITE | mmap.PROT_EXEC, mmap.PROT_EXEC, 0o100000
    rule(ctx, ERRNO, "mmap", Cmp(2, MASKED_EQ, wx, wx))
    rule(ctx, ERRNO, "mprotect", Cmp(2, MASKED_EQ, x, x))
    rule(ctx, ERRNO, "pkey_mprotect", Cmp(2, MASKED_EQ, x, x))
    rule(ctx, ERRNO, "shmat", Cmp(2, MASKED_EQ, shm_exec, shm_exec))
    if lib.seccomp_load(ctx) != 0:
        die("loading the MemoryDenyWriteExecute= filter failed")
    if spec["allow"] is not None:
        ctx = lib.seccomp_init(ERRNO)
        for name in spec["allow"]:
            rule(ctx, ALLOW, name)
        if lib.seccomp_load(ctx) != 0:
            die("loading the SystemCallFilter= filter failed")

def confine(spec):
    if spec["mdwe"] == "prctl":
        if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
            err = ctypes.get_errno()
            die(f"prctl(PR_SET_MDWE) failed: {os.strerror(err)} (this kernel, "
                f"{os.uname().release}, lacks it: Linux 6.3 or later is needed)")
    else:
        seccomp(spec)

def check(spec):
    if spec["mdwe"] == "prctl" and libc.prctl(PR_GET_MDWE, 0, 0, 0, 0) != PR_MDWE_REFUSE_EXEC_GAIN:
        die("PR_GET_MDWE does not report MDWE after execve")
    try:
        mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    except PermissionError:
        pass
    else:
        die("a writable and executable mapping was allowed")
    print(f"sandbox: in force ({spec['mdwe']}) in pid {os.getpid()}", file=sys.stderr, flush=True)

spec = json.loads(sys.argv[1])
if sys.argv[2] != "--confined":
    confine(spec)
    os.execv(sys.executable,
             [sys.executable, "-c", SOURCE, sys.argv[1], "--confined", *sys.argv[2:]])
check(spec)
target = sys.argv[3]
sys.argv = [target, *sys.argv[4:]]
if target.endswith(".py"):
    runpy.run_path(target, run_name="__main__")
else:
    runpy.run_module(target, run_name="__main__", alter_sys=True)
"""


def _sandbox_source() -> str:
    # stage 1 re-executes the same source: hand it to itself as SOURCE
    return f"SOURCE = {SANDBOX!r}\n{SANDBOX}"


def _syscall_set(group: str, seen: set[str] | None = None) -> set[str]:
    """The system calls of a systemd syscall group, nested groups expanded."""
    seen = set() if seen is None else seen
    result = subprocess.run(
        ["systemd-analyze", "syscall-filter", "--no-pager", group],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    names: set[str] = set()
    for line in result.stdout.splitlines()[1:]:
        item = line.strip()
        if not item or item.startswith("#"):
            continue
        if item.startswith("@"):
            if item not in seen:
                seen.add(item)
                names |= _syscall_set(item, seen)
        else:
            names.add(item)
    return names


def unit_seccomp_spec() -> dict[str, Any]:
    """The committed unit's SystemCallFilter= and SystemCallErrorNumber=, as an allow list."""
    allow: set[str] | None = None
    errno = 1  # EPERM
    for raw in UNIT.read_text().splitlines():
        key, _, value = raw.strip().partition("=")
        if key == "SystemCallErrorNumber":
            errno = {"EPERM": 1, "EACCES": 13, "ENOSYS": 38}[value]
        if key != "SystemCallFilter":
            continue
        deny = value.startswith("~")
        names: set[str] = set()
        for item in value.removeprefix("~").split():
            names |= _syscall_set(item) if item.startswith("@") else {item}
        if deny:
            assert allow is not None, "the emulation handles an allow list first, then removals"
            allow -= names
        else:
            allow = (allow or _syscall_set("@default")) | names  # systemd adds @default
    assert allow, f"{UNIT} has no SystemCallFilter= allow list"
    return {"mdwe": "seccomp", "allow": sorted(allow), "errno": errno}


SPECS = {
    "prctl": lambda: {"mdwe": "prctl", "allow": None, "errno": 1},
    "seccomp": unit_seccomp_spec,
}


def confined(spec: dict[str, Any], module: str, *args: str) -> list[str]:
    return [sys.executable, "-c", _sandbox_source(), json.dumps(spec), module, *args]


# --------------------------------------------------------------------------- processes

_SERVING = re.compile(r"serving the system register on [^ ]+:(\d+)|peer \S+ serving its replica")


class Proc:
    """A confined daemon whose output is read by a thread (a full pipe would block it)."""

    def __init__(self, cmd: Sequence[str], socket_path: Path) -> None:
        self.socket = socket_path
        self.lines: list[str] = []
        self.serving = threading.Event()
        self.port = 0
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            match = _SERVING.search(line)
            if match:
                self.port = int(match.group(1) or 0)
                self.serving.set()

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def wait_serving(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not self.serving.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"the confined daemon did not start:\n{self.log}", pytrace=False)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.reader.join(timeout=5)
        return self.proc.returncode


FAST = """
[timing]
heartbeat_interval = 0.5
heartbeat_timeout = 0.5
connect_timeout = 2.0
backoff_initial = 0.1
backoff_max = 0.5
call_timeout = 5.0
"""


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    # unix socket paths are limited to 107 bytes: keep the sockets in a short directory,
    # one subdirectory per daemon (each puts a status socket beside its control socket)
    with tempfile.TemporaryDirectory(prefix="sp-mdwe-", dir="/tmp") as d:
        yield Path(d)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _peerctl(spec: dict[str, Any], sock: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        confined(spec, "sorcha_peerd.cli.peerctl", "--socket", str(sock), *args),
        capture_output=True, text=True, timeout=60, cwd=ROOT, check=False,
    )  # fmt: skip


def _status(spec: dict[str, Any], sock: Path) -> dict[str, Any]:
    result = _peerctl(spec, sock, "status", "--json")
    assert result.returncode in (0, 1), result.stdout + result.stderr
    assert MARKER in result.stderr, result.stderr
    status: dict[str, Any] = json.loads(result.stdout)
    return status


@pytest.mark.parametrize("store", ["sqlite", "mongodb"])
@pytest.mark.parametrize("mechanism", sorted(SPECS))
def test_hub_and_peer_work_confined(
    mechanism: str, store: str, tmp_path: Path, sock_dir: Path, request: pytest.FixtureRequest
) -> None:
    spec = SPECS[mechanism]()
    hub_args = ["--store", store]
    if store == "mongodb":
        uri = request.getfixturevalue("mongodb_uri")
        hub_args += ["--mongodb-uri", uri, "--mongodb-database", f"mdwe_{mechanism}"]
    (tmp_path / "hub.toml").write_text(FAST)
    port = _free_port()
    hub = Proc(
        confined(
            spec, "sorcha_peerd.cli.daemon", "--config", str(tmp_path / "hub.toml"),
            "--role", "hub", "--node-id", "n0", "--listen", f"127.0.0.1:{port}",
            "--state-dir", str(tmp_path / "hub"),
            "--control-socket", str(sock_dir / "hub" / "control.sock"),
            *hub_args,
        ),
        sock_dir / "hub" / "control.sock",
    )  # fmt: skip
    procs = [hub]
    try:
        hub.wait_serving()
        (tmp_path / "peer.toml").write_text(
            FAST + f'\n[[hubs]]\nid = "n0"\naddress = "127.0.0.1:{port}"\n'
        )
        peer = Proc(
            confined(
                spec, "sorcha_peerd.cli.daemon", "--config", str(tmp_path / "peer.toml"),
                "--role", "peer", "--node-id", "p1", "--state-dir", str(tmp_path / "peer"),
                "--control-socket", str(sock_dir / "peer" / "control.sock"),
            ),
            sock_dir / "peer" / "control.sock",
        )  # fmt: skip
        procs.insert(0, peer)
        peer.wait_serving()

        published = _peerctl(spec, hub.socket, "publish", str(BLUEPRINT), "--publisher", "mdwe")
        assert published.returncode == 0, published.stdout + published.stderr
        version = int(published.stdout.rsplit("version", 1)[1])

        hub_status = _status(spec, hub.socket)
        assert hub_status["role"] == "hub" and hub_status["version"] >= version

        deadline = time.monotonic() + 30
        while True:
            peer_status = _status(spec, peer.socket)
            if peer_status["status"] == "connected" and peer_status["version"] >= version:
                break
            assert time.monotonic() < deadline, f"the peer never caught up: {peer_status}"
            time.sleep(0.1)
        got = _peerctl(spec, peer.socket, "get", "membership-v1")
        assert got.returncode == 0, got.stderr
        assert got.stdout.encode() == BLUEPRINT.read_bytes()
    finally:
        for proc in procs:  # the peer first: it says goodbye, then the hub drains at once
            proc.stop()
    assert len(procs) == 2
    for proc in procs:
        assert MARKER in proc.log, proc.log
        assert "Traceback" not in proc.log, proc.log
        assert proc.proc.returncode == 0, f"exit status {proc.proc.returncode}:\n{proc.log}"


def test_sandbox_refuses_what_it_should(sock_dir: Path) -> None:
    """The emulation is not a no-op: no memory gains exec, and the syscall filter filters."""
    probe = (
        "import ctypes, mmap, sys\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "libc.mmap.restype = ctypes.c_void_p\n"
        "libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,"
        " ctypes.c_int, ctypes.c_long]\n"
        "page = libc.mmap(None, 4096, mmap.PROT_READ | mmap.PROT_WRITE,"
        " mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)\n"
        "rc = libc.mprotect(ctypes.c_void_p(page), 4096, mmap.PROT_READ | mmap.PROT_EXEC)\n"
        "print('mprotect-exec', rc, ctypes.get_errno())\n"
        "import os\n"
        "for name, call in [('setuid', lambda: os.setuid(os.getuid())),\n"
        "                   ('sched_setaffinity', lambda: os.sched_setaffinity(0, {0}))]:\n"
        "    try:\n"
        "        call()\n"
        "        print(name, 'allowed')\n"
        "    except PermissionError:\n"
        "        print(name, 'refused')\n"
    )
    probe_file = sock_dir / "probe.py"
    probe_file.write_text(probe)
    for name, make in SPECS.items():
        result = subprocess.run(
            confined(make(), str(probe_file)),
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert MARKER in result.stderr, (name, result.stderr)
        assert result.returncode == 0, (name, result.stderr)
        lines = dict(line.split(" ", 1) for line in result.stdout.splitlines())
        rc, errno = lines["mprotect-exec"].split()
        assert rc == "-1" and int(errno) in (1, 13), (name, result.stdout)
        # the unit's SystemCallFilter= removes @privileged and @resources
        filtered = "refused" if name == "seccomp" else "allowed"
        assert lines["setuid"] == filtered, (name, result.stdout)
        assert lines["sched_setaffinity"] == filtered, (name, result.stdout)
