"""The hand-written codec agrees with betterproto2 and with the protobuf runtime."""

from __future__ import annotations

from types import ModuleType

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sorcha_peerd.register import SYSTEM_REGISTER_ID, ChangeType, Entry
from sorcha_peerd.wire import codec
from sorcha_peerd.wire import messages as pb

ids = st.text("abcXYZ019_-", min_size=1, max_size=40)
texts = st.text(max_size=30)
int64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)

entries = st.builds(
    Entry,
    blueprint_id=ids,
    version=int64,
    document=st.binary(max_size=300),
    published_at=int64,
    published_by=texts,
    is_active=st.booleans(),
    publication_transaction_id=texts,
    checksum=texts,
    metadata=st.dictionaries(texts, texts, max_size=4),
)


def _as_betterproto(e: Entry) -> pb.SystemRegisterEntry:
    return pb.SystemRegisterEntry(
        blueprint_id=e.blueprint_id,
        register_id=SYSTEM_REGISTER_ID,
        blueprint_document=e.document,
        published_at=e.published_at,
        published_by=e.published_by,
        version=e.version,
        is_active=e.is_active,
        publication_transaction_id=e.publication_transaction_id,
        checksum=e.checksum,
        metadata=dict(e.metadata),
    )


def _same(a: Entry, b: Entry) -> bool:
    keys = (
        "blueprint_id",
        "version",
        "document",
        "published_at",
        "published_by",
        "is_active",
        "publication_transaction_id",
        "checksum",
    )
    return all(getattr(a, k) == getattr(b, k) for k in keys) and dict(a.metadata) == dict(
        b.metadata
    )


@given(entries)
def test_encode_is_read_by_betterproto2(e: Entry) -> None:
    assert pb.SystemRegisterEntry.parse(codec.encode_entry(e)) == _as_betterproto(e)


@given(entries)
def test_decode_reads_betterproto2(e: Entry) -> None:
    decoded, register_id = codec.decode_entry_fields(bytes(_as_betterproto(e)))
    assert _same(decoded, e)
    assert register_id == SYSTEM_REGISTER_ID


@given(entries)
def test_round_trip(e: Entry) -> None:
    assert _same(codec.decode_entry(codec.encode_entry(e)), e)


def test_decoded_change_type_follows_activity() -> None:
    e = Entry("a", 3, b"{}", 1, "x", is_active=False).with_checksum()
    assert codec.decode_entry(codec.encode_entry(e)).change is ChangeType.DEPRECATED


def test_protobuf_runtime_agrees(grpcio_contract: tuple[ModuleType, ModuleType]) -> None:
    x = grpcio_contract[0]
    e = Entry(
        "bp-1",
        2**40,
        b'{"a": 1}',
        1_700_000_000_000,
        "publisher",
        False,
        "txn",
        metadata={"k": "v", "é": "ü", "empty": ""},
    ).with_checksum()
    theirs = x.XEntry.FromString(codec.encode_entry(e))
    assert theirs.blueprint_id == "bp-1" and theirs.version == 2**40
    assert theirs.register_id == SYSTEM_REGISTER_ID and theirs.is_active is False
    assert dict(theirs.metadata) == dict(e.metadata) and theirs.checksum == e.checksum
    # and the other way, with fields in protobuf's own order and negative numbers
    theirs.published_at = -5
    assert _same(
        codec.decode_entry(theirs.SerializeToString()),
        Entry("bp-1", 2**40, b'{"a": 1}', -5, "publisher", False, "txn", e.checksum, e.metadata),
    )


def test_notification_prefix_plus_sequence(
    grpcio_contract: tuple[ModuleType, ModuleType],
) -> None:
    x = grpcio_contract[0]
    e = Entry("bp-9", 12, b"{}", 99, "pub", change=ChangeType.UPDATED).with_checksum()
    prefix = codec.encode_notification_prefix(e, b"summary")
    for seq in (0, 1, 300, 2**40):
        ours = pb.BlueprintNotification.parse(codec.encode_notification(prefix, seq))
        assert ours == pb.BlueprintNotification(
            blueprint_id="bp-9",
            version=12,
            published_at=99,
            published_by="pub",
            blueprint_summary=b"summary",
            type=pb.NotificationType.BLUEPRINT_UPDATED,
            checksum=e.checksum,
            sequence_number=seq,
        )
        theirs = x.XNote.FromString(codec.encode_notification(prefix, seq))
        assert theirs.sequence_number == seq and theirs.type == 2


@pytest.mark.parametrize(
    "data",
    [
        b"\x0a\x05ab",  # length beyond the end
        b"\x30",  # truncated varint
        b"\x30" + b"\xff" * 11,  # varint too long
        b"\x0b",  # wire type 3 (groups) unsupported
        b"\x0a\x02\xff\xfe",  # id not UTF-8
    ],
)
def test_malformed_input_is_a_decode_error(data: bytes) -> None:
    with pytest.raises(codec.DecodeError):
        codec.decode_entry(data)


def test_unknown_fields_are_skipped() -> None:
    e = Entry("x", 1, b"{}", 1, "p").with_checksum()
    extra = b"\xa8\x06\x05" + b"\xb2\x06\x03abc" + b"\xbd\x06abcd" + b"\xb9\x06" + b"12345678"
    assert _same(codec.decode_entry(codec.encode_entry(e) + extra), e)


@pytest.mark.parametrize(
    "data",
    [
        b"\x0a\x09ab",  # ConnectRequest.peer_id: length past the end
        b"\x08\x01",  # peer_id sent as a varint
        b"\x0a\x02\xff\xfe",  # peer_id not UTF-8
        b"\x12\x03\x0a\x05a",  # peer_info: nested message truncated
        b"\x12\x02\x18\x05" + b"\x12\x02\x1a\x01",  # peer_info.node_type as varint
        b"\x0b",  # unsupported wire type
    ],
)
def test_strict_parse_refuses_what_betterproto2_would_accept(data: bytes) -> None:
    from sorcha_peerd.wire import strict

    with pytest.raises(codec.DecodeError):
        strict.parse(pb.ConnectRequest, data)


def test_strict_parse_accepts_valid_messages_maps_packed_and_unknown_fields() -> None:
    from sorcha_peerd.wire import strict

    filters = pb.SubscriptionFilters(
        blueprint_ids=["a", "b"],
        notification_types=[pb.NotificationType.BLUEPRINT_UPDATED],
        metadata_filters={"k": "v"},
    )
    msg = pb.SubscriptionRequest(peer_id="p", session_id="s", subscribe_time=5, filters=filters)
    assert strict.parse(pb.SubscriptionRequest, bytes(msg) + b"\xa8\x06\x01") == msg


def test_an_entry_of_another_register_is_refused() -> None:
    e = Entry("x", 1, b"{}", 1, "p").with_checksum()
    data = codec.encode_entry(e).replace(
        SYSTEM_REGISTER_ID.encode(), b"11111111-1111-1111-1111-111111111111"
    )
    with pytest.raises(codec.DecodeError, match="not the system register"):
        codec.decode_entry(data)
