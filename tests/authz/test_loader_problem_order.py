"""The loader's own checks list a set's problems in the order of its policies, as the files hold them.

Cedar names a set's policies policy0, policy1, … policy10; the time, value and entity literal checks sorted those
names as text, so with more than ten policies policy10's problem came before policy2's, unlike the other checks'."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from authz_helpers import forbid_when, shipped_schema_dir

from gateway.authz.policyset import PolicyLoadError, load_policies

COUNT = 12


@pytest.mark.parametrize(("condition", "kind"), [
    ("context.time.hour == 24", "context.time.hour compared with"),
    ('context.approval == "approved"', "context.approval compared with"),
    ('resource == Tool::"get_stock"', 'Tool::"get_stock" names no tool'),
])
def test_problems_follow_the_policies_order(tmp_path: Path, condition: str, kind: str) -> None:
    target = shipped_schema_dir(tmp_path, "many", "".join(forbid_when(f"p{i}", condition) for i in range(COUNT)))
    with pytest.raises(PolicyLoadError) as refused:
        load_policies(target)
    named = [int(m.group(1)) for p in refused.value.problems if kind in p
             and (m := re.search(r"policy 'p(\d+)'", p)) is not None]
    assert named == list(range(COUNT)), refused.value.problems
