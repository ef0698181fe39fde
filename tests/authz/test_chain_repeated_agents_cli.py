"""`policy test`, `explain` and `replay` agree with the gateway on a token naming one agent twice.

The gateway refuses a token whose principal and `act` chain name one agent id with different attributes
(Cedar holds one Agent per id, so one set would stand for both: tests/e2e/test_chain_repeated_agents.py).
The offline commands used to decide such a principal with the first set; now a case or explain input is
unusable (exit 2, naming the agent), a logged record of one is skipped with a warning, and the engine
itself denies one handed to it. The same agent twice with the same attributes is decided as before.
"""

from __future__ import annotations

import json
from pathlib import Path

from authz_helpers import SHIPPED, TOOLS, agent, call

from gateway.authz import evaluate
from gateway.authz.engine import PolicyEngine
from gateway.authz.entities import CallFacts
from gateway.authz.record import authz_input
from gateway.context import Actor
from tests.support.cli import customs_main

PLANNER = "spiffe://acme.test/agent/planner"
ORCH = "spiffe://acme.test/agent/orch"
CONFLICT = (f"delegation chain names agent {PLANNER!r} twice with different attributes "
            "(actor 1 and actor 3 differ in tenant); Cedar holds one Agent per id")


def test_a_policy_case_naming_one_agent_with_two_tenants_is_unusable(tmp_path: Path) -> None:
    as_claims = tmp_path / "claims.yaml"
    as_claims.write_text(
        "cases:\n"
        "  - name: planner twice\n"
        "    principal: {sub: shopper, tenant: acme, act: {sub: '" + PLANNER + "', tenant: acme,\n"
        "                act: {sub: '" + ORCH + "', tenant: acme, act: {sub: '" + PLANNER + "', tenant: globex}}}}\n"
        "    tool: inventory/get_stock\n    labels: {read_only: true}\n    expect: allow\n")
    result = customs_main("policy", "test", as_claims, "--policies", SHIPPED)
    assert result.returncode == 2, result.stdout
    assert f"error: {as_claims}:2: cases[0]: {CONFLICT}" in result.stderr
    inline = tmp_path / "inline.yaml"
    inline.write_text(
        "principals:\n"
        "  planner: {id: '" + PLANNER + "', attributes: {tenant: acme}}\n"
        "cases:\n"
        "  - name: planner as globex\n"
        "    principal: {id: shopper, attributes: {tenant: acme}}\n"
        "    chain: [planner, {id: '" + ORCH + "', attributes: {tenant: acme}},\n"
        "            {id: '" + PLANNER + "', attributes: {tenant: globex}}]\n"
        "    tool: inventory/get_stock\n    labels: {read_only: true}\n    expect: allow\n")
    result = customs_main("policy", "test", inline, "--policies", SHIPPED)
    assert result.returncode == 2, result.stdout
    assert f"error: {inline}:4: cases[0]: {CONFLICT}" in result.stderr


def test_a_policy_case_naming_one_agent_twice_alike_is_decided_as_before(tmp_path: Path) -> None:
    cases = tmp_path / "round_trip.yaml"
    cases.write_text(
        "principals:\n"
        "  planner: {id: '" + PLANNER + "', attributes: {tenant: acme}}\n"
        "cases:\n"
        "  - name: A to B to A\n"
        "    principal: {id: shopper, attributes: {tenant: acme, groups: [a, b]}}\n"
        "    chain: [planner, {id: shopper, attributes: {tenant: acme, groups: [b, a, b]}}, planner]\n"
        "    tool: inventory/get_stock\n    labels: {read_only: true}\n    expect: allow\n")
    result = customs_main("policy", "test", cases, "--policies", SHIPPED)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"PASS {cases}: A to B to A" in result.stdout


def test_explain_refuses_claims_naming_one_agent_with_two_tenants() -> None:
    act = {"sub": PLANNER, "tenant": "acme",
           "act": {"sub": ORCH, "tenant": "acme", "act": {"sub": PLANNER, "tenant": "globex"}}}
    args = ("policy", "explain", "--policies", SHIPPED, "--tool", "inventory/get_stock",
            "--annotations", '{"read_only": true}')
    refused = customs_main(*args, "--principal-claims", json.dumps({"sub": "shopper", "tenant": "acme", "act": act}))
    assert refused.returncode == 2 and refused.stdout == ""
    assert f"--principal-claims: {CONFLICT}" in refused.stderr
    act["act"]["act"]["tenant"] = "acme"  # type: ignore[index]
    same = customs_main(*args, "--principal-claims", json.dumps({"sub": "shopper", "tenant": "acme", "act": act}))
    assert same.returncode == 0, same.stderr
    report = json.loads(same.stdout)
    assert report["outcome"] == "allow" and report["evaluated_as"] == ["shopper", PLANNER, ORCH]


def test_replay_skips_a_record_naming_one_agent_with_two_tenants_and_says_so(tmp_path: Path) -> None:
    lines = []
    for tenant in ("acme", "globex"):
        who = agent("shopper", chain=(Actor(PLANNER, {"tenant": "acme"}), Actor(ORCH, {"tenant": "acme"}),
                                      Actor(PLANNER, {"tenant": tenant})))
        snapshot = authz_input(who, "call_tool", TOOLS["inventory/get_stock"], call(who, "inventory/get_stock"), "dev")
        lines.append(json.dumps({"decision": "allow", "policy_ids": ["reads-allowed"], "issuer": "https://idp.test",
                                 "authz_input": snapshot}))
    log = tmp_path / "decisions.jsonl"
    log.write_text("\n".join(lines) + "\n")
    result = customs_main("policy", "replay", "--log", log, "--policies", SHIPPED)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 replayed, 0 changed, 1 skipped" in result.stdout
    assert (f"warning: line 2: skipped: {CONFLICT} (the gateway refuses such a token at identify, "
            "before any policy)") in result.stderr


def test_the_engine_denies_a_principal_naming_one_agent_with_two_tenants(engine: PolicyEngine) -> None:
    policies = engine.policies
    assert policies is not None
    who = agent("shopper", chain=(Actor(PLANNER, {"tenant": "acme"}), Actor(PLANNER, {"tenant": "globex"})))
    decision = evaluate.decide(policies, who, "call_tool", TOOLS["inventory/get_stock"], CallFacts())
    assert decision.outcome == "deny"
    assert decision.errors == (f"entities: delegation chain names agent {PLANNER!r} twice with different "
                               "attributes (actor 1 and actor 2 differ in tenant); Cedar holds one Agent per id",)
    alike = agent("shopper", chain=(Actor(PLANNER, {"tenant": "acme"}), Actor(PLANNER, {"tenant": "acme"})))
    assert evaluate.decide(policies, alike, "call_tool", TOOLS["inventory/get_stock"],
                           CallFacts()).outcome == "allow"
