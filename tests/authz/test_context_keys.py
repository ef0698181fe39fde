"""Only the context attributes the policies name are sent to Cedar; decisions are the same as with all of them."""

from __future__ import annotations

import json
from pathlib import Path

import cedarpy
import pytest
from authz_helpers import SHIPPED, TOOLS, agent, call
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.authz import entities as E
from gateway.authz.evaluate import EntityCache, _evaluate, _json, decide
from gateway.authz.policyset import context_tree, load_policies, prune
from gateway.context import Actor


def keys_of(text: str) -> frozenset[str] | None:
    tree = context_tree(json.loads(cedarpy.policies_to_json_str(text)))
    return None if tree is None else frozenset(tree)


def tree_of(text: str) -> object:
    return context_tree(json.loads(cedarpy.policies_to_json_str(text)))


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


@pytest.mark.parametrize(("text", "expected"), [
    ('permit(principal, action, resource) when { context.task.totals.amount < 5 };',
     {"task": {"totals": {"amount": None}}}),
    ('permit(principal, action, resource) when { context has task && context.task.calls < 5 };',
     {"task": {"calls": None}}),
    ('permit(principal, action, resource) when { context has task };', {"task": {}}),
    ('permit(principal, action, resource) when { context.task has totals };', {"task": {"totals": {}}}),
    ('permit(principal, action, resource) when { context.task.totals == {} || context.task.totals.a == 1 };',
     {"task": {"totals": None}}),  # compared whole: all of it, whatever else reads a part
    ('permit(principal, action, resource) when { context.chain.containsAny(["x"]) };', {"chain": None}),
    ('permit(principal, action, resource) when { {".": 1, "has": 2}["."] == 1 && context.a.b == 2 };',
     {"a": {"b": None}}),  # record literals with operator-like field names are data
])
def test_context_reads_as_a_tree(text: str, expected: object) -> None:
    assert tree_of(text) == expected


def test_prune_keeps_only_what_is_read() -> None:
    context = {"task": {"calls": 7, "totals": {"amount": 5, "other": 1}, "seen_tools": ["a"]}, "tenant": "x",
               "args": {"a": 1}}
    assert prune(context, {"task": {"totals": {"amount": None}}, "tenant": None}) == \
        {"task": {"totals": {"amount": 5}}, "tenant": "x"}
    assert prune(context, {"task": {}}) == {"task": {}}  # read for presence only
    assert prune({"task": 3}, {"task": {"totals": None}}) == {"task": 3}  # not a record: as it is
    assert prune({}, {"task": None}) == {}


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
    for chain in ((), (Actor("b"),), (Actor("b"), Actor("a"), Actor("c"), Actor("b"))):
        principal = agent("a", chain=chain)
        assert E.member_ids(principal) == [m.id for m in E.members(principal)]


# ---- pruned and full contexts decide alike (property test over the shipped policies and a nested set) ----

NESTED = """
@id("small-task") permit(principal, action == Action::"call_tool", resource)
  when { context has task && context.task has totals && context.task.totals has amount
         && context.task.totals.amount < 100 };
@id("calls-cap") forbid(principal, action == Action::"call_tool", resource)
  when { context has task && context.task has calls && context.task.calls > 3 && context.approval != "granted" };
@id("seen") permit(principal, action == Action::"call_tool", resource)
  when { context has task && context.task has seen_tools
         && context.task.seen_tools.contains("inventory/get_stock") };
"""

task_facts = st.one_of(st.none(), st.fixed_dictionaries({}, optional={
    "calls": st.integers(0, 6),
    "totals": st.dictionaries(st.sampled_from(["amount", "other"]), st.integers(0, 200), max_size=2),
    "seen_tools": st.lists(st.sampled_from(["inventory/get_stock", "payments/pay"]), max_size=2)}))
calls = st.fixed_dictionaries({
    "tool": st.sampled_from(sorted(TOOLS)),
    "tenant": st.sampled_from(["acme", "other", ""]),
    "extra": st.dictionaries(st.sampled_from(["trust", "clearance"]), st.sampled_from(["low", "high", "restricted"]),
                             max_size=2),
    "chain": st.lists(st.sampled_from(["spiffe://customs.demo/agent/untrusted", "agent-x", "agent-y"]), max_size=4),
    "args": st.dictionaries(st.sampled_from(["sku", "amount", "to"]), st.one_of(st.integers(-5, 20_000),
                            st.text(max_size=5)), max_size=3),
    "task": task_facts,
    "environment": st.sampled_from(["dev", "production"]),
    "granted": st.booleans(),
})


def equivalent(policies_dir: Path, call_facts: dict[str, object]) -> None:
    policies = load_policies(policies_dir)
    chain = tuple(Actor(c, {"tenant": "acme"}) for c in call_facts["chain"])  # type: ignore[attr-defined]
    principal = agent("spiffe://customs.demo/agent/reader", chain=chain, tenant=call_facts["tenant"],
                      **call_facts["extra"])  # type: ignore[arg-type]
    tool = TOOLS[str(call_facts["tool"])]
    facts = E.CallFacts(args=call_facts["args"], environment=str(call_facts["environment"]),
                        task=call_facts["task"])
    granted = bool(call_facts["granted"])
    pruned = decide(policies, principal, "call_tool", tool, facts, granted=granted, cache=EntityCache())
    full_context = E.context(principal, facts, "granted" if granted else "none")
    ents = cedarpy.Entities.from_json_str(_json(E.entities(principal, tool)))
    full = _evaluate(policies, ents, E.member_ids(principal), "call_tool", tool, full_context, _json(full_context),
                     granted, 0.0)
    # The same decision for the same reasons (Cedar reports its reasons as a set: order is not meaning).
    assert (pruned.outcome, sorted(pruned.policy_ids), bool(pruned.errors)) == \
        (full.outcome, sorted(full.policy_ids), bool(full.errors))


@settings(max_examples=150, deadline=None)
@given(calls)
def test_pruned_context_decides_like_the_full_one_shipped(call_facts: dict[str, object]) -> None:
    equivalent(SHIPPED, call_facts)


@settings(max_examples=150, deadline=None)
@given(calls)
def test_pruned_context_decides_like_the_full_one_nested(tmp_path_factory: pytest.TempPathFactory,
                                                         call_facts: dict[str, object]) -> None:
    directory = tmp_path_factory.mktemp("nested")
    (directory / "schema.cedarschema").write_text((SHIPPED / "schema.cedarschema").read_text())
    (directory / "p.cedar").write_text(NESTED)
    equivalent(directory, call_facts)
