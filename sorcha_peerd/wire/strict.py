"""Strict decoding of betterproto2 messages.

betterproto2's parser is lenient in ways a server must not be: it accepts a
length that runs past the end of the data (``b"\\x0a\\x09ab"`` gives
``peer_id="ab"``) and a field sent with the wrong wire type (a varint in a
string field becomes an ``int`` in a ``str`` attribute). Requests decoded that
way would reach handlers as well-typed nonsense. :func:`parse` first walks the
bytes against the message's declared fields (wire types, lengths, UTF-8,
nested messages and map entries) and raises :class:`DecodeError` before
betterproto2 ever sees bad input.
"""

from __future__ import annotations

from typing import Any, TypeVar

import betterproto2

from sorcha_peerd.wire.codec import DecodeError, _read_len, _read_varint, _skip

M = TypeVar("M", bound=betterproto2.Message)

_VARINT_TYPES = frozenset(betterproto2.WIRE_VARINT_TYPES)
_WIRE_TYPE = {
    **dict.fromkeys(betterproto2.WIRE_VARINT_TYPES, 0),
    **dict.fromkeys(betterproto2.WIRE_FIXED_64_TYPES, 1),
    **dict.fromkeys(betterproto2.WIRE_LEN_DELIM_TYPES, 2),
    **dict.fromkeys(betterproto2.WIRE_FIXED_32_TYPES, 5),
}


def check(
    cls: type[betterproto2.Message],
    data: bytes,
    start: int = 0,
    end: int | None = None,
    depth: int = 0,
) -> None:
    """Raise :class:`DecodeError` unless ``data[start:end]`` is a valid ``cls``."""
    if depth > 32:
        raise DecodeError("messages nested too deeply")
    end = len(data) if end is None else end
    meta: Any = getattr(cls, "_betterproto")  # noqa: B009 - a classproperty mypy cannot see
    pos = start
    while pos < end:
        tag, pos = _read_varint(data, pos, end)
        number, wire_type = tag >> 3, tag & 7
        if number == 0:
            raise DecodeError("field number 0")
        name = meta.field_name_by_number.get(number)
        if name is None:  # unknown fields are allowed and skipped, as protobuf does
            pos = _skip(data, pos, end, wire_type)
            continue
        field = meta.meta_by_field_name[name]
        expected = _WIRE_TYPE[field.proto_type]
        packed = field.repeated and wire_type == 2 and field.proto_type in _VARINT_TYPES
        if wire_type != expected and not packed:
            raise DecodeError(f"{cls.__name__}.{name}: wire type {wire_type}, expected {expected}")
        if wire_type != 2:
            pos = _skip(data, pos, end, wire_type)
            continue
        body, pos = _read_len(data, pos, end)
        if field.proto_type == betterproto2.TYPE_STRING:
            try:
                data[body:pos].decode("utf-8")
            except UnicodeDecodeError:
                raise DecodeError(f"{cls.__name__}.{name} is not valid UTF-8") from None
        elif field.proto_type in (betterproto2.TYPE_MESSAGE, betterproto2.TYPE_MAP):
            check(meta.cls_by_field[name], data, body, pos, depth + 1)
        elif packed:
            while body < pos:
                _, body = _read_varint(data, body, pos)


def parse(cls: type[M], data: bytes) -> M:
    """Check ``data`` strictly, then let betterproto2 build the message."""
    data = bytes(data)
    check(cls, data)
    return cls.parse(data)
