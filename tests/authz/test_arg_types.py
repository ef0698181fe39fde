"""A value whose run-time Cedar type is not the declared one denies, whichever operator reads it.

Decided by the real engine on a schema declaring `amounts: Set<Long>`, `amount: Long`, `account: String`
and `rec: {x?: Long}`. For each operator a forbid fires on a well-typed value, stays quiet on another
well-typed value, and must deny a mistyped one: Cedar errors for `<`, `like`, `has` on a non-record, but
`==`, `contains`, `containsAny`, `containsAll` and `[..].contains(x)` were merely false (a silent pass).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import cedarpy
import pytest
from authz_helpers import SHIPPED, TOOLS, agent, call

from gateway.authz.argtypes import context_types
from gateway.authz.engine import PolicyEngine

READER = agent("spiffe://customs.demo/agent/reader")
SCHEMA = (SHIPPED / "schema.cedarschema").read_text().replace(
    '"amount"?: Long,', '"amount"?: Long,\n  "amounts"?: Set<Long>,\n  "rec"?: { "x"?: Long },')


def engine_with(factory: Callable[..., PolicyEngine], tmp_path: Path, condition: str) -> PolicyEngine:
    directory = tmp_path / "policies"
    directory.mkdir()
    (directory / "schema.cedarschema").write_text(SCHEMA)
    (directory / "p.cedar").write_text(
        '@id("all")\npermit (principal, action, resource);\n'
        f'@id("f")\nforbid (principal, action == Action::"call_tool", resource) when {{ {condition} }};\n')
    return factory(directory)


def decide(engine: PolicyEngine, args: dict[str, Any]) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    decision = engine.decide(READER, "call_tool", TOOLS["payments/pay"], call(READER, "payments/pay", args))
    return decision.outcome, decision.policy_ids, decision.errors


@pytest.mark.parametrize(("condition", "fires", "quiet", "mistyped"), [
    ("context.args has amounts && context.args.amounts.contains(5)", {"amounts": [5]}, {"amounts": [1]},
     {"amounts": [5, 2.5]}),
    ("context.args has amounts && context.args.amounts.containsAny([5])", {"amounts": [5, 6]}, {"amounts": [6]},
     {"amounts": [5, "x"]}),
    ("context.args has amounts && context.args.amounts.containsAll([5])", {"amounts": [5]}, {"amounts": []},
     {"amounts": [5, True]}),
    ("context.args has amount && context.args.amount == 5", {"amount": 5.0}, {"amount": 6},
     {"amount": "5"}),
    ("context.args has amount && [5, 7].contains(context.args.amount)", {"amount": 7}, {"amount": 6},
     {"amount": 5.00001}),
    ("context.args has account && context.args.account == \"666\"", {"account": "666"}, {"account": "acme"},
     {"account": 666}),
    ("context.args has account && context.args.account like \"66*\"", {"account": "667"}, {"account": "1"},
     {"account": 667}),
    ("context.args has amount && context.args.amount > 5", {"amount": 6}, {"amount": 5},
     {"amount": 5.5}),
    ("context.args has rec && context.args.rec has x", {"rec": {"x": 1}}, {"rec": {}}, {"rec": "x"}),
    ("context.args has rec && context.args.rec has x && context.args.rec.x == 1", {"rec": {"x": 1}},
     {"rec": {"x": 2}}, {"rec": {"x": [1]}}),
])
def test_a_mistyped_value_denies_whatever_the_operator(engine_factory: Callable[..., PolicyEngine], tmp_path: Path,
                                                       condition: str, fires: dict[str, Any],
                                                       quiet: dict[str, Any], mistyped: dict[str, Any]) -> None:
    engine = engine_with(engine_factory, tmp_path, condition)
    assert decide(engine, fires) == ("deny", ("f",), ())
    assert decide(engine, quiet) == ("allow", ("all",), ())
    outcome, ids, errors = decide(engine, mistyped)
    assert outcome == "deny" and errors, (ids, errors)


def test_the_error_names_the_value_and_the_declared_type(engine_factory: Callable[..., PolicyEngine],
                                                        tmp_path: Path) -> None:
    engine = engine_with(engine_factory, tmp_path, "context.args has amounts && context.args.amounts.contains(5)")
    assert decide(engine, {"amounts": [5, 2.5]}) == ("deny", (), (
        "argument type mismatch: context.args.amounts is Set<String>, the schema declares Set<Long>",))


def test_only_what_policies_can_read_is_checked(engine_factory: Callable[..., PolicyEngine], tmp_path: Path) -> None:
    """Arguments the schema leaves out, and declared ones no policy reads, may hold anything."""
    engine = engine_with(engine_factory, tmp_path, "context.args has amounts && context.args.amounts.contains(5)")
    assert decide(engine, {"amounts": [1], "other": [1, "a"], "account": 7, "amount": 2.5}) == \
        ("allow", ("all",), ())


def test_declared_types_are_read_from_the_schema() -> None:
    schema = cedarpy.Schema.from_str("""
        @doc("a") entity Agent; entity Tool;
        type Money = { @doc("cents") cents?: Long, "in words"?: String };
        namespace Other { type Cash = { x?: Bool }; entity Thing; }
        action call_tool appliesTo { principal: [Agent], resource: [Tool],
          context: { args: { pay?: Money, tags?: Set<String>, who?: Agent, at?: __cedar::datetime,
                             d?: decimal, other?: Other::Cash, thing?: Other::Thing } } };
        action "approve";
    """)
    types = context_types(schema)
    assert types is not None and types["approve"] == ("record", {})
    assert types["call_tool"] == ("record", {"args": ("record", {
        "pay": ("record", {"cents": ("Long", None), "in words": ("String", None)}),
        "tags": ("set", ("String", None)), "who": ("entity", "Agent"), "at": ("other", "__cedar::datetime"),
        "d": ("decimal", None), "other": ("record", {"x": ("Bool", None)}), "thing": ("entity", "Other::Thing")})})
