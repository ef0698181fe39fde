"""`customs policy test` case format: principals as token claims, `context:` facts, unknown keys refused.

Run against the shipped policies by the command's main() in this process (a child process cost a second or
more each); the documented case file and explain's context facts still run `python -m gateway.authz.cli`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from authz_helpers import REPO, SHIPPED

from gateway.authz import cli
from tests.support.cli import customs_main


def policy_test(tmp_path: Path, text: str, *, child: bool = False) -> subprocess.CompletedProcess[str]:
    """`policy test` of `text` in this process, or with `child` as the command runs (a child process)."""
    cases = tmp_path / "cases.yaml"
    cases.write_text(text)
    argv = ["test", str(cases), "--policies", str(SHIPPED)]
    if not child:
        return customs_main(*argv, main=cli.main)
    return subprocess.run([sys.executable, "-m", "gateway.authz.cli", *argv],
                          cwd=REPO, capture_output=True, text=True, timeout=60, check=False)


TOOLS = """tools:
  inventory/get_stock: {read_only: true, destructive: false}
  inventory/set_stock: {read_only: false, destructive: true}
  infrastructure/restart: {read_only: false, destructive: true}
"""


def test_a_principal_given_as_token_claims_is_mapped_like_a_verified_token(tmp_path: Path) -> None:
    result = policy_test(tmp_path, TOOLS + """cases:
  - name: chain from act
    principal: {sub: "spiffe://acme.example/agent/a", tenant: acme, groups: [ops],
                act: {sub: "spiffe://acme.example/agent/b", tenant: acme, act: {sub: untrusted-agent, tenant: acme}}}
    tool: inventory/get_stock
    expect: deny
    policies: [untrusted-agents]
  - name: an actor of another tenant fails closed
    principal: {sub: a, tenant: acme, act: {sub: b, tenant: globex}}
    tool: inventory/get_stock
    expect: deny
  - name: spiffe_id stands in for an mTLS identity
    principal: {spiffe_id: "spiffe://acme.example/agent/a", tenant: acme}
    tool: inventory/get_stock
    expect: allow
""")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 passed, 0 failed" in result.stdout


def test_claims_are_mapped_by_the_files_claims_mapping_and_a_mismatch_exits_1(tmp_path: Path) -> None:
    case = """cases:
  - name: low trust cannot write
    principal: {sub: a, tenant: acme, trust_level: low}
    tool: inventory/set_stock
    context: {approval: granted}
    expect: deny
    policies: [low-trust-read-only]
"""
    # Without a mapping `trust_level` is no attribute (as in the gateway's default claim mapping): allowed.
    unmapped = policy_test(tmp_path, TOOLS + case)
    assert unmapped.returncode == 1 and "expected deny, got allow" in unmapped.stdout
    mapped = policy_test(tmp_path, TOOLS + "claims: {trust: trust_level}\n" + case)
    assert mapped.returncode == 0, mapped.stdout + mapped.stderr


def test_context_states_the_facts_of_the_call(tmp_path: Path) -> None:
    result = policy_test(tmp_path, TOOLS + """cases:
  - name: production infrastructure needs approval
    principal: {sub: a, tenant: acme}
    tool: infrastructure/restart
    context: {environment: production, time: {hour: 23, weekday: 6}, args_contain_secret: false}
    expect: approval_required
    policies: [production-infrastructure-needs-approval, writes-need-approval]
  - name: approval granted in context
    principal: {sub: a, tenant: acme}
    tool: infrastructure/restart
    context: {environment: production, approval: granted}
    expect: allow
  - name: a context tenant other than the principal's denies
    principal: {sub: a, tenant: acme}
    tool: inventory/get_stock
    context: {tenant: globex}
    expect: deny
  - name: a stated chain depth past the limit denies
    principal: {sub: a, tenant: acme}
    tool: inventory/get_stock
    context: {chain_depth: 4, chain: [b, c, d, e]}
    expect: deny
    policies: [delegation-depth-limit]
  - name: truncated arguments block writes
    principal: {sub: a, tenant: acme}
    tool: inventory/set_stock
    context: {args: {sku: w, quantity: 1}, args_truncated: true, approval: granted}
    expect: deny
    policies: [truncated-args-read-only]
""")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "5 passed, 0 failed" in result.stdout


def test_unknown_keys_are_refused_naming_the_case_and_key(tmp_path: Path) -> None:
    misspelled = policy_test(tmp_path, TOOLS + """cases:
  - {name: prod read, principal: {sub: a, tenant: acme}, tool: inventory/get_stock, enviroment: production,
     expect: allow}
""")
    assert misspelled.returncode == 2
    assert "cases[0] (prod read): unknown key(s) ['enviroment']" in misspelled.stderr
    in_context = policy_test(tmp_path, TOOLS + """cases:
  - {name: ctx, principal: {sub: a, tenant: acme}, tool: inventory/get_stock, context: {aproval: granted},
     expect: allow}
""")
    assert in_context.returncode == 2 and "context: unknown key(s) ['aproval']" in in_context.stderr
    inline = policy_test(tmp_path, TOOLS + """cases:
  - {name: inline, principal: {id: a, atributes: {tenant: acme}}, tool: inventory/get_stock, expect: deny}
""")
    assert inline.returncode == 2 and "unknown key(s) ['atributes']" in inline.stderr
    top = policy_test(tmp_path, "principal: {}\n" + TOOLS + "cases: []\n")
    assert top.returncode == 2 and "unknown key(s) ['principal']" in top.stderr


def test_context_inputs_that_cannot_be_understood_exit_2(tmp_path: Path) -> None:
    twice = policy_test(tmp_path, TOOLS + """cases:
  - {name: twice, principal: {sub: a, tenant: acme}, tool: inventory/get_stock, environment: dev,
     context: {environment: production}, expect: allow}
""")
    assert twice.returncode == 2 and "environment given twice" in twice.stderr
    bad_time = policy_test(tmp_path, TOOLS + """cases:
  - {name: t, principal: {sub: a, tenant: acme}, tool: inventory/get_stock, context: {time: {hour: 25, weekday: 1}},
     expect: allow}
""")
    assert bad_time.returncode == 2 and "context.time" in bad_time.stderr
    bad_approval = policy_test(tmp_path, TOOLS + """cases:
  - {name: a, principal: {sub: a, tenant: acme}, tool: inventory/get_stock, context: {approval: yes-please},
     expect: allow}
""")
    assert bad_approval.returncode == 2 and "approval must be" in bad_approval.stderr
    chain_twice = policy_test(tmp_path, TOOLS + """cases:
  - {name: c, principal: {sub: a, tenant: acme, act: {sub: b}}, chain: [x], tool: inventory/get_stock,
     expect: deny}
""")
    assert chain_twice.returncode == 2 and "act" in chain_twice.stderr
    bad_sub = policy_test(tmp_path, TOOLS + """cases:
  - {name: s, principal: {sub: "spiffe://bad host/x", tenant: acme}, tool: inventory/get_stock, expect: deny}
""")
    assert bad_sub.returncode == 2 and "cases[0]" in bad_sub.stderr


def test_explain_takes_the_same_context_facts(tmp_path: Path) -> None:
    def explain(context: dict[str, object]) -> subprocess.CompletedProcess[str]:
        return customs_main("explain", "--policies", str(SHIPPED), "--principal-claims",
                            '{"sub": "a", "tenant": "acme"}', "--tool", "infrastructure/restart",
                            "--context", json.dumps(context), main=cli.main)

    report = json.loads(explain({"environment": "production", "time": {"hour": 9, "weekday": 1}}).stdout)
    assert report["outcome"] == "approval_required" and report["context"]["time"] == {"hour": 9, "weekday": 1}
    unknown = explain({"enviroment": "production"})
    assert unknown.returncode == 2 and "unknown key(s) ['enviroment']" in unknown.stderr


def test_task_facts_of_the_wrong_shape_exit_2(tmp_path: Path) -> None:
    """A misspelled `totals` (or a total given as text) used to be dropped: the case then tested a task that
    had paid nothing, and a cap case passed or failed for the wrong reason."""
    def case(task: str) -> subprocess.CompletedProcess[str]:
        return policy_test(tmp_path, "tools:\n  payments/pay: {read_only: false}\ncases:\n"
                           "  - {name: cap, principal: {sub: a, tenant: acme}, tool: payments/pay, args: {amount: 5},\n"
                           f"     task: {task}, expect: approval_required}}\n")
    fine = case("{calls: 2, totals: {amount: 10001.5}, seen_tools: [payments/pay], not_counted: []}")
    assert fine.returncode == 0, fine.stdout + fine.stderr
    for task, problem in (("{total: {amount: 10001}}", "context.task: unknown key(s) ['total']"),
                          ("{totals: {amount: '10001'}}", "context.task.totals.amount must be a number"),
                          ("{totals: [10001]}", "context.task.totals must be a mapping"),
                          ("{calls: many}", "context.task.calls must be a whole number"),
                          ("{seen_tools: payments/pay}", "context.task.seen_tools must be a list of strings"),
                          ("{not_counted: [1]}", "context.task.not_counted must be a list of strings")):
        result = case(task)
        assert result.returncode == 2 and "cases[0]" in result.stderr and problem in result.stderr, \
            (task, result.stdout, result.stderr)


def test_label_values_and_time_of_the_wrong_type_exit_2(tmp_path: Path) -> None:
    """A misspelled sensitivity (`restrcted`) was taken as given, so restricted-needs-clearance never fired and
    an `allow` case passed for a tool the gateway (whose config refuses the value) would decide as restricted;
    `time: {hour: true}` tested hour 1. Both, in a file's tools, a case's labels and explain's options, exit 2."""
    def case(labels: str, time: str = "{hour: 9, weekday: 1}") -> subprocess.CompletedProcess[str]:
        return policy_test(tmp_path, f"tools:\n  inventory/list_skus: {labels}\ncases:\n"
                           "  - {name: c, principal: {sub: a, tenant: acme}, tool: inventory/list_skus,\n"
                           f"     context: {{time: {time}}}, expect: allow}}\n")
    assert case("{read_only: true, sensitivity: internal}").returncode == 0
    for labels, problem in (("{read_only: true, sensitivity: restrcted}",
                             "sensitivity must be one of public, internal, confidential, restricted, got 'restrcted'"),
                            ("{read_only: 'true'}", "read_only must be true or false, got 'true'"),
                            ("{read_only: true, leaves_org: 0}", "leaves_org must be true or false, got 0")):
        result = case(labels)
        assert result.returncode == 2 and "cases[0]" in result.stderr and problem in result.stderr, \
            (labels, result.stdout, result.stderr)
    for time in ("{hour: true, weekday: 1}", "{hour: 9, weekday: true}"):
        result = case("{read_only: true}", time)
        assert result.returncode == 2 and "context.time must be" in result.stderr, (time, result.stdout)
    explained = customs_main("explain", "--policies", SHIPPED, "--principal-claims", '{"sub": "a", "tenant": "acme"}',
                             "--tool", "inventory/list_skus",
                             "--annotations", '{"read_only": true, "sensitivity": "Restricted"}', main=cli.main)
    assert explained.returncode == 2 and "sensitivity must be one of" in explained.stderr, explained.stdout


def test_approved_and_expect_errors_must_be_booleans(tmp_path: Path) -> None:
    """`approved: "no"` (quoted, so a string) was truthy and decided the case as approved: a write that needs
    approval passed an `allow` case; `expect_errors: "no"` demanded errors. Both are exit 2 now."""
    def case(extra: str) -> subprocess.CompletedProcess[str]:
        return policy_test(tmp_path, TOOLS + "cases:\n  - {name: w, principal: {sub: a, tenant: acme}, "
                           f"tool: inventory/set_stock, expect: approval_required, {extra}}}\n")
    assert case("approved: false").returncode == 0
    for extra, problem in (('approved: "no"', "approved must be true or false, got 'no'"),
                           ('expect_errors: "no"', "expect_errors must be true or false, got 'no'")):
        result = case(extra)
        assert result.returncode == 2 and "cases[0]" in result.stderr and problem in result.stderr, \
            (extra, result.stdout, result.stderr)


def test_a_tools_key_that_names_no_upstream_tool_exits_2(tmp_path: Path) -> None:
    """`tools: {set_stock: {...}}` (no upstream) labelled nothing any case can name, so its cases ran on the MCP
    defaults and passed or failed for the wrong reason; a key must be `upstream/tool` as a case's `tool:` is."""
    result = policy_test(tmp_path, "tools:\n  set_stock: {read_only: true}\ncases:\n"
                         "  - {name: x, principal: {sub: a, tenant: acme}, tool: inventory/set_stock,"
                         " expect: approval_required}\n")
    assert result.returncode == 2, result.stdout
    assert "tools: 'set_stock' must be 'upstream/tool'" in result.stderr, result.stderr
    for tool in ("/set_stock", "inventory/"):  # an empty upstream or tool is no tool either
        result = policy_test(tmp_path, f"cases:\n  - {{name: x, principal: {{sub: a, tenant: acme}}, tool: {tool},"
                             " expect: deny}\n")
        assert result.returncode == 2 and f"tool must be 'upstream/tool', got {tool!r}" in result.stderr, tool


def test_a_name_principals_does_not_define_exits_2(tmp_path: Path) -> None:
    """A bare name was taken as the id of an agent with no attributes, so a misspelled `principal: reder` or
    `chain: [orchestrater]` denied, and a case expecting deny passed for the wrong reason."""
    named = 'principals:\n  reader: {id: "spiffe://customs.demo/agent/reader", attributes: {tenant: acme}}\n'
    for case in ("principal: reder", "principal: reader, chain: [orchestrater]"):
        result = policy_test(tmp_path, named + TOOLS + f"cases:\n  - {{name: typo, {case}, tool: inventory/set_stock,"
                             " approved: true, expect: deny}\n")
        assert result.returncode == 2, result.stdout
        assert "cases[0]" in result.stderr and "is not a name in `principals`" in result.stderr, result.stderr
    ok = policy_test(tmp_path, named + TOOLS + "cases:\n  - {name: by id, principal: reader, tool: inventory/get_stock,"
                     ' chain: [{id: "spiffe://customs.demo/agent/ghost"}], expect: deny}\n')
    assert ok.returncode == 0, ok.stdout + ok.stderr


def test_the_documented_case_file_passes(tmp_path: Path) -> None:
    """The example under `## Policy tests` in docs/policies.md, copied as it is, passes on the shipped policies."""
    text = (REPO / "docs" / "policies.md").read_text()
    block = text.split("## Policy tests", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    result = policy_test(tmp_path, block, child=True)
    assert result.returncode == 0 and " 0 failed" in result.stdout, result.stdout + result.stderr


def test_a_case_problem_names_the_line_the_case_starts_on(tmp_path: Path) -> None:
    """Like a policy problem (file:line), a case problem names where its case is, not only its index."""
    result = policy_test(tmp_path, TOOLS + "cases:\n  - {name: fine, principal: {id: a}, tool: inventory/get_stock,"
                         " expect: deny}\n  - name: second\n    principal: {id: a}\n    tool: inventory/get_stock\n"
                         "    enviroment: production\n    expect: deny\n")
    assert result.returncode == 2
    assert f"{tmp_path / 'cases.yaml'}:7: cases[1] (second): unknown key(s) ['enviroment']" in result.stderr, \
        result.stderr


def test_a_failing_case_names_the_line_it_starts_on(tmp_path: Path) -> None:
    """A FAIL line names file:line as a case problem does (it used to name only the file's name and the case)."""
    result = policy_test(tmp_path, TOOLS + "cases:\n  - {name: fine, principal: {id: a}, tool: inventory/get_stock,"
                         " expect: deny}\n  - name: wrong\n    principal: {id: a}\n    tool: inventory/get_stock\n"
                         "    expect: allow\n")
    assert result.returncode == 1
    assert f"FAIL {tmp_path / 'cases.yaml'}:7: wrong: expected allow, got deny" in result.stdout, result.stdout
    # (on the old code the PASS line named only the file's name: `PASS cases.yaml: fine`)
    assert f"PASS {tmp_path / 'cases.yaml'}: fine" in result.stdout, result.stdout


def test_pass_lines_name_the_case_file_as_fail_lines_do(tmp_path: Path) -> None:
    """Two cases.yaml in two directories: each PASS line names its own file, as given (the name alone told
    them apart from nothing)."""
    case = TOOLS + "cases:\n  - {name: fine, principal: {id: a}, tool: inventory/get_stock, expect: deny}\n"
    for team in ("billing", "ops"):
        (tmp_path / team).mkdir()
        (tmp_path / team / "cases.yaml").write_text(case)
    result = customs_main("test", str(tmp_path / "billing"), str(tmp_path / "ops" / "cases.yaml"),
                          "--policies", str(SHIPPED), main=cli.main)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[:2] == [f"PASS {tmp_path / 'billing' / 'cases.yaml'}: fine",
                                              f"PASS {tmp_path / 'ops' / 'cases.yaml'}: fine"], result.stdout
