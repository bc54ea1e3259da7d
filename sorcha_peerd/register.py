"""The system register's values: entries, their validation and checksums, snapshots.

Everything here is immutable and free of I/O, so that the store, the hub, the
peer and the wire layer can share one definition of "a valid entry" and one
definition of "the same register" (the snapshot digest).

Limits come from the wire contract; the ones an operator may want to tune
(document size) are passed in as :class:`Limits` rather than read from globals.
"""

from __future__ import annotations

import enum
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

import attrs

#: ``register_id`` of the system register on the wire; it never changes.
SYSTEM_REGISTER_ID = "00000000-0000-0000-0000-000000000000"

_ID_RE = re.compile(r"[A-Za-z0-9_-]+")
CHECKSUM_PREFIX = "sha256:"
_CHECKSUM_RE = re.compile(r"sha256:[0-9a-f]{64}")


class ValidationError(ValueError):
    """A value breaks a limit of the protocol; the message names the field."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


class ChangeType(enum.IntEnum):
    """What the last change to an entry was; values match the wire's NotificationType."""

    PUBLISHED = 1
    UPDATED = 2
    DEPRECATED = 3


@attrs.frozen
class Limits:
    """Protocol limits. Defaults are the contract's; only document size is tunable."""

    max_peer_id: int = 64
    max_blueprint_id: int = 255
    max_published_by: int = 255
    max_metadata_bytes: int = 4 * 1024
    max_document_bytes: int = 16 * 1024 * 1024
    max_summary_bytes: int = 4 * 1024
    max_clock_skew: float = 60.0


DEFAULT_LIMITS = Limits()


def _check_identifier(field: str, value: object, max_len: int) -> str:
    if not isinstance(value, str):
        raise ValidationError(field, f"must be a string, got {type(value).__name__}")
    if not value:
        raise ValidationError(field, "must not be empty")
    if len(value) > max_len:
        raise ValidationError(field, f"is {len(value)} characters, at most {max_len} allowed")
    if not _ID_RE.fullmatch(value):
        raise ValidationError(field, "may only contain the characters A-Z a-z 0-9 _ -")
    return value


def validate_peer_id(value: object, limits: Limits = DEFAULT_LIMITS) -> str:
    """Check a node or peer id (at most 64 of ``[A-Za-z0-9_-]``)."""
    return _check_identifier("peer_id", value, limits.max_peer_id)


def validate_blueprint_id(value: object, limits: Limits = DEFAULT_LIMITS) -> str:
    """Check a blueprint id (at most 255 of ``[A-Za-z0-9_-]``)."""
    return _check_identifier("blueprint_id", value, limits.max_blueprint_id)


def validate_published_by(value: object, limits: Limits = DEFAULT_LIMITS) -> str:
    if not isinstance(value, str):
        raise ValidationError("published_by", "must be a string")
    if not value:
        raise ValidationError("published_by", "must not be empty")
    if len(value) > limits.max_published_by:
        raise ValidationError(
            "published_by",
            f"is {len(value)} characters, at most {limits.max_published_by} allowed",
        )
    return value


def metadata_size(metadata: Mapping[str, str]) -> int:
    """Bytes a metadata map counts against its 4 KiB limit: UTF-8 keys plus values."""
    return sum(len(k.encode()) + len(v.encode()) for k, v in metadata.items())


def validate_metadata(
    value: Mapping[Any, Any], limits: Limits = DEFAULT_LIMITS
) -> Mapping[str, str]:
    for k, v in value.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise ValidationError("metadata", "keys and values must be strings")
        if not k:
            raise ValidationError("metadata", "keys must not be empty")
    size = metadata_size(value)
    if size > limits.max_metadata_bytes:
        raise ValidationError(
            "metadata", f"is {size} bytes, at most {limits.max_metadata_bytes} allowed"
        )
    return value


def validate_document(value: object, limits: Limits = DEFAULT_LIMITS) -> bytes:
    """A blueprint document: non-empty UTF-8 JSON, at most the size limit."""
    if not isinstance(value, bytes | bytearray | memoryview):
        raise ValidationError("blueprint_document", "must be bytes")
    data = bytes(value)
    if not data:
        raise ValidationError("blueprint_document", "must not be empty")
    if len(data) > limits.max_document_bytes:
        raise ValidationError(
            "blueprint_document",
            f"is {len(data)} bytes, at most {limits.max_document_bytes} allowed",
        )
    try:
        json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ValidationError("blueprint_document", f"is not UTF-8: {exc.reason}") from None
    except json.JSONDecodeError as exc:
        raise ValidationError("blueprint_document", f"is not JSON: {exc.msg}") from None
    return data


def compute_checksum(document: bytes) -> str:
    """``sha256:`` and the lowercase hex SHA-256 of the exact document bytes."""
    return CHECKSUM_PREFIX + hashlib.sha256(document).hexdigest()


def _freeze_metadata(value: Mapping[str, str] | Iterable[tuple[str, str]]) -> Mapping[str, str]:
    if isinstance(value, MappingProxyType):
        return value
    return MappingProxyType(dict(value))


@attrs.frozen(eq=True)
class Entry:
    """One blueprint at one version, as stored, served and replicated.

    ``change`` says what produced this version (publish, update or deprecate);
    it is stored beside the entry so the change feed can say it, but it does not
    travel in ``SystemRegisterEntry`` and does not enter the checksum or digest.
    """

    blueprint_id: str
    version: int
    document: bytes
    published_at: int
    published_by: str
    is_active: bool = True
    publication_transaction_id: str = ""
    checksum: str = ""
    metadata: Mapping[str, str] = attrs.field(
        factory=dict,
        converter=_freeze_metadata,
        eq=attrs.cmp_using(eq=lambda a, b: dict(a) == dict(b)),
    )
    change: ChangeType = ChangeType.PUBLISHED

    def checksum_ok(self) -> bool:
        """True when ``checksum`` is the SHA-256 of ``document``."""
        return self.checksum == compute_checksum(self.document)

    def with_checksum(self) -> Entry:
        return attrs.evolve(self, checksum=compute_checksum(self.document))


def validate_entry(entry: Entry, limits: Limits = DEFAULT_LIMITS) -> Entry:
    """Check every limit of the contract on a received or stored entry.

    The document is checked for size only: JSON-ness is enforced when a
    blueprint is published, while a replica accepts what the checksum proves.
    """
    validate_blueprint_id(entry.blueprint_id, limits)
    validate_published_by(entry.published_by, limits)
    validate_metadata(entry.metadata, limits)
    if entry.version < 1:
        raise ValidationError("version", f"must be at least 1, got {entry.version}")
    if entry.published_at < 0:
        raise ValidationError("published_at", "must not be negative")
    if len(entry.document) > limits.max_document_bytes:
        raise ValidationError(
            "blueprint_document",
            f"is {len(entry.document)} bytes, at most {limits.max_document_bytes} allowed",
        )
    if not _CHECKSUM_RE.fullmatch(entry.checksum):
        raise ValidationError("checksum", "must be 'sha256:' and 64 lowercase hex digits")
    if not entry.checksum_ok():
        raise ValidationError("checksum", "does not match the document")
    return entry


# --------------------------------------------------------------------------- digest

_DIGEST_MOD = 1 << 256


def entry_digest_term(blueprint_id: str, version: int, checksum: str) -> int:
    """One entry's contribution to a register digest."""
    h = hashlib.sha256(f"{blueprint_id}\x00{version}\x00{checksum}".encode())
    return int.from_bytes(h.digest(), "big")


def format_digest(acc: int) -> str:
    return "sha256sum:" + acc.to_bytes(32, "big").hex()


@attrs.frozen
class Snapshot:
    """An immutable view of a whole register: what readers see between two commits.

    ``digest`` is the sum modulo 2**256 of the SHA-256 of every ``(id, version,
    checksum)``. A sum (rather than one hash over a sorted list) can be updated
    in O(1) per changed entry, so a peer applying one notification does not
    rehash 100k entries; two registers with the same digest hold the same
    entries at the same versions. Deprecated entries are part of it.
    """

    entries: Mapping[str, Entry] = attrs.field(factory=lambda: MappingProxyType({}))
    version: int = 0
    _digest_acc: int = 0
    active_count: int = 0

    @property
    def count(self) -> int:
        """Entries held, deprecated ones included."""
        return len(self.entries)

    @property
    def digest(self) -> str:
        return format_digest(self._digest_acc)

    def get(self, blueprint_id: str) -> Entry | None:
        return self.entries.get(blueprint_id)

    def active(self) -> list[Entry]:
        """Active entries, oldest version first (what a full sync sends)."""
        return sorted((e for e in self.entries.values() if e.is_active), key=lambda e: e.version)

    @classmethod
    def build(cls, entries: Iterable[Entry], version: int | None = None) -> Snapshot:
        return cls().apply(entries, version=version)

    def apply(self, changed: Iterable[Entry], version: int | None = None) -> Snapshot:
        """A new snapshot with ``changed`` entries replacing those of the same id.

        An entry older than the one held is ignored, so applying a stale page
        twice or out of order can never move an id backwards. ``version`` is
        the new head (a checkpoint may be ahead of the newest entry held, when
        later versions superseded it); it defaults to the highest seen.
        """
        new = dict(self.entries)
        acc = self._digest_acc
        active = self.active_count
        head = self.version
        for e in changed:
            old = new.get(e.blueprint_id)
            if old is not None:
                if old.version >= e.version:
                    continue
                acc -= entry_digest_term(old.blueprint_id, old.version, old.checksum)
                active -= old.is_active
            new[e.blueprint_id] = e
            acc += entry_digest_term(e.blueprint_id, e.version, e.checksum)
            active += e.is_active
            head = max(head, e.version)
        if version is not None:
            head = max(head, version)
        return Snapshot(
            entries=MappingProxyType(new),
            version=head,
            digest_acc=acc % _DIGEST_MOD,
            active_count=active,
        )
