"""Only the context attributes the policies name are sent to Cedar; decisions are the same as with all of them."""

from __future__ import annotations

import json
from pathlib import Path

import cedarpy
import pytest
from authz_helpers import SHIPPED, agent, call

from gateway.authz import entities as E
from gateway.authz.evaluate import EntityCache, decide
from gateway.authz.policyset import context_keys, load_policies


def keys_of(text: str) -> frozenset[str] | None:
    return context_keys(json.loads(cedarpy.policies_to_json_str(text)))


@pytest.mark.parametrize(("text", "expected"), [
    ('permit(principal, action, resource);', frozenset()),
    ('permit(principal, action, resource) when { context.tenant == "acme" };', frozenset({"tenant"})),
    ('permit(principal, action, resource) when { context has task && context.task.calls < 3 };',
     frozenset({"task"})),
    ('permit(principal, action, resource) when { context["args"].amount > 3 };', frozenset({"args"})),
    ('permit(principal, action, resource) when { context has args.amount };', frozenset({"args"})),
    # `context` as a whole value: every attribute can matter.
    ('permit(principal, action, resource) when { context == {} };', None),
    ('permit(principal, action, resource) when { {c: context}.c.tenant == "x" };', None),
])
def test_context_keys_found_in_policies(text: str, expected: frozenset[str] | None) -> None:
    assert keys_of(text) == expected


def test_shipped_policies_name_their_context_attributes() -> None:
    keys = load_policies(SHIPPED).context_keys
    assert keys is not None
    assert {"approval", "task", "tenant", "chain", "chain_depth", "environment"} <= keys
    assert "time" not in keys and "args" not in keys  # no shipped policy reads them


def test_context_is_limited_to_the_named_keys() -> None:
    principal = agent("a")
    facts = E.CallFacts(args={"amount": 5}, environment="dev")
    full = E.context(principal, facts, "none")
    assert set(full) >= {"args", "time", "approval", "tenant"}
    assert E.context(principal, facts, "none", keys=frozenset({"tenant"})) == {"tenant": "acme"}
    assert E.context(principal, facts, "none", keys=frozenset()) == {}


def write_policies(tmp_path: Path, text: str) -> Path:
    (tmp_path / "schema.cedarschema").write_text((SHIPPED / "schema.cedarschema").read_text())
    (tmp_path / "p.cedar").write_text(text)
    return tmp_path


def test_approval_cannot_lift_a_forbid_that_never_reads_it(tmp_path: Path) -> None:
    policies = load_policies(write_policies(tmp_path, """
        @id("all") permit(principal, action, resource);
        @id("no-pay") forbid(principal, action == Action::"call_tool", resource) when { resource.name == "pay" };
    """))
    assert policies.context_keys == frozenset()
    ctx = call(agent("a"), "payments/pay", {"amount": 1})
    decision = decide(policies, ctx.principal, "call_tool", ctx.tool, E.facts_from_ctx(ctx, "dev"),  # type: ignore[arg-type]
                      cache=EntityCache())
    assert decision.outcome == "deny" and decision.policy_ids == ("no-pay",)


def test_pruned_and_full_context_decide_alike(tmp_path: Path) -> None:
    """Arguments decide when a policy reads them, through the pruned path and with the cache."""
    policies = load_policies(write_policies(tmp_path, """
        @id("small") permit(principal, action == Action::"call_tool", resource)
          when { context.args has amount && context.args.amount < 10 };
        @id("lift") forbid(principal, action == Action::"call_tool", resource)
          when { context.approval != "granted" && context.tenant == "x" };
    """))
    assert policies.context_keys == frozenset({"args", "approval", "tenant"})
    cache = EntityCache()
    principal = agent("a")
    for amount, outcome in ((5, "allow"), (50, "deny"), (5, "allow"), (50, "deny")):
        ctx = call(principal, "payments/pay", {"amount": amount})
        assert decide(policies, principal, "call_tool", ctx.tool, E.facts_from_ctx(ctx, "dev"),  # type: ignore[arg-type]
                      cache=cache).outcome == outcome
    held = agent("b", tenant="x")
    ctx = call(held, "payments/pay", {"amount": 5})
    assert decide(policies, held, "call_tool", ctx.tool, E.facts_from_ctx(ctx, "dev"),  # type: ignore[arg-type]
                  cache=cache).outcome == "approval_required"


def test_entity_cache_follows_object_identity() -> None:
    cache = EntityCache()
    one, other = agent("a"), agent("a", tenant="other")
    tool = call(one, "payments/pay").tool
    assert tool is not None
    first = cache.for_call(one, tool)
    assert cache.for_call(one, tool) is not None and cache.for_call(one, tool)[0] == first[0]
    # Equal id, other attributes, other object: its own entities, never the first one's.
    assert '"other"' in cache.for_call(other, tool)[0] and '"other"' not in first[0]


def test_member_ids_match_members() -> None:
    from gateway.context import Actor
    for chain in ((), (Actor("b"),), (Actor("b"), Actor("a"), Actor("c"), Actor("b"))):
        principal = agent("a", chain=chain)
        assert E.member_ids(principal) == [m.id for m in E.members(principal)]
