"""The committed betterproto2 code is exactly what scripts/gen_proto.py generates."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "sorcha_peerd" / "wire" / "generated"


def _files(root: Path) -> dict[str, Path]:
    return {
        str(p.relative_to(root)): p
        for p in root.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }


def test_committed_generated_code_matches_the_generator(tmp_path: Path) -> None:
    out = tmp_path / "generated"
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_proto.py"), "--out", str(out)],
        check=True,
        capture_output=True,
    )
    fresh, committed = _files(out), _files(COMMITTED)
    assert sorted(fresh) == sorted(committed), (
        "generated file set differs: run scripts/gen_proto.py"
    )
    differing = [
        name for name in fresh if not filecmp.cmp(fresh[name], committed[name], shallow=False)
    ]
    assert not differing, f"committed code is stale, run scripts/gen_proto.py: {differing}"


def test_proto_files_declare_the_contract_package() -> None:
    for proto in (ROOT / "proto").rglob("*.proto"):
        assert "package sorcha.peer.v1;" in proto.read_text(), proto
