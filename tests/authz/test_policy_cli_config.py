"""`customs policy explain|test --config`: the principal is built from the deployment's config as identify builds it.

Without --config the offline commands map claims by the default mapping, give a chain's actors no registry
attributes and decide any depth; the gateway maps by `identity.issuers[].claims`, attributes actors from the
`agents:` registry, refuses chains deeper than `policies.max_chain_depth` (401) and tokens naming another SPIFFE
trust domain than the issuer's. With --config the offline answer is the gateway's.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from authz_helpers import SHIPPED

from tests.support.cli import customs_main

ISS = "https://idp.acme.test"
SHOPPER = "spiffe://acme.test/agent/shopper"
PLANNER = "spiffe://acme.test/agent/planner"
STRANGER = "spiffe://acme.test/agent/stranger"
READ = ("--tool", "inventory/get_stock", "--annotations", '{"read_only": true}')
WRITE = ("--tool", "inventory/set_stock", "--annotations", '{"read_only": false}', "--context",
         '{"approval": "granted"}')


def _config(tmp_path: Path, **changes: Any) -> Path:
    """customs.yaml beside a copy of the shipped policies named by a relative `policies.dir`."""
    shutil.copytree(SHIPPED, tmp_path / "pol", ignore=shutil.ignore_patterns("tests"), dirs_exist_ok=True)
    (tmp_path / "jwks.json").write_text('{"keys": []}')
    data: dict[str, Any] = {
        "upstreams": [{"name": "inventory", "url": "http://127.0.0.1:9/mcp"}],
        "identity": {"mode": "jwt", "issuers": [{"issuer": ISS, "jwks_file": "jwks.json", "claims": {"tenant": "org"},
                                                 "spiffe_trust_domains": ["acme.test"]}]},
        "agents": {PLANNER: {"tenant": "acme", "trust": "low"}},
        "policies": {"dir": "pol", "max_chain_depth": 2},
        "environment": "production",
        **changes,
    }
    path = tmp_path / "customs.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _claims(**claims: Any) -> str:
    return json.dumps({"iss": ISS, "sub": SHOPPER, "org": "acme", **claims})


def explain(*argv: str | Path) -> tuple[int, dict[str, Any] | None, str]:
    result = customs_main("policy", "explain", *argv)
    report = json.loads(result.stdout) if result.stdout.strip() else None
    return result.returncode, report, result.stderr


def test_explain_maps_claims_by_the_issuers_mapping(tmp_path: Path) -> None:
    config = _config(tmp_path)
    code, report, _ = explain("--config", config, "--principal-claims", _claims(), *READ)
    assert code == 0 and report is not None
    assert report["outcome"] == "allow" and report["policies"] == ["reads-allowed"]
    assert report["context"]["tenant"] == "acme" and report["issuer"] == ISS
    # Without the config, `org` is no attribute: no tenant, so the tenant-scoped permit fails closed.
    code, report, _ = explain("--policies", SHIPPED, "--principal-claims", _claims(), *READ)
    assert code == 0 and report is not None and report["outcome"] == "deny"


def test_explain_attributes_actors_from_the_agents_registry(tmp_path: Path) -> None:
    config = _config(tmp_path)
    delegated = _claims(act={"sub": PLANNER})
    code, report, _ = explain("--config", config, "--principal-claims", delegated, *READ)
    assert code == 0 and report is not None and report["outcome"] == "allow"
    assert report["evaluated_as"] == [SHOPPER, PLANNER]
    # The registry's `trust: low` reaches the planner: its write is forbidden even when approved.
    code, report, _ = explain("--config", config, "--principal-claims", delegated, *WRITE)
    assert code == 0 and report is not None
    assert report["outcome"] == "deny" and report["policies"] == ["low-trust-read-only"]
    # An actor the registry does not know has no attributes: denied, as the gateway denies it.
    code, report, _ = explain("--config", config, "--principal-claims", _claims(act={"sub": STRANGER}), *READ)
    assert code == 0 and report is not None and report["outcome"] == "deny"


def test_policies_and_environment_default_to_the_configs(tmp_path: Path) -> None:
    config = _config(tmp_path)
    status = ("--tool", "infrastructure/status", "--annotations", '{"read_only": true}')
    code, report, _ = explain("--config", config, "--principal-claims", _claims(), *status)
    assert code == 0 and report is not None
    assert report["context"]["environment"] == "production"
    assert report["outcome"] == "approval_required"
    assert sorted(report["policies"]) == ["production-infrastructure-needs-approval", "reads-allowed"]
    # --environment given wins over the config's, and --policies over policies.dir.
    (tmp_path / "pol" / "tools.cedar").unlink()
    code, report, _ = explain("--config", config, "--policies", SHIPPED, "--environment", "dev",
                              "--principal-claims", _claims(), *status)
    assert code == 0 and report is not None and report["outcome"] == "allow"


def test_a_chain_deeper_than_max_chain_depth_is_refused_as_identify_refuses_it(tmp_path: Path) -> None:
    config = _config(tmp_path)
    deep = _claims(act={"sub": PLANNER, "act": {"sub": PLANNER + "2", "act": {"sub": PLANNER + "3"}}})
    code, report, err = explain("--config", config, "--principal-claims", deep, *READ)
    assert code == 1, err
    assert report == {"outcome": "unauthenticated", "http_status": 401, "stage": "identify",
                      "message": "Invalid token: delegation chain deeper than 2 actors (the gateway's limit)"}
    assert "--principal-claims: identify would refuse this token: 401 unauthenticated: Invalid token: " in err
    at_limit = _claims(act={"sub": PLANNER, "act": {"sub": PLANNER}})
    code, report, _ = explain("--config", config, "--principal-claims", at_limit, *READ)
    assert code == 0 and report is not None and report["outcome"] == "allow"


def test_a_spiffe_id_of_another_trust_domain_is_refused(tmp_path: Path) -> None:
    config = _config(tmp_path)
    code, report, _ = explain("--config", config, "--principal-claims",
                              _claims(act={"sub": "spiffe://globex.test/agent/x"}), *READ)
    assert code == 1 and report is not None and report["outcome"] == "unauthenticated"
    assert report["message"] == ("Token delegation actor's SPIFFE trust domain 'globex.test' is not one issuer "
                                 f"{ISS} may assert")


def test_a_sender_constrained_token_is_refused_as_identify_refuses_it(tmp_path: Path) -> None:
    # The gateway refuses any token with a `cnf` claim (identity/jwt.py): the offline answer must not be allow.
    config = _config(tmp_path)
    code, report, _ = explain("--config", config, "--principal-claims", _claims(cnf={"jkt": "0ZcOCORZNYy"}), *READ)
    assert code == 1 and report is not None and report["outcome"] == "unauthenticated"
    assert report["message"].startswith("Token is sender-constrained (cnf claim)")


@pytest.mark.parametrize("claims, expected", [
    ({"sub": SHOPPER, "org": "acme"}, "--principal-claims: no `iss`"),
    ({"iss": ISS + "/", "sub": SHOPPER},
     "--principal-claims: iss: Token issuer not accepted: 'https://idp.acme.test/' is not the configured "),
])
def test_claims_of_no_configured_issuer_are_unusable(tmp_path: Path, claims: dict[str, Any], expected: str) -> None:
    config = _config(tmp_path)
    code, report, err = explain("--config", config, "--principal-claims", json.dumps(claims), *READ)
    assert code == 2 and report is None
    assert expected in err and ISS in err


def test_an_anonymous_config_reads_no_claims(tmp_path: Path) -> None:
    config = _config(tmp_path, identity={"mode": "anonymous"})
    code, report, err = explain("--config", config, "--principal-claims", _claims(), *READ)
    assert code == 2 and report is None
    assert "identity.mode is anonymous" in err and "'anonymous'" in err


def test_an_mtls_caller_without_a_client_ca_is_unusable(tmp_path: Path) -> None:
    config = _config(tmp_path)
    code, _, err = explain("--config", config, "--principal-claims", json.dumps({"spiffe_id": SHOPPER}), *READ)
    assert code == 2
    assert "listen.tls.client_ca_file" in err


def test_an_mtls_caller_gets_the_registrys_attributes(tmp_path: Path) -> None:
    for name in ("cert.pem", "key.pem", "ca.pem"):
        (tmp_path / name).write_text("")
    config = _config(tmp_path, listen={"tls": {"cert_file": "cert.pem", "key_file": "key.pem",
                                               "client_ca_file": "ca.pem"}},
                     agents={SHOPPER: {"tenant": "acme"}})
    code, report, err = explain("--config", config, "--principal-claims", json.dumps({"spiffe_id": SHOPPER}), *READ)
    assert code == 0, err
    assert report is not None and report["outcome"] == "allow" and report["issuer"] == "mtls"
    code, _, err = explain("--config", config, "--principal-claims",
                           json.dumps({"spiffe_id": SHOPPER, "tenant": "acme"}), *READ)
    assert code == 2 and "a client certificate carries no claims" in err


def test_an_invalid_config_is_reported_with_its_paths(tmp_path: Path) -> None:
    config = _config(tmp_path, policies={"dir": "pol", "max_chain_depth": 0})
    code, report, err = explain("--config", config, "--principal-claims", _claims(), *READ)
    assert code == 2 and report is None
    assert f"{config}: invalid configuration" in err
    assert "policies.max_chain_depth: must be greater than or equal to 1, not 0" in err
    missing = customs_main("policy", "test", tmp_path / "none.yaml", "--config", tmp_path / "absent.yaml")
    assert missing.returncode == 2 and "absent.yaml: invalid configuration" in missing.stderr


def test_without_policies_dir_in_reach_the_error_names_the_configs(tmp_path: Path) -> None:
    config = _config(tmp_path)
    shutil.rmtree(tmp_path / "pol")
    code, _, err = explain("--config", config, "--principal-claims", _claims(), *READ)
    assert code == 2 and str(tmp_path / "pol") in err


CASES = f"""\
cases:
  - name: tenant from org
    principal: {{iss: "{ISS}", sub: "{SHOPPER}", org: acme}}
    tool: inventory/get_stock
    labels: {{read_only: true}}
    expect: allow
  - name: planner from the registry is low trust
    principal: {{iss: "{ISS}", sub: "{SHOPPER}", org: acme, act: {{sub: "{PLANNER}"}}}}
    tool: inventory/set_stock
    approved: true
    expect: deny
    policies: [low-trust-read-only]
  - name: too deep is refused, so never allowed
    principal: {{iss: "{ISS}", sub: "{SHOPPER}", org: acme,
                act: {{sub: "{PLANNER}", act: {{sub: "{STRANGER}", act: {{sub: "{PLANNER}3"}}}}}}}}
    tool: inventory/get_stock
    labels: {{read_only: true}}
    expect: deny
"""


def test_policy_test_with_config(tmp_path: Path) -> None:
    config = _config(tmp_path)
    cases = tmp_path / "cases.yaml"
    cases.write_text(CASES)
    result = customs_main("policy", "test", cases, "--config", config)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"PASS {cases}: tenant from org\n" in result.stdout
    assert (f"PASS {cases}: too deep is refused, so never allowed (identify would refuse this token: 401 "
            "unauthenticated: Invalid token: delegation chain deeper than 2 actors (the gateway's limit))") \
        in result.stdout
    assert "3 passed, 0 failed" in result.stdout
    # Without the config the first two decide otherwise (no tenant; a planner with no trust is only unscoped).
    offline = customs_main("policy", "test", cases, "--policies", SHIPPED)
    assert offline.returncode == 1 and "1 passed, 2 failed" in offline.stdout


def test_policy_test_a_refused_token_fails_a_case_expecting_it_decided(tmp_path: Path) -> None:
    config = _config(tmp_path)
    cases = tmp_path / "cases.yaml"
    cases.write_text(CASES.replace("expect: deny\n", "expect: allow\n").replace("    policies: [low-trust-read-only]\n",
                                                                               ""))
    result = customs_main("policy", "test", cases, "--config", config)
    assert result.returncode == 1
    assert (f"FAIL {cases}:12: too deep is refused, so never allowed: expected allow, but identify would refuse "
            "this token: 401 unauthenticated: Invalid token: delegation chain deeper than 2 actors") in result.stdout


def test_policy_test_claims_of_an_unknown_issuer_are_unusable(tmp_path: Path) -> None:
    config = _config(tmp_path)
    cases = tmp_path / "cases.yaml"
    cases.write_text(CASES.replace(f'iss: "{ISS}", sub: "{SHOPPER}", org: acme}}', f'sub: "{SHOPPER}"}}', 1))
    result = customs_main("policy", "test", cases, "--config", config)
    assert result.returncode == 2
    assert f"error: {cases}:2: cases[0]: no `iss`" in result.stderr and ISS in result.stderr


def test_policy_test_with_config_uses_its_environment_unless_the_file_states_one(tmp_path: Path) -> None:
    config = _config(tmp_path)
    body = (f"cases:\n  - principal: {{iss: \"{ISS}\", sub: \"{SHOPPER}\", org: acme}}\n"
            "    tool: infrastructure/status\n    labels: {read_only: true}\n    expect: approval_required\n")
    cases = tmp_path / "env.yaml"
    cases.write_text(body)
    assert customs_main("policy", "test", cases, "--config", config).returncode == 0
    cases.write_text("environment: dev\n" + body.replace("approval_required", "allow"))
    result = customs_main("policy", "test", cases, "--config", config)
    assert result.returncode == 0, result.stdout


def test_a_files_claims_mapping_is_not_used_with_config(tmp_path: Path) -> None:
    config = _config(tmp_path)
    cases = tmp_path / "mapped.yaml"
    cases.write_text("claims: {tenant: team}\ncases:\n"
                     f"  - principal: {{iss: \"{ISS}\", sub: \"{SHOPPER}\", team: acme}}\n"
                     "    tool: inventory/get_stock\n    labels: {read_only: true}\n    expect: deny\n")
    result = customs_main("policy", "test", cases, "--config", config)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "claims: is not used with --config" in result.stderr


def test_a_token_with_a_client_certificate_must_name_its_workload(tmp_path: Path) -> None:
    config = _config(tmp_path)
    code, report, _ = explain("--config", config, "--principal-claims", _claims(spiffe_id=PLANNER), *READ)
    assert code == 1 and report is not None
    assert report["message"] == "Token subject does not match the client certificate's SPIFFE ID"
    code, report, _ = explain("--config", config, "--principal-claims", _claims(spiffe_id=SHOPPER), *READ)
    assert code == 0 and report is not None and report["outcome"] == "allow"
    code, _, err = explain("--config", config, "--principal-claims", _claims(spiffe_id="spiffe://Acme/x"), *READ)
    assert code == 2 and "--principal-claims: spiffe_id: " in err
    code, _, err = explain("--config", config, "--principal-claims", _claims(spiffe_id=7), *READ)
    assert code == 2 and "--principal-claims: spiffe_id must be a SPIFFE ID" in err


def test_explain_needs_policies_or_a_config() -> None:
    code, _, err = explain("--principal-claims", _claims(), *READ)
    assert code == 2
    assert "explain needs --policies DIR (or --config customs.yaml: its policies.dir)" in err


def test_a_refused_case_listing_policies_or_errors_fails(tmp_path: Path) -> None:
    config = _config(tmp_path)
    deep = (f"{{iss: \"{ISS}\", sub: \"{SHOPPER}\", act: {{sub: \"{PLANNER}\", act: {{sub: \"{STRANGER}\", "
            f"act: {{sub: \"{PLANNER}3\"}}}}}}}}")
    cases = tmp_path / "refused.yaml"
    cases.write_text("cases:\n"
                     f"  - {{name: by policy, principal: {deep}, tool: inventory/get_stock, expect: deny,\n"
                     "     policies: [reads-allowed]}\n"
                     f"  - {{name: with errors, principal: {deep}, tool: inventory/get_stock, expect: deny,\n"
                     "     expect_errors: true}\n")
    result = customs_main("policy", "test", cases, "--config", config)
    assert result.returncode == 1, result.stdout + result.stderr
    assert (f"FAIL {cases}:2: by policy: expected policies ['reads-allowed'], but no policy decides a refused "
            "token") in result.stdout
    assert (f"FAIL {cases}:4: with errors: errors: none (identify refused the token), but expect_errors is set"
            in result.stdout)


def test_explain_labels_the_tool_as_the_configs_upstreams_do(tmp_path: Path) -> None:
    """The gateway labels a tool from `upstreams[].tools` (sensitivity, leaves_org, overridden annotations): explain
    --config decided `hr/salaries` as an unlabelled tool, `internal`, where the deployment has it `restricted`, and
    answered approval_required for a read the gateway denies to an agent without clearance. --annotations still
    win, and a resource URI takes its URI templates' labels as a read does."""
    hr = {"name": "hr", "url": "http://127.0.0.1:9/mcp",
          "tools": {"salaries": {"sensitivity": "restricted", "read_only": True},
                    "files://{path}": {"sensitivity": "restricted"}}}
    config = _config(tmp_path, upstreams=[{"name": "inventory", "url": "http://127.0.0.1:9/mcp"}, hr])
    code, report, err = explain("--config", config, "--principal-claims", _claims(), "--tool", "hr/salaries")
    assert code == 0 and report is not None, err
    assert (report["outcome"], report["policies"]) == ("deny", ["restricted-needs-clearance"])
    code, report, err = explain("--config", config, "--principal-claims", _claims(clearance="restricted"),
                                "--tool", "hr/salaries")
    assert (code, report and report["outcome"]) == (0, "allow"), err
    code, report, err = explain("--config", config, "--principal-claims", _claims(), "--tool", "hr/salaries",
                                "--annotations", '{"sensitivity": "internal"}')
    assert (code, report and report["outcome"]) == (0, "allow"), err
    code, report, err = explain("--config", config, "--principal-claims", _claims(), "--tool", "hr/files://report",
                                "--action", "read_resource")
    assert (code, report and report["policies"]) == (0, ["restricted-needs-clearance"]), err
    # An upstream the config does not have keeps the spec's defaults (as without --config).
    code, report, err = explain("--config", config, "--principal-claims", _claims(), "--tool", "crm/salaries",
                                "--annotations", '{"read_only": true}')
    assert (code, report and report["outcome"]) == (0, "allow"), err


def test_explain_decides_a_call_with_the_facts_the_gateway_adds(tmp_path: Path) -> None:
    """The gateway gives every tools/call its task's facts (a first call: no calls, nothing seen, this call's summed
    arguments as the totals) and scans its arguments for secrets; explain --config gave neither, so a payment of 50
    that the shipped task-payments-under-limit lets through was approval_required offline, and one whose memo holds
    a token, to a tool that leaves the organisation, was not denied. Facts --context states win."""
    pay = {"name": "payments", "url": "http://127.0.0.1:9/mcp",
           "tools": {"pay": {"sum_args": ["amount"], "leaves_org": True}}}
    config = _config(tmp_path, upstreams=[pay])

    def run(args: dict[str, Any], *more: str) -> dict[str, Any]:
        code, report, err = explain("--config", config, "--principal-claims", _claims(), "--tool", "payments/pay",
                                    "--args", json.dumps({"account": "a", **args}), *more)
        assert code == 0 and report is not None, err
        return report

    first = run({"amount": 50})
    assert (first["outcome"], first["policies"]) == ("allow", ["task-payments-under-limit"])
    assert first["context"]["task"] == {"calls": 0, "totals": {"amount": 50}, "seen_tools": []}
    assert run({"amount": 20000})["outcome"] == "approval_required"
    refund = run({"amount": -5})
    assert refund["outcome"] == "approval_required" and refund["context"]["task"]["not_counted"] == ["amount"]
    leaking = run({"amount": 50, "memo": "ghp_" + "a1" * 18})
    assert (leaking["outcome"], leaking["policies"]) == ("deny", ["no-secrets-leaving-org"])
    assert leaking["context"]["args_contain_secret"] is True
    stated = run({"amount": 50, "memo": "ghp_" + "a1" * 18}, "--context",
                 '{"args_contain_secret": false, "task": {"totals": {"amount": 10050}}}')
    assert (stated["outcome"], stated["context"]["args_contain_secret"]) == ("approval_required", False)


def test_explain_scans_a_prompts_arguments_as_the_gateway_does(tmp_path: Path) -> None:
    """The gateway scans the arguments of prompts/get too (and gives only tools/call a task)."""
    config = _config(tmp_path)
    code, report, err = explain("--config", config, "--principal-claims", _claims(), "--tool", "inventory/restock",
                                "--action", "get_prompt", "--args", json.dumps({"sku": "ghp_" + "a1" * 18}))
    assert code == 0 and report is not None, err
    assert report["context"]["args_contain_secret"] is True and "task" not in report["context"]


def test_explain_names_the_decision_as_the_decision_log_does(tmp_path: Path) -> None:
    """explain's report also carries `decision` and `policy_ids`, the names of the decision log's record (and of
    customs.decision / customs.policy_ids on spans), so a record and an explanation of it compare key by key."""
    code, report, err = explain("--config", _config(tmp_path), "--principal-claims", _claims(), *READ)
    assert code == 0 and report is not None, err
    assert (report["decision"], report["policy_ids"]) == (report["outcome"], report["policies"]) \
        == ("allow", ["reads-allowed"])
