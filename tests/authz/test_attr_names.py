"""Every attribute a policy reads on `context`, a record inside it, `principal` or `resource` must be one the schema
declares. Cedar's validator types `principal has clearence` (or `context.task has seen_tool`, `context has
enviroment`) on a type without that attribute as always false, not as an error, so a misspelled guard validated and
a forbid written with it silently never fired; only `context.args` and `context.task.totals` of a `type Task` were
checked. The loader refuses such a set, `customs policy validate` exits 1 naming the policy and the attribute."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.authz.policyset import PolicyLoadError, load_policies
from tests.support.cli import customs_main

MINIMAL_SCHEMA = """entity Tenant; entity Server; entity Group;
entity Agent in [Tenant] { tenant?: String, trust?: String };
entity User in [Group];
entity Tool in [Server] { read_only: Bool, sensitivity: String };
entity Approval { upstream: String, tool: String };
action call_tool, list_tools, read_resource, get_prompt appliesTo {
  principal: [Agent], resource: [Tool],
  context: { args: { amount?: Long, item?: { qty?: Long } }, environment: String, approval: String,
             time: { hour: Long, weekday: Long },
             task?: { calls?: Long, seen_tools?: Set<String>, totals?: { amount?: Long } } }
};
action approve appliesTo { principal: [User], resource: [Approval] };
"""


def _forbid(condition: str) -> str:
    return f'@id("guard")\nforbid (principal, action == Action::"call_tool", resource)\nwhen {{ {condition} }};\n'


@pytest.mark.parametrize(("condition", "named"), [
    ('principal has trsut && principal.trsut == "low"', "'trsut' read on principal"),
    ('resource has sensitivty && resource.sensitivty == "restricted"', "'sensitivty' read on resource"),
    ('context has enviroment && context.enviroment == "production"', "'enviroment' read on context"),
    ('context has task && context.task has seen_tool && context.task.seen_tool.contains("a/b")',
     "'seen_tool' read on context.task"),
    ("context has task && context.task has call && context.task.call > 2", "'call' read on context.task"),
    ("context.time has hours && context.time.hours > 2", "'hours' read on context.time"),
    # an inline totals record (no `type Task`): not covered by the totals check either
    ("context has task && context.task has totals && context.task.totals has amout && context.task.totals.amout > 9",
     "'amout' read on context.task.totals"),
    ("context.args has item && context.args.item has qtty && context.args.item.qtty > 9",
     "'qtty' read on context.args.item"),
])
def test_a_misspelled_guarded_attribute_is_refused(tmp_path: Path, condition: str, named: str) -> None:
    (tmp_path / "schema.cedarschema").write_text(MINIMAL_SCHEMA)
    (tmp_path / "guard.cedar").write_text(_forbid(condition))
    with pytest.raises(PolicyLoadError) as refused:
        load_policies(tmp_path)
    assert any(named in p and "guard.cedar:1: policy 'guard'" in p for p in refused.value.problems), \
        refused.value.problems
    result = customs_main("policy", "validate", tmp_path)
    assert result.returncode == 1 and named in result.stdout + result.stderr


def test_the_did_you_mean_names_the_declared_attribute(tmp_path: Path) -> None:
    (tmp_path / "schema.cedarschema").write_text(MINIMAL_SCHEMA)
    (tmp_path / "guard.cedar").write_text(_forbid('principal has trsut && principal.trsut == "low"'))
    with pytest.raises(PolicyLoadError) as refused:
        load_policies(tmp_path)
    assert "did you mean 'trust'?" in "\n".join(refused.value.problems)


def test_declared_attributes_load(tmp_path: Path) -> None:
    """Correct names (including another action's principal type's, `resource.upstream` on an Approval) load."""
    (tmp_path / "schema.cedarschema").write_text(MINIMAL_SCHEMA)
    (tmp_path / "ok.cedar").write_text(
        _forbid('principal has trust && principal.trust == "low" && context.environment == "production" && '
                'context has task && context.task has seen_tools && context.task.seen_tools.contains("a/b") && '
                'context.time.hour > 2 && context.args has item && context.args.item has qty && '
                'context.args.item.qty > 1 && resource.sensitivity == "restricted"')
        + '@id("approvers")\npermit (principal in Group::"a", action == Action::"approve", resource)\n'
          'when { resource.upstream == "payments" };\n')
    assert load_policies(tmp_path).version.startswith("sha256:")


def test_the_shipped_policies_still_load() -> None:
    from authz_helpers import SHIPPED
    assert load_policies(SHIPPED).version.startswith("sha256:")
