"""Hub-like entries for the replica tests (valid checksums, distinct transaction ids)."""

from __future__ import annotations

import json

from sorcha_peerd.register import Entry


def entry(blueprint_id: str, version: int, *, active: bool = True, tx: str = "") -> Entry:
    document = json.dumps({"id": blueprint_id, "v": version}).encode()
    return Entry(
        blueprint_id=blueprint_id,
        version=version,
        document=document,
        published_at=1_700_000_000_000 + version,
        published_by="hub",
        is_active=active,
        publication_transaction_id=tx or f"tx{version}",
    ).with_checksum()
