"""Arguments a policy reads on `context.args` must be in the schema's `Args`: read from the AST, refused on load."""

from __future__ import annotations

import json
from pathlib import Path

import cedarpy
import pytest

from gateway.authz.argnames import args_reads, schema_args, schema_totals
from gateway.authz.policyset import PolicyLoadError, load_policies


def reads(condition: str) -> set[str]:
    est = json.loads(cedarpy.policies_to_json_str(f"permit (principal, action, resource) when {{ {condition} }};"))
    return args_reads(est["staticPolicies"]["policy0"])


def test_reads_every_way_of_naming_an_argument_and_only_the_first_level() -> None:
    assert reads('context.args has amout && context.args["memo"] == "x" && context["args"].sku == "y"') == \
        {"amout", "memo", "sku"}
    assert reads("context.args has rec.inner && context.args.rec.deep.z == 1") == {"rec"}
    assert reads('context has args && context.task.totals.amount > 1 && {amout: 1} == {amout: 1}') == set()
    assert reads("resource.args has amout") == set()  # only context.args is checked


def test_schema_args_from_cedar_rendering() -> None:
    schema = cedarpy.Schema.from_str('type Args = { "a-b"?: String, rec?: { inner?: Long }, '
                                     's?: Set<{ q?: Long }>, plain?: Long }; entity E;')
    assert schema_args(schema) == {"a-b", "rec", "s", "plain"}
    assert schema_args(cedarpy.Schema.from_str("type Args = {}; entity E;")) == frozenset()
    assert schema_args(cedarpy.Schema.from_str("entity E;")) is None


def test_loading_refuses_a_misspelled_guard(policy_dir: Path) -> None:
    """Start-up and reload refuse the set too: an always-false forbid is a silent hole."""
    (policy_dir / "cap.cedar").write_text('@id("cap")\nforbid (principal, action == Action::"call_tool", resource)\n'
                                          'when { context.args has quantty && context.args.quantty > 5 };\n'
                                          '@id("cap2")\nforbid (principal, action == Action::"list_tools", resource)\n'
                                          'when { context.args has zzzzzz };')
    with pytest.raises(PolicyLoadError) as caught:
        load_policies(policy_dir)
    assert caught.value.problems == [
        f"{policy_dir / 'cap.cedar'}:1: policy 'cap': argument 'quantty' read on context.args is not in the "
        "schema's Args record; did you mean 'quantity'?",
        f"{policy_dir / 'cap.cedar'}:4: policy 'cap2': argument 'zzzzzz' read on context.args is not in the "
        "schema's Args record"]


def test_no_args_type_still_checks_an_inline_args_record(tmp_path: Path) -> None:
    """A schema declaring the arguments inline (no `type Args`) was not checked at all; the guard's names are now
    checked against the record the context declares (attrnames), while a name the record has loads."""
    (tmp_path / "schema.cedarschema").write_text(
        "entity A; action call_tool appliesTo { principal: [A], resource: [A], context: { args: { n?: Long } } };")
    (tmp_path / "p.cedar").write_text('@id("p")\npermit (principal, action, resource) when { context.args has m };')
    with pytest.raises(PolicyLoadError, match=r"attribute 'm' read on context\.args is not declared"):
        load_policies(tmp_path)
    (tmp_path / "p.cedar").write_text('@id("p")\npermit (principal, action, resource) when { context.args has n };')
    assert len(load_policies(tmp_path)) == 1


def test_loading_refuses_a_misspelled_task_total(policy_dir: Path) -> None:
    """`context.task.totals` is optional too: a forbid guarded by a misspelled total (`has amout`) validates as
    always false and never fires, however much the task paid. The names are checked against the schema's
    `Task` type's `totals` record, like arguments against `Args`."""
    (policy_dir / "cap.cedar").write_text(
        '@id("task-cap")\nforbid (principal, action == Action::"call_tool", resource)\n'
        'when { context has task && context.task has totals && context.task.totals has amout && '
        'context.task.totals.amout > 50000 };\n'
        '@id("fine")\nforbid (principal, action == Action::"call_tool", resource)\n'
        'when { context has task && context.task has totals && context["task"]["totals"] has amount && '
        'context.task.totals.amount > 90000 };\n')
    with pytest.raises(PolicyLoadError) as caught:
        load_policies(policy_dir)
    assert caught.value.problems == [
        f"{policy_dir / 'cap.cedar'}:1: policy 'task-cap': total 'amout' read on context.task.totals is not in "
        "the schema's Task totals record; did you mean 'amount'?"]


def test_schema_totals_from_cedar_rendering() -> None:
    def totals(text: str) -> frozenset[str] | None:
        return schema_totals(cedarpy.Schema.from_str(text + " entity E;"))
    assert totals('type Task = { calls?: Long, totals?: { amount?: Long, "fee-x"?: Long }, seen?: Set<String> };') \
        == {"amount", "fee-x"}
    assert totals("type Task = { totals?: {} };") == frozenset()
    assert totals("type Task = { calls?: Long };") is None
    assert totals("type Other = { totals?: { a?: Long } };") is None
