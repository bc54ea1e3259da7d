"""The register model: limits, checksums, and the snapshot digest."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sorcha_peerd.register import (
    Entry,
    Limits,
    Snapshot,
    ValidationError,
    compute_checksum,
    validate_blueprint_id,
    validate_document,
    validate_entry,
    validate_metadata,
    validate_peer_id,
    validate_published_by,
)


def entry(bid: str = "bp", version: int = 1, doc: bytes = b"{}", **kw: object) -> Entry:
    return Entry(bid, version, doc, 1_700_000_000_000, "pub", **kw).with_checksum()  # type: ignore[arg-type]


def test_checksum_is_sha256_of_the_exact_bytes() -> None:
    doc = b'{"a": 1}'
    assert compute_checksum(doc) == "sha256:" + hashlib.sha256(doc).hexdigest()
    assert entry(doc=doc).checksum_ok()
    assert not Entry("bp", 1, doc, 0, "p", checksum=compute_checksum(b'{"a":1}')).checksum_ok()


@pytest.mark.parametrize(
    ("check", "value", "field"),
    [
        (validate_peer_id, "", "peer_id"),
        (validate_peer_id, "a" * 65, "peer_id"),
        (validate_peer_id, "a b", "peer_id"),
        (validate_peer_id, "ü", "peer_id"),
        (validate_peer_id, 7, "peer_id"),
        (validate_blueprint_id, "a" * 256, "blueprint_id"),
        (validate_blueprint_id, "a/b", "blueprint_id"),
        (validate_published_by, "x" * 256, "published_by"),
        (validate_published_by, "", "published_by"),
        (validate_metadata, {"k": "v" * 4096}, "metadata"),
        (validate_metadata, {"k": 1}, "metadata"),
        (validate_document, b"", "blueprint_document"),
        (validate_document, b"not json", "blueprint_document"),
        (validate_document, b'"\xff"', "blueprint_document"),
        (validate_document, "{}", "blueprint_document"),
    ],
)
def test_limits_name_their_field(check: object, value: object, field: str) -> None:
    with pytest.raises(ValidationError) as info:
        check(value)  # type: ignore[operator]
    assert info.value.field == field and str(info.value).startswith(field)


def test_limits_at_the_edge_pass() -> None:
    assert validate_peer_id("a" * 64) and validate_blueprint_id("A-z_0" * 51)
    assert validate_published_by("é" * 255)
    assert validate_metadata({"k": "v" * 4095})
    small = Limits(max_document_bytes=10)
    assert validate_document(b"[1,2,3,4]", small)
    with pytest.raises(ValidationError, match="at most 10"):
        validate_document(b"[1,2,3,4,5]", small)


def test_validate_entry_checks_checksum_and_version() -> None:
    assert validate_entry(entry())
    with pytest.raises(ValidationError, match="does not match"):
        validate_entry(Entry("bp", 1, b"{}", 0, "p", checksum="sha256:" + "0" * 64))
    with pytest.raises(ValidationError, match="checksum"):
        validate_entry(Entry("bp", 1, b"{}", 0, "p", checksum="md5:abc"))
    with pytest.raises(ValidationError, match="version"):
        validate_entry(entry(version=0))


def test_snapshot_counts_and_head() -> None:
    s = Snapshot.build([entry("a", 1), entry("b", 2), entry("c", 3, is_active=False)])
    assert (s.count, s.active_count, s.version) == (3, 2, 3)
    assert [e.blueprint_id for e in s.active()] == ["a", "b"]
    s2 = s.apply([entry("a", 4, b"[1]", is_active=False)], version=9)
    assert (s2.count, s2.active_count, s2.version) == (3, 1, 9)
    assert (s.count, s.active_count, s.version) == (3, 2, 3)  # the old snapshot is untouched


def test_stale_entries_never_move_an_id_backwards() -> None:
    s = Snapshot.build([entry("a", 5, b"[5]")])
    assert s.apply([entry("a", 3, b"[3]")]) == s


changes = st.lists(
    st.tuples(st.sampled_from("abcdef"), st.integers(1, 60), st.booleans()), max_size=30
)


@given(changes, st.randoms())
def test_digest_is_order_independent_and_incremental(
    items: list[tuple[str, int, bool]], rnd: object
) -> None:
    entries = [entry(b, v, f"[{v}]".encode(), is_active=a) for b, v, a in items]
    # keep one entry per (id, version), as a register would
    unique = list({(e.blueprint_id, e.version): e for e in entries}.values())
    shuffled = list(unique)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    one_go = Snapshot.build(unique)
    step = Snapshot()
    for e in shuffled:
        step = step.apply([e])
    assert step.digest == one_go.digest and step.entries == one_go.entries
    newest = {}
    for e in unique:
        if e.blueprint_id not in newest or newest[e.blueprint_id].version < e.version:
            newest[e.blueprint_id] = e
    assert Snapshot.build(newest.values()).digest == one_go.digest


def test_digest_tells_registers_apart() -> None:
    a = Snapshot.build([entry("a", 1), entry("b", 2)])
    assert Snapshot.build([entry("a", 1), entry("b", 3)]).digest != a.digest
    assert Snapshot.build([entry("a", 1), entry("b", 2, b"[2]")]).digest != a.digest
    assert Snapshot.build([entry("a", 1)]).digest != a.digest
    assert Snapshot().digest != a.digest
