"""Every Cedar example in the docs validates against the shipped schema, as a reader copying it would find."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from authz_helpers import REPO, SHIPPED

from gateway.authz.policyset import load_policies

FENCE = re.compile(r"^```cedar\n(.*?)^```", re.S | re.M)


def _blocks() -> list[object]:
    found = []
    for page in [*sorted((REPO / "docs").glob("*.md")), REPO / "README.md"]:
        text = page.read_text()
        for match in FENCE.finditer(text):
            line = text[:match.start()].count("\n") + 1
            found.append(pytest.param(match.group(1), id=f"{page.relative_to(REPO)}:{line}"))
    return found


@pytest.mark.parametrize("block", _blocks())
def test_documented_policy_validates_against_the_shipped_schema(block: str, tmp_path: Path) -> None:
    shutil.copy(SHIPPED / "schema.cedarschema", tmp_path / "schema.cedarschema")
    (tmp_path / "example.cedar").write_text(block)
    assert len(load_policies(tmp_path)) >= 1
