"""Decisions over the shipped policies through the engine and the authorize stage."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from authz_helpers import TOOLS, agent, call

from gateway.authz.engine import PolicyEngine
from gateway.authz.evaluate import decide
from gateway.authz.record import from_authz_input
from gateway.authz.stage import AuthorizeStage
from gateway.config.model import PoliciesConfig
from gateway.context import Actor, ApprovalState, Decision
from gateway.errors import GatewayError
from gateway.identity.chain import claim_mapping, map_claims
from gateway.telemetry.decision_log import decision_record

READER = agent("spiffe://customs.demo/agent/reader")
CLEARED = agent("spiffe://customs.demo/agent/analyst", clearance="restricted")
LOW = Actor("spiffe://customs.demo/agent/intern", {"tenant": "acme", "trust": "low"})
HIGH = Actor("spiffe://customs.demo/agent/orchestrator", {"tenant": "acme", "trust": "high", "clearance": "restricted"})
UNTRUSTED = Actor("spiffe://customs.demo/agent/untrusted", {"tenant": "acme"})


@pytest.mark.parametrize(("principal", "tool", "args", "extra", "outcome", "ids"), [
    (READER, "inventory/get_stock", {"sku": "widget"}, {}, "allow", ("reads-allowed",)),
    (READER, "inventory/set_stock", {"sku": "widget", "quantity": 1}, {}, "approval_required",
     ("writes-need-approval",)),
    (READER, "payments/pay", {"account": "a", "amount": 50}, {}, "approval_required", ("writes-need-approval",)),
    (READER, "payments/pay", {"amount": 400}, {"task": {"totals": {"amount": 9000}}}, "allow",
     ("task-payments-under-limit",)),
    (READER, "payments/pay", {"amount": 400}, {"task": {"totals": {"amount": 10000.5}}}, "approval_required",
     ("writes-need-approval",)),
    (READER, "hr/salaries", {}, {}, "deny", ("restricted-needs-clearance",)),
    (CLEARED, "hr/salaries", {}, {}, "allow", ("reads-allowed",)),
    (READER, "mail/send", {"to": "x"}, {"args_contain_secret": True}, "deny", ("no-secrets-leaving-org",)),
    (READER, "mail/send", {"to": "x"}, {}, "approval_required", ("writes-need-approval",)),
    (agent("nobody", tenant=None), "inventory/get_stock", {}, {}, "deny", ()),
])
def test_decision_matrix(engine: PolicyEngine, principal, tool, args, extra, outcome, ids) -> None:  # type: ignore[no-untyped-def]
    decision = engine.decide(principal, "call_tool", TOOLS[tool], call(principal, tool, args, **extra))
    assert (decision.outcome, decision.policy_ids) == (outcome, ids)
    assert decision.errors == () and decision.policy_version == engine.version and decision.eval_us > 0


@pytest.mark.parametrize(("principal", "chain", "tool", "outcome", "ids"), [
    (READER, (HIGH,), "inventory/get_stock", "allow", ("reads-allowed",)),
    (CLEARED, (Actor(READER.id, dict(READER.attributes)),), "hr/salaries", "deny", ("restricted-needs-clearance",)),
    (CLEARED, (HIGH,), "hr/salaries", "allow", ("reads-allowed",)),
    (READER, (HIGH, LOW), "inventory/set_stock", "deny", ("low-trust-read-only",)),
    (agent(LOW.id, trust="low"), (HIGH,), "inventory/set_stock", "deny", ("low-trust-read-only",)),
    (READER, (HIGH, UNTRUSTED), "inventory/get_stock", "deny", ("untrusted-agents",)),
    (agent(UNTRUSTED.id), (), "inventory/get_stock", "deny", ("untrusted-agents",)),
    (READER, (Actor("ghost"),), "inventory/get_stock", "deny", ()),
    (READER, (Actor("x", {"tenant": "globex"}),), "inventory/get_stock", "deny", ()),
    (READER, (HIGH, HIGH, Actor("a", {"tenant": "acme"})), "inventory/get_stock", "allow", ("reads-allowed",)),
    (READER, tuple(Actor(f"a{i}", {"tenant": "acme"}) for i in range(4)), "inventory/get_stock", "deny",
     ("delegation-depth-limit",)),
])
def test_every_chain_member_must_be_permitted(engine: PolicyEngine, principal, chain, tool, outcome,  # type: ignore[no-untyped-def]
                                              ids) -> None:
    from dataclasses import replace
    principal = replace(principal, chain=chain)
    decision = engine.decide(principal, "call_tool", TOOLS[tool], call(principal, tool))
    assert (decision.outcome, decision.policy_ids) == (outcome, ids)


def test_an_approved_call_is_rechecked_with_approval_granted(engine: PolicyEngine) -> None:
    ctx = call(READER, "inventory/set_stock", {"sku": "w", "quantity": 1})
    ctx.approval = ApprovalState(id="a1", outcome="approved")
    assert engine.decide(READER, "call_tool", TOOLS["inventory/set_stock"], ctx).outcome == "allow"
    ctx = call(READER, "hr/salaries")
    ctx.approval = ApprovalState(id="a2", outcome="approved")
    assert engine.decide(READER, "call_tool", TOOLS["hr/salaries"], ctx).outcome == "deny"


async def test_a_released_call_is_rechecked_at_the_time_it_runs(engine_factory: Callable[..., PolicyEngine],
                                                                policy_dir: Path) -> None:
    """A held call released after a wait was re-checked with context.time of its request, so a forbid on the
    time (changes only on the day they were asked for, business hours) let it run whenever it was approved,
    while a client retrying after approval_pending was decided at the time of its retry. The re-check sees
    the time of release, and the decision record replays it as made."""
    held_at = time.time() - 2 * 86400  # two days ago: another weekday than now
    weekday = dt.datetime.fromtimestamp(held_at, dt.UTC).isoweekday()
    (policy_dir / "window.cedar").write_text(
        '@id("changes-on-the-day-asked")\nforbid (principal, action == Action::"call_tool", resource)\n'
        f'when {{ context.time.weekday != {weekday} }};\n')
    engine = engine_factory(policy_dir)
    stage = AuthorizeStage(engine, "dev")
    ctx = call(READER, "inventory/set_stock", {"sku": "w", "quantity": 1})
    ctx.started_wall = held_at
    await stage(ctx)
    assert ctx.decision is not None and ctx.decision.outcome == "approval_required"
    ctx.approval = ApprovalState(id="a1", outcome="approved")
    with pytest.raises(GatewayError):
        await stage(ctx)
    assert ctx.decision.outcome == "deny" and ctx.decision.policy_ids == ("changes-on-the-day-asked",)
    record = decision_record(ctx)["authz_input"]
    principal, action, tool, facts, approved = from_authz_input(json.loads(json.dumps(record)))
    assert approved and facts.when().isoweekday() != weekday
    replayed = decide(engine.policies, principal, action, tool, facts, granted=approved)  # type: ignore[arg-type]
    assert replayed.outcome == "deny"


def test_a_forbid_sees_every_group_and_listed_role_of_the_token(engine_factory: Callable[..., PolicyEngine],
                                                                 policy_dir: Path) -> None:
    """Claim lists were cut silently: groups after the 256th at identify, any other list attribute after the
    64th when the entity was built, so a forbid on membership (`principal.groups.contains("contractors")`) let
    through a member listed late, as directory groups often are. The token's 16 KiB bound already bounds them."""
    schema = policy_dir / "schema.cedarschema"
    schema.write_text(schema.read_text().replace("  groups?: Set<String>,\n};", "  groups?: Set<String>,\n"
                                                 "  roles?: Set<String>,\n};", 1))
    (policy_dir / "members.cedar").write_text(
        '@id("no-contractors")\nforbid (principal, action, resource)\n'
        'when { (principal has groups && principal.groups.contains("contractors")) ||\n'
        '       (principal has roles && principal.roles.contains("contractor")) };\n')
    engine = engine_factory(policy_dir)
    mapping = claim_mapping({"roles": "roles"})
    claims = {"tenant": "acme", "groups": [f"g{i}" for i in range(300)] + ["contractors"],
              "roles": [f"r{i}" for i in range(100)] + ["contractor"]}
    for kept in ("groups", "roles"):
        attributes = map_claims({**claims, ("roles" if kept == "groups" else "groups"): []}, mapping)
        member = agent("spiffe://customs.demo/agent/temp", **attributes)
        decision = engine.decide(member, "call_tool", TOOLS["inventory/get_stock"],
                                 call(member, "inventory/get_stock"))
        assert (decision.outcome, decision.policy_ids) == ("deny", ("no-contractors",)), kept


def test_an_evaluation_error_is_a_deny_naming_the_policy(engine_factory: Callable[..., PolicyEngine],
                                                         policy_dir: Path) -> None:
    # A forbid comparing a Long: a fractional amount (a decimal) makes it error, and an erroring forbid must deny.
    (policy_dir / "limits.cedar").write_text(
        '@id("single-payment-limit")\nforbid (principal, action == Action::"call_tool", resource)\n'
        'when { context.args has amount && context.args.amount > 1000 };\n')
    engine = engine_factory(policy_dir)
    decision = engine.decide(READER, "call_tool", TOOLS["mail/send"], call(READER, "mail/send", {"amount": 12.5}))
    assert decision.outcome == "deny"
    assert any("single-payment-limit" in e and "decimal" in e for e in decision.errors), decision.errors
    ok = engine.decide(READER, "call_tool", TOOLS["mail/send"], call(READER, "mail/send", {"amount": 12}))
    assert ok.outcome == "approval_required" and ok.errors == ()


def test_visible_shows_approval_required_tools_and_hides_denied(engine: PolicyEngine) -> None:
    assert engine.visible(READER, "call_tool", TOOLS["inventory/get_stock"]).outcome == "allow"
    assert engine.visible(READER, "call_tool", TOOLS["payments/pay"]).outcome == "approval_required"
    assert engine.visible(READER, "call_tool", TOOLS["hr/salaries"]).outcome == "deny"
    assert engine.visible(CLEARED, "call_tool", TOOLS["hr/salaries"]).outcome == "allow"


def test_decide_approve(engine: PolicyEngine) -> None:
    pending = {"id": "ap1", "upstream": "payments", "tool": "pay", "args": {"amount": 50.5, "x": None},
               "requester": READER.id, "chain": []}
    assert engine.decide_approve("alice", ["approvers"], pending).outcome == "deny"
    approved = engine.decide_approve("bob", ["approvers", "finance"], pending)
    assert (approved.outcome, approved.policy_ids) == ("allow", ("approvers-decide",))
    inventory = {**pending, "upstream": "inventory", "tool": "set_stock"}
    assert engine.decide_approve("alice", ["approvers"], inventory).outcome == "allow"
    assert engine.decide_approve("eve", [], inventory).outcome == "deny"


async def test_stage_denied_looks_like_unknown_tool(engine: PolicyEngine) -> None:
    stage = AuthorizeStage(engine)
    ctx = call(READER, "hr/salaries")
    with pytest.raises(GatewayError) as denied:
        await stage(ctx)
    unknown_ctx = call(READER, "hr/salaries")
    unknown_ctx.tool = None
    with pytest.raises(GatewayError) as unknown:
        await stage(unknown_ctx)
    seen = [(e.value.reason, e.value.message, e.value.data) for e in (denied, unknown)]
    assert seen == [("unknown_tool", "Unknown tool: salaries", {})] * 2
    assert ctx.decision is not None and ctx.decision.outcome == "deny"


async def test_stage_passes_allow_and_approval_required(engine: PolicyEngine) -> None:
    stage = AuthorizeStage(engine)
    ctx = call(READER, "payments/pay", {"amount": 5})
    await stage(ctx)
    assert ctx.decision is not None and ctx.decision.outcome == "approval_required"
    ctx = call(READER, "inventory/get_stock", {"sku": "w"})
    await stage(ctx)
    assert ctx.decision == Decision("allow", ("reads-allowed",), (), ctx.decision.eval_us, engine.version)


async def test_stage_without_a_loaded_set_is_policy_unavailable(tmp_path: Path) -> None:
    engine = PolicyEngine(PoliciesConfig(dir=tmp_path), "dev")
    with pytest.raises(GatewayError) as exc:
        await AuthorizeStage(engine)(call(READER, "inventory/get_stock"))
    assert exc.value.reason == "policy_unavailable"
    assert engine.visible(READER, "call_tool", TOOLS["inventory/get_stock"]).outcome == "deny"
    with pytest.raises(GatewayError):
        engine.decide_approve("a", ["approvers"], {"id": "x"})
