"""A policy comparing `context.approval` or `resource.sensitivity` with a value it never takes is refused.

`context.approval` is "none" or "granted"; `resource.sensitivity` one of public, internal, confidential,
restricted (the config refuses any other). `resource.sensitivity == "Restricted"` or `context.approval ==
"approved"` validated (both sides are Strings) and was merely false: a forbid written with it never fired."""

from __future__ import annotations

from pathlib import Path

import pytest
from authz_helpers import forbid_when, shipped_schema_dir

from gateway.authz.policyset import PolicyLoadError, load_policies


def _dir(tmp_path: Path, body: str) -> Path:
    return shipped_schema_dir(tmp_path, "v", forbid_when("v", body))


@pytest.mark.parametrize(("body", "problem"), [
    ('resource.sensitivity == "Restricted"', "resource.sensitivity compared with 'Restricted'"),
    ('["secret", "restricted"].contains(resource.sensitivity)', "resource.sensitivity compared with 'secret'"),
    ('"confidental" == resource.sensitivity', "resource.sensitivity compared with 'confidental'"),
    ('context.approval == "approved"', "context.approval compared with 'approved'"),
    ('context.approval != "pending" && resource.destructive', "context.approval compared with 'pending'"),
])
def test_a_value_the_attribute_never_takes_is_refused(tmp_path: Path, body: str, problem: str) -> None:
    with pytest.raises(PolicyLoadError) as refused:
        load_policies(_dir(tmp_path, body))
    problems = "\n".join(refused.value.problems)
    assert f"v.cedar:1: policy 'v': {problem}, which it never is" in problems, problems


@pytest.mark.parametrize("body", [
    'resource.sensitivity == "restricted" && context.approval != "granted"',
    '["confidential", "restricted"].contains(resource.sensitivity) || context.approval == "none"',
    'principal has clearance && principal.clearance == "Restricted"',  # free text: not checked
])
def test_values_it_takes_load(tmp_path: Path, body: str) -> None:
    assert load_policies(_dir(tmp_path, body)).version.startswith("sha256:")
