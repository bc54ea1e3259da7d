"""What every role shares as a service: sd_notify, signals, reload, the two control sockets.

:class:`Runtime` is built once per daemon run from what the CLI hands over
(the settings, how to read them again, the log level control, the
environment). A role calls :meth:`Runtime.serve_controls` to bind its control
and status sockets, :meth:`Runtime.ready` once its listeners are bound, and
:meth:`Runtime.supervise` to wait for SIGTERM/SIGINT while answering SIGHUP
with a reload. A reload from the control socket goes through the same
:meth:`Runtime.reload`, so ``systemctl reload`` (``sorcha-peerctl reload``)
and SIGHUP behave the same and systemd sees RELOADING=1 / READY=1 around both.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any, Protocol

import attrs
import trio

from sorcha_peerd import __version__
from sorcha_peerd.config import ConfigError, ConfigProblem, Settings
from sorcha_peerd.control import (
    STATUS_SOCKET_MODE,
    ConfigInvalid,
    ControlBackend,
    ControlServer,
    ControlSocketError,
    ServiceInfo,
)
from sorcha_peerd.reload import Reloader, ReloadPlan
from sorcha_peerd.systemd import Notifier, run_watchdog, watchdog_interval
from sorcha_peerd.telemetry import Telemetry, TelemetryConfigError

log = logging.getLogger(__name__)

HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class LevelControl(Protocol):
    def set_level(self, level: str) -> None: ...


class StartError(Exception):
    """The daemon cannot start; the message says why, the code is the exit status."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


@attrs.define
class DaemonContext:
    """What the CLI (the process boundary) gives the daemon besides the settings."""

    load_settings: Callable[[], Settings] | None = None
    log_control: LevelControl | None = None
    env: Mapping[str, str] = attrs.field(factory=dict)
    #: tests pass an in-memory span exporter; the daemon uses what the settings say
    telemetry: Telemetry | None = None


def status_socket_path(settings: Settings) -> Any:
    """The read-only status socket lives beside the control socket."""
    return settings.control.socket.with_name("status.sock")


class Runtime:
    """sd_notify, reload and signals for one daemon run."""

    def __init__(self, settings: Settings, context: DaemonContext) -> None:
        self.settings = settings
        self.context = context
        self.notifier = Notifier.from_env(context.env)
        try:
            self.telemetry = context.telemetry or Telemetry.from_settings(settings)
        except TelemetryConfigError as exc:
            raise StartError(f"telemetry: {exc}", 78) from None
        self.reloader = Reloader(settings, context.load_settings or (lambda: settings), self._apply)
        self._appliers: list[Callable[[Settings, Iterable[str]], None]] = []
        self._checks: list[Callable[[Settings], list[str]]] = []
        self._reload_lock = trio.Lock()  # SIGHUP and the control socket may ask at once
        self._status_line: Callable[[], str] = lambda: ""
        self._last_status = ""
        self.reload_failure = ""

    # ------------------------------------------------------------------ wiring by the role

    def on_reload(self, apply: Callable[[Settings, Iterable[str]], None]) -> None:
        """Register how the role applies new live settings."""
        self._appliers.append(apply)

    def check_with(self, check: Callable[[Settings], list[str]]) -> None:
        """Register a role's own checks of new settings (problems make a reload refused)."""
        self._checks.append(check)

    def status_from(self, line: Callable[[], str]) -> None:
        self._status_line = line

    def _apply(self, settings: Settings, keys: Iterable[str]) -> None:
        keys = list(keys)
        if self.context.log_control is not None and "log.level" in keys:
            self.context.log_control.set_level(settings.log.level)
        for apply in self._appliers:
            apply(settings, keys)

    async def serve_controls(self, nursery: trio.Nursery, backend: ControlBackend) -> None:
        """Bind the control socket (owner only) and the status socket (read-only, group)."""
        info = ServiceInfo(product="sorcha-peerd", version=__version__)
        servers = [
            ControlServer(self.settings.control.socket, backend, info=info),
            ControlServer(
                status_socket_path(self.settings),
                backend,
                info=info,
                mode=STATUS_SOCKET_MODE,
                read_only=True,
            ),
        ]
        for server in servers:
            try:
                await nursery.start(server.serve)
            except ControlSocketError as exc:
                raise StartError(str(exc)) from None

    # ------------------------------------------------------------------ lifecycle

    def ready(self, nursery: trio.Nursery) -> None:
        """Listeners bound, store open: tell systemd, start the watchdog and STATUS updates."""
        self.notifier.ready()
        interval = watchdog_interval(self.context.env, os.getpid())
        if interval is not None:
            log.info("watchdog: pinging systemd every %.1f s", interval)
            nursery.start_soon(run_watchdog, self.notifier, interval)
        nursery.start_soon(self._keep_status)

    async def _keep_status(self) -> None:
        while True:
            self.send_status()
            await trio.sleep(1.0)

    def send_status(self) -> None:
        line = self._status_line()
        if self.reload_failure:
            line = f"{line}; {self.reload_failure}"
        if line != self._last_status:
            self._last_status = line
            self.notifier.status(line)

    async def supervise(self, signals: AsyncIterator[int]) -> None:
        """Return on SIGTERM/SIGINT; reload on SIGHUP."""
        async for signum in signals:
            name = signal.Signals(signum).name
            if signum == signal.SIGHUP:
                log.info("received %s: reloading the configuration", name)
                try:
                    await self.reload(check=False)
                except ConfigInvalid:
                    pass  # logged and reported in STATUS= by reload()
                continue
            log.info("received %s", name)
            self.notifier.stopping()
            return

    async def reload(self, *, check: bool) -> dict[str, Any]:
        """Re-read the configuration; apply it unless ``check``. Raises ConfigInvalid."""
        async with self._reload_lock:
            return await self._reload(check=check)

    def _plan(self) -> ReloadPlan:
        """Read and compare; the role's own checks make it a ConfigError too."""
        plan = self.reloader.plan()
        problems = [p for check in self._checks for p in check(plan.settings)]
        if problems:
            raise ConfigError(
                (ConfigProblem(*p.split(": ", 1)) for p in problems), self.reloader.current.source
            )
        return plan

    async def _reload(self, *, check: bool) -> dict[str, Any]:
        if not check:
            self.notifier.reloading()
        try:
            try:
                plan = await trio.to_thread.run_sync(self._plan)
            except ConfigError as exc:
                problems = exc.lines()
                log.error(  # noqa: TRY400 - a bad file is no bug: no traceback
                    "reload refused, keeping the running configuration: %s", "; ".join(problems)
                )
                if not check:
                    self.reload_failure = f"reload failed: {problems[0]}"
                raise ConfigInvalid(problems) from None
            if not check:
                self.reloader.commit(plan)
                self.reload_failure = ""
                log.info(
                    "reloaded: applied %s; needs a restart: %s",
                    ", ".join(plan.applied) or "nothing",
                    ", ".join(plan.needs_restart) or "nothing",
                )
            return {"applied": list(plan.applied), "needs_restart": list(plan.needs_restart)}
        finally:
            if not check:
                self.notifier.ready()
                self.send_status()


def open_signals() -> Any:
    """The signals a daemon handles, caught from the very start of the run."""
    return trio.open_signal_receiver(*HANDLED_SIGNALS)


def metrics_hook(runtime: Runtime) -> Callable[[], Mapping[str, Any]]:
    return runtime.telemetry.metrics_snapshot
