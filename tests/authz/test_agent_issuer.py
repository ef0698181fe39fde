"""`principal.issuer`: every Agent entity carries the issuer that vouched for it (the outer token's for its actors),
declared in the shipped schema, and set by every path that builds Agents: the gateway, `policy test`, `policy
explain` and `policy replay` (from a record's `issuer`; a record without one replays without the attribute)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from authz_helpers import SHIPPED, TOOLS, agent, call

from gateway.authz import entities as E
from gateway.authz.cases import CaseError, run_cases_file
from gateway.authz.cli import main as policy_main
from gateway.authz.evaluate import EntityCache, decide
from gateway.authz.policyset import load_policies
from gateway.authz.record import authz_input
from gateway.config.model import IdentityConfig
from gateway.context import Actor, Principal
from gateway.identity.identifier import AnonymousIdentifier
from tests.support.cli import customs_main

ONE, TWO = "https://idp-one.test", "https://idp-two.test"
ISSUER_POLICY = f'''@id("one-vouches")
permit (principal, action == Action::"call_tool", resource == Tool::"inventory/get_stock")
when {{ principal.issuer == "{ONE}" }};
'''


def run(*argv: str | Path) -> subprocess.CompletedProcess[str]:
    """The policy CLI's main() in this process (test_authz_cli.py runs each command as a real child process)."""
    return customs_main(*argv, main=policy_main)


@pytest.fixture
def issuer_policies(tmp_path: Path) -> Path:
    target = tmp_path / "issuer-policies"
    target.mkdir()
    (target / "schema.cedarschema").write_text((SHIPPED / "schema.cedarschema").read_text())
    (target / "one.cedar").write_text(ISSUER_POLICY)
    return target


def test_every_chain_member_carries_the_issuer_of_the_token() -> None:
    # An `issuer` attribute from a claim mapping (or anonymous_attributes) must not stand in for the verified one.
    chain = (Actor("planner", {"tenant": "acme", "issuer": TWO}), Actor("orchestrator", {}))
    principal = Principal(id="bot", issuer=ONE, subject="bot", attributes={"tenant": "acme", "issuer": TWO},
                          chain=chain)
    found = {e["uid"]["id"]: e["attrs"] for e in E.entities(principal, TOOLS["inventory/get_stock"])
             if e["uid"]["type"] == "Agent"}
    assert {ident: attrs.get("issuer") for ident, attrs in found.items()} == \
        {"bot": ONE, "planner": ONE, "orchestrator": ONE}
    unknown = Principal(id="bot", issuer="", subject="bot", attributes={"tenant": "acme"})
    (first, *_) = E.entities(unknown, TOOLS["inventory/get_stock"])
    assert "issuer" not in first["attrs"]  # a replayed record that names none: no attribute, never ""


def test_anonymous_principal_is_vouched_for_by_the_anonymous_issuer() -> None:
    principal = AnonymousIdentifier(IdentityConfig(anonymous_attributes={"tenant": "demo"}))._principal
    (first, *_) = E.entities(principal, TOOLS["inventory/get_stock"])
    assert first["attrs"]["issuer"] == "anonymous"


def test_shipped_schema_declares_issuer_and_the_shipped_policies_still_validate(issuer_policies: Path) -> None:
    assert len(load_policies(SHIPPED)) == 13
    loaded = load_policies(issuer_policies)  # an unguarded read: the attribute is required
    assert loaded.agent_types is not None and loaded.agent_types["issuer"] == ("String", None)


def test_two_issuers_of_one_subject_get_their_own_decisions_from_one_cache(issuer_policies: Path) -> None:
    loaded, cache = load_policies(issuer_policies), EntityCache()
    tool, facts = TOOLS["inventory/get_stock"], E.CallFacts(environment="dev")
    outcomes = [decide(loaded, Principal(id="bot", issuer=iss, subject="bot", attributes={"tenant": "acme"}),
                       "call_tool", tool, facts, cache=cache).outcome for iss in (ONE, TWO, ONE)]
    assert outcomes == ["allow", "deny", "allow"]


def test_policy_test_cases_state_the_issuer(issuer_policies: Path, tmp_path: Path) -> None:
    cases = tmp_path / "cases.yaml"
    cases.write_text(f"""
principals:
  bot: {{id: bot, issuer: "{ONE}", attributes: {{tenant: acme}}}}
  planner: {{id: planner, attributes: {{tenant: acme}}}}
cases:
  - {{name: inline, principal: bot, tool: inventory/get_stock, expect: allow}}
  - {{name: claims, principal: {{sub: bot, iss: "{ONE}"}}, tool: inventory/get_stock, expect: allow}}
  - {{name: other idp, principal: {{sub: bot, iss: "{TWO}"}}, tool: inventory/get_stock, expect: deny}}
  - {{name: actors take the principal's, principal: {{id: planner, issuer: "{TWO}", attributes: {{tenant: acme}}}},
      chain: [planner],
      tool: inventory/get_stock, expect: deny}}
  - {{name: the chain of a token, principal: {{sub: x, iss: "{ONE}", act: {{sub: y}}}},
      tool: inventory/get_stock, expect: allow}}
  - {{name: none stated, principal: planner, tool: inventory/get_stock, expect: deny, expect_errors: true}}
""")
    results = run_cases_file(cases, issuer_policies)
    assert [r.message for r in results if not r.ok] == []
    assert "issuer" in results[-1].decision.errors[0]
    cases.write_text(f"""
principals:
  bot: {{id: bot, issuer: "{ONE}"}}
cases:
  - {{principal: {{id: p, issuer: "{TWO}"}}, chain: [bot], tool: inventory/get_stock, expect: deny}}
""")
    with pytest.raises(CaseError, match="an actor's issuer is its principal's"):
        run_cases_file(cases, issuer_policies)
    cases.write_text("cases:\n  - {principal: {sub: bot, iss: 5}, tool: inventory/get_stock, expect: deny}\n")
    with pytest.raises(CaseError, match="iss must be a non-empty string"):
        run_cases_file(cases, issuer_policies)


def test_explain_takes_the_issuer_from_iss(issuer_policies: Path) -> None:
    def explain(claims: dict[str, object]) -> dict[str, object]:
        done = run("explain", "--policies", issuer_policies, "--principal-claims", json.dumps(claims),
                   "--tool", "inventory/get_stock")
        assert done.returncode == 0, done.stderr
        report: dict[str, object] = json.loads(done.stdout)
        return report

    vouched = explain({"sub": "bot", "iss": ONE, "tenant": "acme"})
    assert vouched["outcome"] == "allow" and vouched["issuer"] == ONE
    other = explain({"sub": "bot", "iss": TWO, "tenant": "acme"})
    assert other["outcome"] == "deny" and other["errors"] == []
    unstated = explain({"sub": "bot", "tenant": "acme"})
    assert unstated["outcome"] == "deny" and unstated["issuer"] is None and "issuer" in str(unstated["errors"])


def test_replay_decides_each_record_with_its_issuer(issuer_policies: Path, tmp_path: Path) -> None:
    bot = agent("bot")
    snapshot = authz_input(bot, "call_tool", TOOLS["inventory/get_stock"], call(bot, "inventory/get_stock"), "dev")
    lines = [{"issuer": ONE, "decision": "allow", "policy_ids": ["one-vouches"], "authz_input": snapshot},
             {"issuer": TWO, "decision": "deny", "policy_ids": [], "authz_input": snapshot}]
    log = tmp_path / "decisions.jsonl"
    log.write_text("".join(json.dumps(line) + "\n" for line in lines))
    same = run("replay", "--log", log, "--policies", issuer_policies)
    assert same.returncode == 0 and "2 replayed, 0 changed" in same.stdout, same.stdout + same.stderr
    # A record that names no issuer (hand-made; the gateway's records always name one) still replays: without
    # the attribute, so a policy reading it denies with an evaluation error, and the shipped ones are unaffected.
    log.write_text(json.dumps({"decision": "allow", "policy_ids": ["one-vouches"], "authz_input": snapshot}) + "\n")
    unnamed = run("replay", "--log", log, "--policies", issuer_policies)
    assert unnamed.returncode == 1 and "1 replayed, 1 changed" in unnamed.stdout, unnamed.stdout
    assert "line 1: bot call_tool inventory/get_stock: allow -> deny" in unnamed.stdout
    log.write_text(json.dumps({"decision": "allow", "policy_ids": ["reads-allowed"], "authz_input": snapshot}) + "\n")
    shipped = run("replay", "--log", log, "--policies", SHIPPED)
    assert shipped.returncode == 0 and "1 replayed, 0 changed" in shipped.stdout, shipped.stdout
    log.write_text("".join(json.dumps({**lines[0], "issuer": issuer}) + "\n" for issuer in (ONE, 5)))
    malformed = run("replay", "--log", log, "--policies", issuer_policies)
    assert malformed.returncode == 0 and "1 replayed, 0 changed, 1 skipped" in malformed.stdout, malformed.stdout


def test_no_claim_mapping_or_anonymous_attribute_may_be_named_issuer(issuer_policies: Path, tmp_path: Path) -> None:
    """It would be dropped for the verified issuer: a config (or case file) that maps it meant something else."""
    from gateway.config import ConfigError, parse_config

    def problems(identity: dict[str, object]) -> list[str]:
        with pytest.raises(ConfigError) as info:
            parse_config({"upstreams": [{"name": "a", "url": "http://h/mcp"}], "identity": identity})
        return list(info.value.problems)

    jwt = {"mode": "jwt", "issuers": [{"issuer": ONE, "jwks_file": "jwks.json", "claims": {"issuer": "idp"}}]}
    vouched = "`issuer` is the issuer that vouched for the agent, set by the gateway on every Agent"
    assert problems(jwt) == [f"identity.issuers[0].claims.issuer: {vouched} (principal.issuer: the token's iss); "
                             "map the claim to another attribute name"]
    assert problems({"mode": "anonymous", "anonymous_attributes": {"tenant": "t", "issuer": "me"}}) == [
        f'identity.anonymous_attributes.issuer: {vouched} (principal.issuer: "anonymous" here); '
        "use another attribute name"]
    cases = tmp_path / "cases.yaml"
    case = "cases:\n  - {principal: {sub: b}, tool: inventory/get_stock, expect: deny}\n"
    cases.write_text("claims: {issuer: idp}\n" + case)
    with pytest.raises(CaseError, match="claims: `issuer` is the issuer that vouched for the agent"):
        run_cases_file(cases, issuer_policies)
    cases.write_text(case.replace("{sub: b}", "{id: b, attributes: {issuer: x}}"))
    with pytest.raises(CaseError, match=r"attributes: `issuer` is .*; state it as `issuer:` beside `id:`"):
        run_cases_file(cases, issuer_policies)
