"""The three services of the wire contract as data: paths, kinds and codecs.

Server and client both work from these :class:`Method` values, so a method's
name, its shape (unary, server stream, bidirectional) and how its messages are
encoded are written down once. A codec is a pair of functions; betterproto2
messages use ``bytes(msg)`` and ``Cls.parse``, the two hot messages use the
hand-written codec of :mod:`sorcha_peerd.wire.codec`.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from functools import partial
from typing import Any, Generic, TypeVar

import attrs
import betterproto2

from sorcha_peerd.register import Entry
from sorcha_peerd.wire import codec, strict
from sorcha_peerd.wire import messages as pb

PACKAGE = "sorcha.peer.v1"
T = TypeVar("T")
M = TypeVar("M", bound=betterproto2.Message)


@attrs.frozen
class MessageCodec(Generic[T]):
    """How one message type becomes bytes and back.

    ``full_name`` is what purerpc sends as ``grpc-message-type`` (it would
    otherwise ask ``DESCRIPTOR.full_name`` of a protobuf class).
    """

    full_name: str
    encode: Callable[[T], bytes]
    decode: Callable[[bytes], T]


def message_codec(cls: type[M]) -> MessageCodec[M]:
    return MessageCodec(f"{PACKAGE}.{cls.__name__}", bytes, partial(strict.parse, cls))


ENTRY_CODEC: MessageCodec[Entry] = MessageCodec(
    f"{PACKAGE}.SystemRegisterEntry", codec.encode_entry, codec.decode_entry
)


class Kind(enum.Enum):
    UNARY = "unary"
    SERVER_STREAM = "server_stream"
    BIDI = "bidi"


@attrs.frozen
class Method:
    service: str
    name: str
    kind: Kind
    request: MessageCodec[Any]
    response: MessageCodec[Any]

    @property
    def path(self) -> str:
        return f"/{self.service}/{self.name}"


_CONNECTION = f"{PACKAGE}.CentralNodeConnection"
_HEARTBEAT = f"{PACKAGE}.Heartbeat"
_SYNC = f"{PACKAGE}.SystemRegisterSync"


def _m(
    service: str, name: str, kind: Kind, req: MessageCodec[Any], resp: MessageCodec[Any]
) -> Method:
    return Method(service, name, kind, req, resp)


CONNECT = _m(
    _CONNECTION,
    "ConnectToCentralNode",
    Kind.UNARY,
    message_codec(pb.ConnectRequest),
    message_codec(pb.ConnectionResponse),
)
DISCONNECT = _m(
    _CONNECTION,
    "DisconnectFromCentralNode",
    Kind.UNARY,
    message_codec(pb.DisconnectRequest),
    message_codec(pb.DisconnectionResponse),
)
GET_STATUS = _m(
    _CONNECTION,
    "GetCentralNodeStatus",
    Kind.UNARY,
    message_codec(pb.StatusRequest),
    message_codec(pb.CentralNodeStatus),
)

SEND_HEARTBEAT = _m(
    _HEARTBEAT,
    "SendHeartbeat",
    Kind.UNARY,
    message_codec(pb.HeartbeatMessage),
    message_codec(pb.HeartbeatAcknowledgement),
)
MONITOR_HEARTBEAT = _m(
    _HEARTBEAT,
    "MonitorHeartbeat",
    Kind.BIDI,
    message_codec(pb.HeartbeatMessage),
    message_codec(pb.HeartbeatAcknowledgement),
)
GET_HEARTBEAT_STATUS = _m(
    _HEARTBEAT,
    "GetHeartbeatStatus",
    Kind.UNARY,
    message_codec(pb.HeartbeatStatusRequest),
    message_codec(pb.HeartbeatStatus),
)

FULL_SYNC = _m(_SYNC, "FullSync", Kind.SERVER_STREAM, message_codec(pb.SyncRequest), ENTRY_CODEC)
INCREMENTAL_SYNC = _m(
    _SYNC, "IncrementalSync", Kind.SERVER_STREAM, message_codec(pb.SyncRequest), ENTRY_CODEC
)
SUBSCRIBE = _m(
    _SYNC,
    "SubscribeToPushNotifications",
    Kind.SERVER_STREAM,
    message_codec(pb.SubscriptionRequest),
    message_codec(pb.BlueprintNotification),
)
GET_CHECKPOINT = _m(
    _SYNC,
    "GetSyncCheckpoint",
    Kind.UNARY,
    message_codec(pb.CheckpointRequest),
    message_codec(pb.SyncCheckpoint),
)

ALL_METHODS: tuple[Method, ...] = (
    CONNECT,
    DISCONNECT,
    GET_STATUS,
    SEND_HEARTBEAT,
    MONITOR_HEARTBEAT,
    GET_HEARTBEAT_STATUS,
    FULL_SYNC,
    INCREMENTAL_SYNC,
    SUBSCRIBE,
    GET_CHECKPOINT,
)
