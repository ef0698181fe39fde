"""Every Cedar example in the docs validates against the shipped schema, as a reader copying it would find."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from authz_helpers import SHIPPED

from gateway.authz.policyset import load_policies
from tests.support.doc_blocks import DOC_PAGES, fenced_blocks


def _blocks() -> list[object]:
    return fenced_blocks(DOC_PAGES, "cedar")


@pytest.mark.parametrize("block", _blocks())
def test_documented_policy_validates_against_the_shipped_schema(block: str, tmp_path: Path) -> None:
    shutil.copy(SHIPPED / "schema.cedarschema", tmp_path / "schema.cedarschema")
    (tmp_path / "example.cedar").write_text(block)
    assert len(load_policies(tmp_path)) >= 1
