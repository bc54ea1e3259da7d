"""What a hub does to its store before it serves: check integrity, seed the default blueprint.

The default blueprint's document is a fixed byte string, so every hub seeds
exactly the same entry (same checksum), and ``create_only`` makes the seed
happen once however often hubs restart, and even when two hubs on one MongoDB
start at the same moment.
"""

from __future__ import annotations

import json
from contextlib import aclosing

import attrs

from sorcha_peerd.register import Entry, ValidationError, validate_entry
from sorcha_peerd.store.base import RegisterStore

DEFAULT_BLUEPRINT_ID = "register-creation-v1"
DEFAULT_PUBLISHER = "system"
DEFAULT_METADATA = {"category": "register", "type": "creation", "isDefault": "true"}
DEFAULT_DOCUMENT = json.dumps(
    {
        "id": DEFAULT_BLUEPRINT_ID,
        "name": "Register creation",
        "title": "Create a register",
        "description": "The default blueprint every Sorcha system register starts with: "
        "the creation of a register.",
        "version": 1,
        "participants": [{"id": "creator", "name": "Register creator"}],
        "actions": [
            {
                "id": 1,
                "title": "Create register",
                "sender": "creator",
                "data": {"registerName": "string", "description": "string"},
            }
        ],
    },
    sort_keys=True,
    separators=(",", ":"),
).encode()


class IntegrityError(Exception):
    """The register holds entries whose checksum does not match their document."""

    def __init__(self, bad: list[tuple[str, int, str]]) -> None:
        shown = ", ".join(f"{bid} (version {v}): {why}" for bid, v, why in bad[:5])
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        super().__init__(
            f"the register is corrupted: {len(bad)} bad entr"
            f"{'y' if len(bad) == 1 else 'ies'}: {shown}{more}"
        )
        self.bad = bad


@attrs.frozen
class IntegrityReport:
    entries: int
    head_version: int
    last_published_at: int = 0


async def check_integrity(store: RegisterStore, *, page_size: int = 500) -> IntegrityReport:
    """Verify every stored entry (checksum and limits), page by page.

    Raises :class:`IntegrityError` naming the bad entries: a hub must not serve
    a register it cannot vouch for.
    """
    bad: list[tuple[str, int, str]] = []
    count = 0
    head = 0
    last_published = 0
    async with aclosing(store.iter_since(0, page_size=page_size)) as pages:
        async for page in pages:
            for entry in page:
                count += 1
                head = max(head, entry.version)
                last_published = max(last_published, entry.published_at)
                try:
                    validate_entry(entry)
                except ValidationError as exc:
                    bad.append((entry.blueprint_id, entry.version, str(exc)))
    if bad:
        raise IntegrityError(bad)
    return IntegrityReport(count, head, last_published)


async def seed_default(store: RegisterStore) -> Entry:
    """Publish ``register-creation-v1`` unless the register already has it."""
    return await store.publish(
        DEFAULT_BLUEPRINT_ID,
        DEFAULT_DOCUMENT,
        published_by=DEFAULT_PUBLISHER,
        metadata=DEFAULT_METADATA,
        create_only=True,
    )
