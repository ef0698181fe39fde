"""JSON Schema → Cedar types for `policy schema`."""

from __future__ import annotations

import shutil
from pathlib import Path

import cedarpy
import pytest
from authz_helpers import SHIPPED, TOOLS, agent

from gateway.authz.entities import CallFacts
from gateway.authz.evaluate import decide
from gateway.authz.policyset import PolicyLoadError, load_policies
from gateway.authz.schemagen import BEGIN, END, apply_block, cedar_type, schema_from_input_schemas
from gateway.context import ToolInfo


def test_json_schema_types() -> None:
    assert cedar_type({"type": "string"}) == "String"
    assert cedar_type({"type": ["integer", "null"]}) == "Long"
    assert cedar_type({"type": "number"}) == "Long"
    assert cedar_type({"type": "array", "items": {"type": "boolean"}}) == "Set<Bool>"
    assert cedar_type({"type": "array"}) is None
    assert cedar_type({"enum": ["a", "b"]}) == "String"
    assert cedar_type({"anyOf": [{"type": "string"}, {"type": "null"}]}) == "String"
    assert cedar_type({"anyOf": [{"type": "string"}, {"type": "integer"}]}) is None
    assert cedar_type({"type": "object", "properties": {"a-b": {"type": "string"}}}) == '{ "a-b"?: String }'
    deep: dict[str, object] = {"type": "string"}
    for _ in range(10):
        deep = {"type": "object", "properties": {"x": deep}}
    assert "String" not in (cedar_type(deep) or "")


def test_conflicting_argument_types_are_left_out() -> None:
    block = schema_from_input_schemas({
        "a": [{"name": "t", "inputSchema": {"properties": {"id": {"type": "string"}, "n": {"type": "integer"}}}}],
        "b": [{"name": "u", "inputSchema": {"properties": {"id": {"type": "integer"}}}}],
    })
    assert '"n"?: Long,' in block and '"id"?:' not in block.split("type Args")[1]
    assert '// "id" left out: conflicting types (a/t: String; b/u: Long)' in block
    full = apply_block((SHIPPED / "schema.cedarschema").read_text(), block)
    assert full.count(BEGIN) == 1 and full.count(END) == 1
    cedarpy.Schema.from_str(full)  # still a valid schema


def test_apply_block_appends_when_markers_are_missing() -> None:
    assert apply_block("entity A;", "X").endswith("\n\nX\n")


PAY = {"name": "pay", "inputSchema": {"type": "object", "required": ["account", "amount"], "properties": {
    "account": {"type": "string"}, "amount": {"type": "number"}, "memo": {"type": "string"},
    "to": {"type": "object", "required": ["iban"], "properties": {"iban": {"type": "string"},
                                                                  "bic": {"type": "string"}}}}}}
BALANCE = {"name": "balance", "inputSchema": {"type": "object", "properties": {"account": {"type": "string"}}}}


def test_required_arguments_are_not_optional() -> None:
    block = schema_from_input_schemas({"payments": [PAY, BALANCE]})
    assert ('type payments_pay_args = { "account": String, "amount": Long, "memo"?: String, '
            '"to"?: { "bic"?: String, "iban": String } };') in block
    args = block.split("type Args")[1]
    assert '"amount": Long,' in args  # every tool that has it requires it
    assert '"account"?: String,' in args  # balance does not require it
    assert '"memo"?: String,' in args


def _policies_with(tmp_path: Path, policy: str) -> Path:
    target = tmp_path / "policies"
    target.mkdir(parents=True)
    for path in SHIPPED.glob("*.cedar"):
        shutil.copy(path, target / path.name)
    block = schema_from_input_schemas({"payments": [PAY, BALANCE]})
    (target / "schema.cedarschema").write_text(apply_block((SHIPPED / "schema.cedarschema").read_text(), block))
    (target / "amount.cedar").write_text(policy)
    return target


SMALL = ('@id("big-payments-forbidden")\nforbid (principal, action == Action::"call_tool", '
         'resource == Tool::"payments/pay")\nwhen { context.args.amount > 5000 };\n')


def test_a_required_argument_reads_without_a_guard_and_a_misspelled_one_fails(tmp_path: Path) -> None:
    load_policies(_policies_with(tmp_path / "ok", SMALL))  # no `has` guard needed: amount is required
    with pytest.raises(PolicyLoadError) as typo:
        load_policies(_policies_with(tmp_path / "typo", SMALL.replace("args.amount", "args.amout")))
    assert "big-payments-forbidden" in str(typo.value.problems) and "amout" in str(typo.value.problems)


def test_a_call_without_a_required_argument_is_denied_with_the_error_named(tmp_path: Path) -> None:
    loaded = load_policies(_policies_with(tmp_path, SMALL))
    reader = agent("spiffe://customs.demo/agent/reader")
    pay, balance = TOOLS["payments/pay"], ToolInfo("payments", "balance", read_only=True, destructive=False)
    # The upstream requires amount; a call that omits it cannot be decided by a policy that reads it: deny.
    missing = decide(loaded, reader, "call_tool", pay, CallFacts(args={"account": "a"}, environment="dev",
                                                                 task={"totals": {"amount": 1}}))
    assert missing.outcome == "deny" and missing.errors
    assert "big-payments-forbidden" in missing.errors[0] and "amount" in missing.errors[0]
    big = decide(loaded, reader, "call_tool", pay, CallFacts(args={"account": "a", "amount": 9000}, environment="dev",
                                                             task={"totals": {"amount": 9000}}))
    assert big.outcome == "deny" and big.policy_ids == ("big-payments-forbidden",) and not big.errors
    small = decide(loaded, reader, "call_tool", pay, CallFacts(args={"account": "a", "amount": 50}, environment="dev",
                                                               task={"totals": {"amount": 50}}))
    assert small.outcome == "allow"
    # Other tools' calls never carry amount; a policy scoped to pay is not evaluated for them.
    assert decide(loaded, reader, "call_tool", balance, CallFacts(args={}, environment="dev")).outcome == "allow"
