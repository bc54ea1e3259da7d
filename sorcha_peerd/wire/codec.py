"""Hand-written protobuf codec for the two hot messages of the protocol.

``SystemRegisterEntry`` is the message every sync streams by the thousand and
``BlueprintNotification`` the one a hub fans out to every subscriber.
betterproto2's generic reflection costs about 65 µs to encode and as much to
decode a 2 KiB entry with metadata, which caps a purerpc stream at a third of
grpc.aio's speed (architecture guide, "Measured behaviour"). These messages
have a fixed, flat shape, so a direct encoder and decoder are a few dozen
lines and an order of magnitude faster. Everything else goes through the
generated betterproto2 classes.

The encoding is standard proto3: default values are omitted, fields are
written in field-number order, map entries carry key (1) and value (2). The
decoder accepts any valid encoding (any field order, repeated scalars where
the last one wins, unknown fields skipped). tests/wire/test_codec.py checks
both directions against betterproto2 and against the protobuf runtime.
"""

from __future__ import annotations

from collections.abc import Mapping

from sorcha_peerd.register import SYSTEM_REGISTER_ID, ChangeType, Entry

_INT64_MASK = (1 << 64) - 1


class DecodeError(ValueError):
    """Bytes that are not a valid encoding of the expected message."""


def _varint(value: int) -> bytes:
    if 0 <= value < 0x80:
        return bytes((value,))
    value &= _INT64_MASK
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _len_field(tag: bytes, data: bytes) -> bytes:
    return tag + _varint(len(data)) + data


_T_ID = b"\x0a"
_T_REGISTER = b"\x12"
_T_DOCUMENT = b"\x1a"
_T_PUBLISHED_AT = b"\x20"
_T_PUBLISHED_BY = b"\x2a"
_T_VERSION = b"\x30"
_T_ACTIVE = b"\x38\x01"
_T_TXN = b"\x42"
_T_CHECKSUM = b"\x4a"
_T_METADATA = b"\x52"
_REGISTER_FIELD = _len_field(_T_REGISTER, SYSTEM_REGISTER_ID.encode())


def _map_field(tag: bytes, mapping: Mapping[str, str]) -> bytes:
    parts = []
    for key, value in mapping.items():
        body = b""
        if key:
            body += _len_field(b"\x0a", key.encode())
        if value:
            body += _len_field(b"\x12", value.encode())
        parts.append(_len_field(tag, body))
    return b"".join(parts)


def encode_entry(entry: Entry) -> bytes:
    """``SystemRegisterEntry`` bytes for ``entry`` (register_id is the system register)."""
    parts = [_len_field(_T_ID, entry.blueprint_id.encode()), _REGISTER_FIELD]
    if entry.document:
        parts.append(_len_field(_T_DOCUMENT, entry.document))
    if entry.published_at:
        parts.append(_T_PUBLISHED_AT + _varint(entry.published_at))
    if entry.published_by:
        parts.append(_len_field(_T_PUBLISHED_BY, entry.published_by.encode()))
    if entry.version:
        parts.append(_T_VERSION + _varint(entry.version))
    if entry.is_active:
        parts.append(_T_ACTIVE)
    if entry.publication_transaction_id:
        parts.append(_len_field(_T_TXN, entry.publication_transaction_id.encode()))
    if entry.checksum:
        parts.append(_len_field(_T_CHECKSUM, entry.checksum.encode()))
    if entry.metadata:
        parts.append(_map_field(_T_METADATA, entry.metadata))
    return b"".join(parts)


def _read_varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= end:
            raise DecodeError("truncated varint")
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise DecodeError("varint too long")


def _signed64(value: int) -> int:
    value &= _INT64_MASK
    return value - (1 << 64) if value >> 63 else value


def _skip(data: bytes, pos: int, end: int, wire_type: int) -> int:
    if wire_type == 0:
        return _read_varint(data, pos, end)[1]
    if wire_type == 1:
        pos += 8
    elif wire_type == 2:
        length, pos = _read_varint(data, pos, end)
        pos += length
    elif wire_type == 5:
        pos += 4
    else:
        raise DecodeError(f"unsupported wire type {wire_type}")
    if pos > end:
        raise DecodeError("truncated field")
    return pos


def _read_len(data: bytes, pos: int, end: int) -> tuple[int, int]:
    length, pos = _read_varint(data, pos, end)
    stop = pos + length
    if stop > end:
        raise DecodeError("truncated length-delimited field")
    return pos, stop


def _utf8(data: bytes, start: int, stop: int, name: str) -> str:
    try:
        return data[start:stop].decode("utf-8")
    except UnicodeDecodeError:
        raise DecodeError(f"{name} is not valid UTF-8") from None


def _decode_map_entry(data: bytes, pos: int, end: int) -> tuple[str, str]:
    key = value = ""
    while pos < end:
        tag, pos = _read_varint(data, pos, end)
        field, wire_type = tag >> 3, tag & 7
        if wire_type == 2 and field in (1, 2):
            start, pos = _read_len(data, pos, end)
            text = _utf8(data, start, pos, "metadata")
            if field == 1:
                key = text
            else:
                value = text
        else:
            pos = _skip(data, pos, end, wire_type)
    return key, value


def decode_entry_fields(data: bytes) -> tuple[Entry, str]:
    """Decode ``SystemRegisterEntry`` bytes into an :class:`Entry` and its register_id.

    Only the encoding is checked here; limits and the checksum are the
    receiver's business (``register.validate_entry``).
    """
    data = bytes(data)
    end = len(data)
    pos = 0
    blueprint_id = register_id = published_by = txn = checksum = ""
    document = b""
    published_at = version = 0
    is_active = False
    metadata: dict[str, str] = {}
    while pos < end:
        tag, pos = _read_varint(data, pos, end)
        field, wire_type = tag >> 3, tag & 7
        if wire_type == 2 and field in (1, 2, 3, 5, 8, 9, 10):
            start, pos = _read_len(data, pos, end)
            if field == 3:
                document = data[start:pos]
            elif field == 10:
                k, v = _decode_map_entry(data, start, pos)
                metadata[k] = v
            elif field == 1:
                blueprint_id = _utf8(data, start, pos, "blueprint_id")
            elif field == 2:
                register_id = _utf8(data, start, pos, "register_id")
            elif field == 5:
                published_by = _utf8(data, start, pos, "published_by")
            elif field == 8:
                txn = _utf8(data, start, pos, "publication_transaction_id")
            else:
                checksum = _utf8(data, start, pos, "checksum")
        elif wire_type == 0 and field in (4, 6, 7):
            value, pos = _read_varint(data, pos, end)
            if field == 4:
                published_at = _signed64(value)
            elif field == 6:
                version = _signed64(value)
            else:
                is_active = value != 0
        else:
            pos = _skip(data, pos, end, wire_type)
    entry = Entry(
        blueprint_id=blueprint_id,
        version=version,
        document=document,
        published_at=published_at,
        published_by=published_by,
        is_active=is_active,
        publication_transaction_id=txn,
        checksum=checksum,
        metadata=metadata,
        change=ChangeType.PUBLISHED if is_active else ChangeType.DEPRECATED,
    )
    return entry, register_id


def decode_entry(data: bytes) -> Entry:
    """An entry of the system register; one labelled with another register is refused."""
    entry, register_id = decode_entry_fields(data)
    if register_id not in ("", SYSTEM_REGISTER_ID):
        raise DecodeError(f"register_id {register_id!r} is not the system register")
    return entry


def encode_notification_prefix(entry: Entry, summary: bytes) -> bytes:
    """``BlueprintNotification`` fields 1-7 for a change; field 8 is per subscriber.

    A hub encodes this once per change and appends each subscription's own
    sequence number (:func:`encode_notification`), so fanning out to 200
    subscribers costs one encoding, not 200.
    """
    parts = [_len_field(b"\x0a", entry.blueprint_id.encode())]
    if entry.version:
        parts.append(b"\x10" + _varint(entry.version))
    if entry.published_at:
        parts.append(b"\x18" + _varint(entry.published_at))
    if entry.published_by:
        parts.append(_len_field(b"\x22", entry.published_by.encode()))
    if summary:
        parts.append(_len_field(b"\x2a", summary))
    parts.append(b"\x30" + _varint(int(entry.change)))
    if entry.checksum:
        parts.append(_len_field(b"\x3a", entry.checksum.encode()))
    return b"".join(parts)


def encode_notification(prefix: bytes, sequence_number: int) -> bytes:
    if not sequence_number:
        return prefix
    return prefix + b"\x40" + _varint(sequence_number)
