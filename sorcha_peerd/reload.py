"""What a reload changes: which new settings apply live, which need a restart.

A reload (SIGHUP, ``sorcha-peerctl reload``, ``systemctl reload``) re-reads the
configuration the daemon started from, with the same command-line overrides.
A configuration that does not validate changes nothing. Otherwise the keys
that differ are sorted into two lists:

* **live** — ``log.*``, ``timing.*``, ``limits.*`` and ``hubs``: applied now
  (timings and the hub list by the next connection of a peer);
* **restart** — everything else (the node's id and role, addresses, sockets,
  the store, telemetry): reported, not applied, until the daemon restarts.

The decision is a plain function of the old and new settings (no I/O), so it
is tested without a daemon; the role's daemon code applies the result.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs

from sorcha_peerd.config import Settings

#: Sections whose keys a running daemon applies.
LIVE_SECTIONS = frozenset({"log", "timing", "limits", "hubs"})


@attrs.frozen
class ReloadPlan:
    """The outcome of comparing the running settings with a freshly read file."""

    applied: tuple[str, ...]
    needs_restart: tuple[str, ...]
    settings: Settings  # what the daemon runs with afterwards (live parts new, the rest old)


def _plain(value: Any) -> Any:
    if isinstance(value, re.Pattern):
        return value.pattern
    if attrs.has(type(value)):
        return {f.name: _plain(getattr(value, f.name)) for f in attrs.fields(type(value))}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def changed_keys(old: Settings, new: Settings) -> list[str]:
    """Dotted keys whose values differ (``hubs`` as a whole)."""
    changed: list[str] = []
    for field in attrs.fields(Settings):
        if field.name in ("source", "overrides"):
            continue
        a, b = getattr(old, field.name), getattr(new, field.name)
        if field.name == "hubs":
            if _plain(a) != _plain(b):
                changed.append("hubs")
            continue
        if not attrs.has(type(a)):
            if _plain(a) != _plain(b):
                changed.append(field.name)
            continue
        for sub in attrs.fields(type(a)):
            if _plain(getattr(a, sub.name)) != _plain(getattr(b, sub.name)):
                changed.append(f"{field.name}.{sub.name}")
    return changed


def _section(key: str) -> str:
    return key.split(".", 1)[0]


def plan_reload(old: Settings, new: Settings) -> ReloadPlan:
    """Sort the changes; the resulting settings take only the live parts of ``new``."""
    keys = changed_keys(old, new)
    applied = tuple(k for k in keys if _section(k) in LIVE_SECTIONS)
    restart = tuple(k for k in keys if _section(k) not in LIVE_SECTIONS)
    live: Mapping[str, Any] = {name: getattr(new, name) for name in LIVE_SECTIONS}
    return ReloadPlan(applied, restart, attrs.evolve(old, **live))


@attrs.define
class Reloader:
    """Holds the running settings and turns a reload request into a plan, then applies it.

    ``load`` reads the configuration again (it raises ``ConfigError``);
    ``apply`` makes the role use the new live settings.
    """

    current: Settings
    load: Callable[[], Settings]
    apply: Callable[[Settings, Iterable[str]], None]

    def plan(self) -> ReloadPlan:
        return plan_reload(self.current, self.load())

    def commit(self, plan: ReloadPlan) -> None:
        if plan.applied:
            self.apply(plan.settings, plan.applied)
        self.current = plan.settings
