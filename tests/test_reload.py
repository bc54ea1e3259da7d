"""Which keys a reload applies live and which need a restart (no daemon needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sorcha_peerd.config import Settings, parse_settings
from sorcha_peerd.reload import Reloader, changed_keys, plan_reload


def settings(data: dict[str, Any]) -> Settings:
    return parse_settings(data, env={}, hostname="p1.example", cwd=Path("/tmp"))


BASE = {
    "node": {"id": "p1", "role": "peer"},
    "timing": {"heartbeat_interval": 30.0},
    "hubs": [{"id": "n0", "address": "n0.example:5000"}],
}


def test_nothing_changed() -> None:
    assert changed_keys(settings(BASE), settings(BASE)) == []


def test_live_and_restart_keys_are_told_apart() -> None:
    new = {
        "node": {"id": "p2", "role": "peer"},
        "timing": {"heartbeat_interval": 5.0},
        "log": {"level": "debug"},
        "grpc": {"listen": "127.0.0.1:6000"},
        "hubs": [{"id": "n1", "address": "n1.example:5000"}],
    }
    plan = plan_reload(settings(BASE), settings(new))
    assert set(plan.applied) == {"timing.heartbeat_interval", "log.level", "hubs"}
    assert set(plan.needs_restart) == {"node.id", "grpc.listen"}
    # the running settings take the live parts only
    assert plan.settings.timing.heartbeat_interval == 5.0
    assert plan.settings.log.level == "debug"
    assert [h.id for h in plan.settings.hubs] == ["n1"]
    assert plan.settings.node.id == "p1" and plan.settings.grpc.listen.port == 5000


def test_reloader_applies_only_what_changed() -> None:
    seen: list[tuple[float, tuple[str, ...]]] = []
    nxt = {**BASE, "timing": {"heartbeat_interval": 10.0}}
    r = Reloader(
        settings(BASE),
        lambda: settings(nxt),
        lambda s, keys: seen.append((s.timing.heartbeat_interval, tuple(keys))),
    )
    plan = r.plan()
    assert seen == []  # planning alone (reload --check) changes nothing
    r.commit(plan)
    assert seen == [(10.0, ("timing.heartbeat_interval",))]
    assert r.current.timing.heartbeat_interval == 10.0
    r.commit(r.plan())  # the same file again: nothing to apply
    assert len(seen) == 1
