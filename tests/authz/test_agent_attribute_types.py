"""Principal and actor attributes of another type than the schema declares: converted where lossless, else a deny.

A token's `level: 1` (a Long) where the schema declares `level?: String` made `principal.level == "1"` merely
false, so a forbid written for the String never fired; so did a registry's `clearance: "3"` (config values are
Strings) where the schema declares a Long. Tokens come from the principal's claims, its `act` chain's claims and
the `agents:` registry through the real identity mapping (gateway/identity/chain.py).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from authz_helpers import TOOLS, agent, call

from gateway.authz.engine import PolicyEngine
from gateway.config.model import AgentRecord
from gateway.context import Principal
from gateway.identity.chain import build_chain, claim_mapping, map_claims

MAPPING = claim_mapping({"level": "level", "trust": "trust"})
ACTOR = "spiffe://customs.demo/agent/planner"


def _engine(engine_factory: Callable[..., PolicyEngine], policy_dir: Path, declared: str, forbid: str) -> PolicyEngine:
    schema = policy_dir / "schema.cedarschema"
    text = schema.read_text()
    for name, typ in (line.split(":") for line in declared.split(",")):
        text = text.replace(f"  {name}?: String,\n", "", 1)
        text = text.replace("  groups?: Set<String>,\n", f"  groups?: Set<String>,\n  {name}?: {typ},\n", 1)
    schema.write_text(text)
    if "clearance" in declared or "trust" in declared:  # the shipped guards compare them with Strings
        (policy_dir / "guards.cedar").unlink()
    (policy_dir / "typed.cedar").write_text(f'@id("typed-forbid")\nforbid (principal, action, resource)\n'
                                            f'when {{ {forbid} }};\n')
    return engine_factory(policy_dir)


def _decide(engine: PolicyEngine, member: Principal) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    decision = engine.decide(member, "call_tool", TOOLS["inventory/get_stock"], call(member, "inventory/get_stock"))
    return decision.outcome, decision.policy_ids, decision.errors


def _from_claims(claims: dict[str, object], act: object = None,
                 agents: dict[str, AgentRecord] | None = None) -> Principal:
    chain = build_chain(act, MAPPING, agents or {})
    return agent("spiffe://customs.demo/agent/shopper", chain, **map_claims({"tenant": "acme", **claims}, MAPPING))


def test_a_number_or_boolean_claim_meets_a_forbid_written_for_the_declared_string(
        engine_factory: Callable[..., PolicyEngine], policy_dir: Path) -> None:
    engine = _engine(engine_factory, policy_dir, "level:String",
                     '(principal has level && principal.level == "1") || '
                     '(principal has trust && principal.trust == "true")')
    assert _decide(engine, _from_claims({}))[0] == "allow"
    assert _decide(engine, _from_claims({"level": 2}))[0] == "allow"
    for claims in ({"level": 1}, {"trust": True}):
        assert _decide(engine, _from_claims(claims))[:2] == ("deny", ("typed-forbid",)), claims
        actor = {"sub": ACTOR, "tenant": "acme", **claims}  # the same claim on a delegation actor
        assert _decide(engine, _from_claims({}, act=actor))[:2] == ("deny", ("typed-forbid",)), claims


def test_registry_strings_meet_a_forbid_written_for_a_declared_long_or_bool(
        engine_factory: Callable[..., PolicyEngine], policy_dir: Path) -> None:
    engine = _engine(engine_factory, policy_dir, "clearance:Long,trust:Bool",
                     "(principal has clearance && principal.clearance == 3) || "
                     "(principal has trust && principal.trust == false)")
    for record in ({"tenant": "acme", "clearance": "3"}, {"tenant": "acme", "trust": "false"}):
        agents = {ACTOR: AgentRecord.model_validate(record)}
        assert _decide(engine, _from_claims({}, act={"sub": ACTOR}, agents=agents))[:2] == \
            ("deny", ("typed-forbid",)), record
    # A token's own Long and Bool claims still meet such a schema (the identity mapping keeps them exact).
    assert _decide(engine, _from_claims({"clearance": 3}))[:2] == ("deny", ("typed-forbid",))
    assert _decide(engine, _from_claims({"trust": False}))[:2] == ("deny", ("typed-forbid",))
    assert _decide(engine, _from_claims({"clearance": 4, "trust": True}))[0] == "allow"


def test_a_value_that_cannot_take_the_declared_type_denies_naming_it(
        engine_factory: Callable[..., PolicyEngine], policy_dir: Path) -> None:
    engine = _engine(engine_factory, policy_dir, "clearance:Long",
                     "principal has clearance && principal.clearance == 3")
    for claims in ({"clearance": "high"}, {"clearance": "03"}, {"clearance": True}):
        outcome, _ids, errors = _decide(engine, _from_claims(claims))
        assert outcome == "deny", claims
        assert any("clearance" in e and "the schema declares Long" in e for e in errors), errors
    agents = {ACTOR: AgentRecord.model_validate({"tenant": "acme", "clearance": "top"})}
    outcome, _ids, errors = _decide(engine, _from_claims({}, act={"sub": ACTOR}, agents=agents))
    assert outcome == "deny" and any(ACTOR in e for e in errors), errors


def test_contract_attributes_from_numbers_and_booleans_are_their_text() -> None:
    """tenant and owner are also read outside Cedar (context.tenant, the Tenant parent, an approver who owns the
    agent): a Long tenant was no tenant there (`context.tenant == ""`), a Long owner no owner."""
    attributes = map_claims({"tenant": 7, "owner": 42, "trust": True, "clearance": 0}, MAPPING)
    assert attributes == {"tenant": "7", "owner": "42", "trust": "true", "clearance": "0"}
    assert agent("a", **attributes).tenant == "7"
