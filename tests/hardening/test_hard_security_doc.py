"""docs/security.md names real tests: every `file::test` reference resolves to a test function."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
REFERENCE = re.compile(r"`([a-z_]+/test_[a-z0-9_]+\.py)::(test_[a-z0-9_]+)`")


def test_every_referenced_test_exists() -> None:
    doc = (REPO / "docs" / "security.md").read_text()
    references = REFERENCE.findall(doc)
    assert len(references) > 60
    missing = []
    for path, name in sorted(set(references)):
        source = REPO / "tests" / path
        if not source.exists() or not re.search(rf"^(async )?def {name}\(", source.read_text(), re.M):
            missing.append(f"{path}::{name}")
    assert missing == []
