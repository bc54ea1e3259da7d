"""Push fan-out: one change, encoded once, offered to every matching subscriber.

Each subscription has a bounded queue. :meth:`PushFanout.publish` never
waits: a subscriber whose queue is full is cut off (its stream ends, and the
peer catches up by incremental sync, as the protocol expects after a gap), so
one slow reader can never slow the others or grow the hub's memory.

Notifications are encoded once per change (``codec.encode_notification_prefix``);
the per-subscription sequence number is appended when the subscriber's stream
sends it, so 200 subscribers cost one encoding.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping

import attrs
import trio

from sorcha_peerd.register import ChangeType, Entry
from sorcha_peerd.wire import codec
from sorcha_peerd.wire import messages as pb

MAX_SUMMARY_BYTES = 4 * 1024
_SUMMARY_KEYS = ("id", "name", "title", "description", "version")


def summarise(entry: Entry, limit: int = MAX_SUMMARY_BYTES) -> bytes:
    """A small JSON summary of a blueprint for ``blueprint_summary`` (at most 4 KiB).

    The top-level ``id``, ``name``, ``title``, ``description`` and ``version``
    of the document when it is a JSON object, long strings shortened so the
    whole stays under the limit; an empty summary when nothing fits.
    """
    try:
        document = json.loads(entry.document)
    except (ValueError, UnicodeDecodeError):
        return b""
    if not isinstance(document, dict):
        return b""
    picked = {k: document[k] for k in _SUMMARY_KEYS if isinstance(document.get(k), str | int)}
    text = json.dumps(picked, ensure_ascii=False, separators=(",", ":")).encode()
    budget = 1024
    while len(text) > limit and budget > 16:
        picked = {k: v[:budget] if isinstance(v, str) else v for k, v in picked.items()}
        text = json.dumps(picked, ensure_ascii=False, separators=(",", ":")).encode()
        budget //= 2
    return text if len(text) <= limit else b""


@attrs.frozen
class Filters:
    """A subscription's filters; an empty field matches everything (wire contract)."""

    blueprint_ids: frozenset[str] = frozenset()
    publisher_ids: frozenset[str] = frozenset()
    types: frozenset[ChangeType] = frozenset()
    metadata: Mapping[str, str] = attrs.field(factory=dict)

    @classmethod
    def from_wire(cls, filters: pb.SubscriptionFilters | None) -> Filters:
        if filters is None:
            return cls()
        types = set()
        for t in filters.notification_types:
            value = int(t)
            if value in ChangeType._value2member_map_:
                types.add(ChangeType(value))
        return cls(
            frozenset(filters.blueprint_ids),
            frozenset(filters.publisher_ids),
            frozenset(types),
            dict(filters.metadata_filters),
        )

    def matches(self, entry: Entry) -> bool:
        if self.blueprint_ids and entry.blueprint_id not in self.blueprint_ids:
            return False
        if self.publisher_ids and entry.published_by not in self.publisher_ids:
            return False
        if self.types and entry.change not in self.types:
            return False
        return all(entry.metadata.get(k) == v for k, v in self.metadata.items())


@attrs.define(eq=False)
class Subscription:
    """One subscriber's queue of encoded notification prefixes."""

    filters: Filters
    send: trio.MemorySendChannel[bytes]
    receive: trio.MemoryReceiveChannel[bytes]
    sequence: int = 0
    cut_off: bool = False
    #: called when the subscription is ended from outside (cut off, or the hub drains)
    on_end: Callable[[], None] | None = None

    def next_message(self, prefix: bytes) -> bytes:
        """The notification for this subscriber: the prefix and its next sequence number."""
        self.sequence += 1
        return codec.encode_notification(prefix, self.sequence)


@attrs.define
class PushFanout:
    """The set of live subscriptions of one hub."""

    queue_size: int = 1000
    _subscriptions: set[Subscription] = attrs.field(factory=set)
    delivered: int = 0
    cut_offs: int = 0

    def __len__(self) -> int:
        return len(self._subscriptions)

    def subscribe(self, filters: Filters) -> Subscription:
        send, receive = trio.open_memory_channel[bytes](self.queue_size)
        subscription = Subscription(filters, send, receive)
        self._subscriptions.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self._subscriptions.discard(subscription)
        subscription.send.close()

    def _end(self, subscription: Subscription) -> None:
        self.unsubscribe(subscription)
        if subscription.on_end is not None:
            subscription.on_end()

    def close_all(self) -> None:
        """End every subscription stream (a draining hub)."""
        for subscription in list(self._subscriptions):
            self._end(subscription)

    def publish(self, entries: Iterable[Entry]) -> None:
        """Offer each change to every matching subscriber, without waiting."""
        if not self._subscriptions:  # nobody listens: no summary, no encoding
            return
        for entry in entries:
            prefix = codec.encode_notification_prefix(entry, summarise(entry))
            for subscription in list(self._subscriptions):
                if not subscription.filters.matches(entry):
                    continue
                try:
                    subscription.send.send_nowait(prefix)
                    self.delivered += 1
                except trio.WouldBlock:
                    subscription.cut_off = True
                    self.cut_offs += 1
                    self._end(subscription)
                except trio.ClosedResourceError:
                    self._subscriptions.discard(subscription)
