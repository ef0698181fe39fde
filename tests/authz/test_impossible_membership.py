"""A condition on the principal's or resource's type or parents that the schema makes impossible is refused.

Agents are `in Tenant` only (people, `User`, are `in Group`), but Cedar's validator types `principal in
Group::"contractors"` in a policy about `call_tool` as always false, not as an error, so a forbid meant for an
agent group (agents carry theirs as `principal.groups`) validated and never fired; likewise `principal ==
User::"bob"`, `principal is User` or `resource in Tenant::"acme"` for an agent action."""

from __future__ import annotations

from pathlib import Path

import pytest
from authz_helpers import SHIPPED

from gateway.authz.policyset import PolicyLoadError, load_policies
from tests.support.cli import customs_main


def _write(directory: Path, condition: str, action: str = 'action == Action::"call_tool"') -> None:
    directory.mkdir(exist_ok=True)
    (directory / "schema.cedarschema").write_text((SHIPPED / "schema.cedarschema").read_text())
    (directory / "c.cedar").write_text(f'@id("c")\nforbid (principal, {action}, resource)\nwhen {{ {condition} }};\n')


@pytest.mark.parametrize(("condition", "named"), [
    ('principal in Group::"contractors"', 'principal in Group::"contractors"'),
    ('principal in [Group::"a", Group::"b"]', 'principal in Group::"a"'),
    ('principal == User::"bob"', 'principal == User::"bob"'),
    ("principal is User", "principal is User"),
    ('resource in Tenant::"acme"', 'resource in Tenant::"acme"'),
    ('!(principal in Group::"trusted")', 'principal in Group::"trusted"'),
])
def test_an_impossible_membership_is_refused(tmp_path: Path, condition: str, named: str) -> None:
    _write(tmp_path / "p", condition)
    with pytest.raises(PolicyLoadError) as refused:
        load_policies(tmp_path / "p")
    problems = "\n".join(refused.value.problems)
    assert f"c.cedar:1: policy 'c': `{named}` never holds" in problems, problems
    assert customs_main("policy", "validate", tmp_path / "p").returncode == 1


@pytest.mark.parametrize(("condition", "action"), [
    ('principal in Tenant::"acme"', 'action == Action::"call_tool"'),
    ('principal == Agent::"spiffe://a.test/x"', 'action in [Action::"call_tool", Action::"list_tools"]'),
    ('resource in Server::"inventory" && resource is Tool', 'action == Action::"read_resource"'),
    ('principal in Group::"approvers"', 'action == Action::"approve"'),
    ('principal in Group::"approvers"', "action"),  # every action: a User may be in a Group
])
def test_a_possible_membership_loads(tmp_path: Path, condition: str, action: str) -> None:
    _write(tmp_path / "p", condition, action)
    assert load_policies(tmp_path / "p").version.startswith("sha256:")
