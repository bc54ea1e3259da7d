"""Push fan-out: filters, one encoding per change, sequence numbers, cutting off slow readers."""

from __future__ import annotations

import json

import trio

from sorcha_peerd.hub.push import Filters, PushFanout, summarise
from sorcha_peerd.register import ChangeType, Entry
from sorcha_peerd.wire import messages as pb


def entry(
    bid: str,
    version: int,
    *,
    by: str = "alice",
    change: ChangeType = ChangeType.PUBLISHED,
    meta: dict[str, str] | None = None,
    doc: bytes = b'{"name": "x"}',
) -> Entry:
    return Entry(bid, version, doc, 1, by, change=change, metadata=meta or {}).with_checksum()


def drain(sub_receive: trio.MemoryReceiveChannel[bytes]) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(sub_receive.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            return out


def test_empty_filters_match_everything_and_each_field_narrows() -> None:
    e = entry("a", 1, meta={"category": "register", "x": "y"})
    assert Filters().matches(e)
    assert Filters(blueprint_ids=frozenset({"a"})).matches(e)
    assert not Filters(blueprint_ids=frozenset({"b"})).matches(e)
    assert not Filters(publisher_ids=frozenset({"bob"})).matches(e)
    assert not Filters(types=frozenset({ChangeType.DEPRECATED})).matches(e)
    assert Filters(metadata={"category": "register"}).matches(e)
    assert not Filters(metadata={"category": "other"}).matches(e)


def test_filters_from_the_wire() -> None:
    f = Filters.from_wire(
        pb.SubscriptionFilters(
            blueprint_ids=["a"], notification_types=[pb.NotificationType.BLUEPRINT_UPDATED]
        )
    )
    assert f.matches(entry("a", 1, change=ChangeType.UPDATED))
    assert not f.matches(entry("a", 1))
    assert Filters.from_wire(None) == Filters()


def test_fan_out_with_per_subscription_sequence_numbers() -> None:
    fan = PushFanout(queue_size=10)
    everyone = fan.subscribe(Filters())
    only_b = fan.subscribe(Filters(blueprint_ids=frozenset({"b"})))
    fan.publish([entry("a", 1), entry("b", 2), entry("a", 3, change=ChangeType.UPDATED)])
    got = [
        pb.BlueprintNotification.parse(everyone.next_message(p)) for p in drain(everyone.receive)
    ]
    assert [(n.blueprint_id, n.version, n.sequence_number) for n in got] == [
        ("a", 1, 1),
        ("b", 2, 2),
        ("a", 3, 3),
    ]
    assert got[2].type == pb.NotificationType.BLUEPRINT_UPDATED
    mine = [pb.BlueprintNotification.parse(only_b.next_message(p)) for p in drain(only_b.receive)]
    assert [(n.blueprint_id, n.sequence_number) for n in mine] == [("b", 1)]
    assert fan.delivered == 4


def test_a_full_queue_cuts_off_that_subscriber_only() -> None:
    fan = PushFanout(queue_size=2)
    slow = fan.subscribe(Filters())
    fast = fan.subscribe(Filters())
    for v in range(1, 6):
        fan.publish([entry(f"e{v}", v)])
        drain(fast.receive)
    assert slow.cut_off and not fast.cut_off
    assert len(fan) == 1 and fan.cut_offs == 1
    assert len(drain(slow.receive)) == 2  # what it had queued, then the end of its stream


def test_summary_is_small_json() -> None:
    doc = json.dumps({"name": "n" * 10_000, "title": "t", "steps": list(range(100))}).encode()
    summary = summarise(entry("a", 1, doc=doc))
    assert len(summary) <= 4096 and json.loads(summary)["title"] == "t"
    assert summarise(entry("a", 1, doc=b"[1, 2]")) == b""
