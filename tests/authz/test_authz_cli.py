"""`customs policy ...` commands: one test per command runs it as a real subprocess (`python -m gateway.authz.cli`,
run_process), the others run its main() in this process (run: a child process each cost ~1 s of the suite)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from authz_helpers import REPO, SHIPPED, TOOLS, agent, call
from mcp import Client

from gateway.authz.cli import main as policy_main
from gateway.authz.record import authz_input
from gateway.demo.servers import SERVERS
from tests.support.cli import customs_main


def run_process(*argv: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.authz.cli", *map(str, argv)], cwd=REPO,
                          capture_output=True, text=True, timeout=60, check=False)


def run(*argv: str | Path) -> subprocess.CompletedProcess[str]:
    return customs_main(*argv, main=policy_main)


@pytest.fixture(scope="module")
def demo_tools_json(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tools/list results of the real demo servers (in-process MCP clients)."""
    import asyncio

    async def fetch() -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, make in SERVERS.items():
            async with Client(make()) as client:
                result = await client.list_tools()
                out[name] = {"tools": [t.model_dump(by_alias=True, exclude_none=True, mode="json")
                                       for t in result.tools]}
        return out

    path = tmp_path_factory.mktemp("tools") / "tools.json"
    path.write_text(json.dumps(asyncio.run(fetch())))
    return path


@pytest.mark.parametrize("command", ["validate", "test", "explain", "schema", "replay"])
def test_every_command_has_help(command: str) -> None:
    result = run_process(command, "--help")
    assert result.returncode == 0 and "usage:" in result.stdout
    # Every option says what it takes, and the exit codes of docs/policies.md's command table are there too.
    text = result.stdout.replace("\n\n", "\n")
    assert "exit status:" in text and "\n  0 " in text.split("exit status:")[1], text
    lines = text.split("options:")[1].split("exit status:")[0].splitlines()
    for index, line in enumerate(lines):
        if line.startswith("  -") and not line.startswith("  -h"):
            same_line = "  " in line.strip()  # `--opt VALUE   help text`
            next_line = index + 1 < len(lines) and lines[index + 1].startswith(" " * 8)
            assert same_line or next_line, f"{command}: {line.strip()} has no help"


def test_validate_ok_and_broken(policy_dir: Path) -> None:
    ok = run_process("validate", SHIPPED)
    assert ok.returncode == 0 and "OK (13 policies" in ok.stdout
    (policy_dir / "bad.cedar").write_text('@id("bad")\npermit (principal, action, resource) when { context.nope };')
    bad = run("validate", policy_dir)
    assert bad.returncode == 1 and "bad.cedar:2: policy 'bad'" in bad.stderr and "nope" in bad.stderr


def test_validate_lists_the_problems_of_every_file_not_only_the_first_kind(policy_dir: Path) -> None:
    """A syntax error (or a missing @id) in one file hid every validation problem of the others: the engineer
    fixed it, ran validate again and only then learned of a misspelled argument elsewhere."""
    (policy_dir / "a_broken.cedar").write_text('@id("broken")\npermit (principal, action, resource) when { nope };\n')
    (policy_dir / "b_typos.cedar").write_text(
        '@id("typo")\nforbid (principal, action == Action::"call_tool", resource)\nwhen { context.args has amout };\n'
        '\npermit (principal, action, resource) when { principal.nosuch == "x" };\n')
    bad = run("validate", policy_dir)
    assert bad.returncode == 1
    assert "a_broken.cedar:2: syntax error" in bad.stderr, bad.stderr
    assert "b_typos.cedar:5: policy #2 has no @id" in bad.stderr, bad.stderr
    assert "b_typos.cedar:1: policy 'typo': argument 'amout'" in bad.stderr, bad.stderr
    assert "b_typos.cedar:5: policy '(no @id)': for policy `(no @id)`, attribute `nosuch`" in bad.stderr, bad.stderr


def test_policy_test_passes_shipped_and_fails_a_wrong_case(tmp_path: Path) -> None:
    ok = run_process("test", SHIPPED / "tests")
    assert ok.returncode == 0 and " 0 failed" in ok.stdout
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("cases:\n  - {name: wrong, principal: {id: a, attributes: {tenant: t}}, tool: payments/pay,\n"
                     "     labels: {read_only: false}, expect: allow}\n")
    failed = run("test", wrong, "--policies", SHIPPED)
    assert failed.returncode == 1 and f"FAIL {wrong}:2: wrong: expected allow, got approval_required" in failed.stdout
    unreadable = run("test", tmp_path / "missing.yaml", "--policies", SHIPPED)
    assert unreadable.returncode == 2 and "cannot read cases" in unreadable.stderr
    malformed = tmp_path / "malformed.yaml"
    malformed.write_text("cases:\n  - {principal: {id: a}, tool: nope, expect: allow}\n")
    assert "tool must be 'upstream/tool'" in run("test", malformed, "--policies", SHIPPED).stderr


def test_explain(tmp_path: Path) -> None:
    claims = tmp_path / "claims.json"
    claims.write_text(json.dumps({"sub": "agent-a", "tenant": "acme",
                                  "act": {"sub": "spiffe://customs.demo/agent/untrusted", "tenant": "acme"}}))
    result = run_process("explain", "--policies", SHIPPED, "--principal-claims", f"@{claims}", "--tool",
                         "inventory/get_stock", "--annotations", '{"read_only": true}', "--args", '{"sku": "widget"}')
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["outcome"] == "deny" and report["policies"] == ["untrusted-agents"]
    assert report["evaluated_as"] == ["agent-a", "spiffe://customs.demo/agent/untrusted"]
    granted = run("explain", "--policies", SHIPPED, "--principal-claims", '{"sub": "a", "tenant": "acme"}',
                  "--tool", "payments/pay", "--context", '{"approval": "granted"}', "--args", '{"amount": 1}')
    assert json.loads(granted.stdout)["outcome"] == "allow"
    bad = run("explain", "--policies", SHIPPED, "--principal-claims", "{not json", "--tool", "a/b")
    assert bad.returncode == 2 and "--principal-claims: invalid JSON" in bad.stderr
    no_sub = run("explain", "--policies", SHIPPED, "--principal-claims", "{}", "--tool", "a/b")
    assert no_sub.returncode == 2 and "sub" in no_sub.stderr


def test_an_unknown_action_is_an_error_not_a_silent_deny(tmp_path: Path) -> None:
    """A mistyped action is decided by no policy, i.e. deny: it used to make a `deny` case pass vacuously
    and `explain` print a confident deny. Now both exit 2 naming the actions the gateway decides."""
    typo = tmp_path / "typo.yaml"
    typo.write_text("cases:\n  - {name: typo, principal: {id: a, attributes: {tenant: acme}},"
                    " tool: inventory/get_stock, action: tools/call, expect: deny}\n")
    result = run("test", typo, "--policies", SHIPPED)
    assert result.returncode == 2, result.stdout
    assert "unknown action 'tools/call'; one of call_tool, list_tools, read_resource, get_prompt" in result.stderr
    claims = '{"sub": "a", "tenant": "acme"}'
    bogus = run("explain", "--policies", SHIPPED, "--principal-claims", claims, "--tool", "inventory/get_stock",
                "--action", "read_resources")
    assert bogus.returncode == 2 and bogus.stdout == ""
    assert "--action: unknown action 'read_resources'" in bogus.stderr
    for action in ("call_tool", "read_resource", "get_prompt"):  # reads-allowed names these three
        ok = run("explain", "--policies", SHIPPED, "--principal-claims", claims, "--tool", "inventory/get_stock",
                 "--annotations", '{"read_only": true}', "--action", action)
        assert ok.returncode == 0 and json.loads(ok.stdout)["outcome"] == "allow", (action, ok.stderr)


def test_schema_generation_catches_a_mistyped_argument(demo_tools_json: Path, policy_dir: Path,
                                                       tmp_path: Path) -> None:
    config = tmp_path / "customs.yaml"
    config.write_text(f"upstreams:\n  - {{name: inventory, url: http://127.0.0.1:9001/mcp}}\n"
                      f"policies: {{dir: {policy_dir}}}\n")
    result = run_process("schema", "--config", config, "--tools-json", demo_tools_json,
                         "-o", policy_dir / "schema.cedarschema")
    assert result.returncode == 0, result.stderr
    schema = (policy_dir / "schema.cedarschema").read_text()
    assert '"quantity"?: Long' in schema and '"sku"?: String' in schema and "type inventory_set_stock_args" in schema
    assert run("validate", policy_dir).returncode == 0  # the shipped policies still validate
    (policy_dir / "typo.cedar").write_text('@id("typo")\nforbid (principal, action == Action::"call_tool", resource)\n'
                                           'when { context.args has quantity && context.args.quantity == "9" };')
    bad = run("validate", policy_dir)
    assert bad.returncode == 1 and "policy 'typo'" in bad.stderr and "Long and String" in bad.stderr


def test_generated_schema_parses_for_any_legal_upstream_and_tool_names(policy_dir: Path, tmp_path: Path) -> None:
    # Upstream names may start with a digit and tool names `get-x` / `get_x` differ only in what the
    # type name replaces: the generated per-tool types used to be invalid or declared twice.
    tools = tmp_path / "tools.json"
    tools.write_text(json.dumps({
        "9up": {"tools": [{"name": "get-x", "inputSchema": {"properties": {"a": {"type": "string"}}}},
                          {"name": "get_x", "inputSchema": {"properties": {"b": {"type": "integer"}}}}]},
        "9up_get": {"tools": [{"name": "x", "inputSchema": {"properties": {"c": {"type": "boolean"}}}}]},
    }))
    config = tmp_path / "customs.yaml"
    config.write_text("upstreams:\n  - {name: 9up, url: http://127.0.0.1:9001/mcp}\n"
                      "  - {name: 9up_get, url: http://127.0.0.1:9002/mcp}\n"
                      f"policies: {{dir: {policy_dir}}}\n")
    result = run("schema", "--config", config, "--tools-json", tools, "-o", policy_dir / "schema.cedarschema")
    assert result.returncode == 0, result.stderr
    schema = (policy_dir / "schema.cedarschema").read_text()
    assert '"a"?: String' in schema and '"b"?: Long' in schema and '"c"?: Bool' in schema
    checked = run("validate", policy_dir)
    assert checked.returncode == 0, checked.stderr


def test_generated_schema_parses_for_any_argument_name(policy_dir: Path, tmp_path: Path) -> None:
    """Argument names were quoted as JSON (`"\\u00fc"`, `"\\b"`), escapes Cedar's schema parser refuses, and a
    tool name's newline ended the comment naming it: one non-ASCII argument made the whole schema unusable."""
    tools = tmp_path / "tools.json"
    props = {name: {"type": "string"} for name in ("ü", "日本", "bell\x07", "back\bspace", "q\"uote", "lone\ud800")}
    tools.write_text(json.dumps({"shop": {"tools": [
        {"name": "t\nwith newline", "inputSchema": {"properties": props}},
        {"name": "u", "inputSchema": {"properties": {"lone\ud800": {"type": "integer"}}}}]}}))
    result = run("schema", "--tools-json", tools, "--policies", policy_dir, "-o", policy_dir / "schema.cedarschema")
    assert result.returncode == 0, result.stderr
    schema = (policy_dir / "schema.cedarschema").read_text(encoding="utf-8")
    assert '"ü"?: String' in schema and '"日本"?: String' in schema and '"bell\\u{7}"?: String' in schema
    assert "// shop/t\\nwith newline" in schema
    # Not valid Unicode: no Cedar string can name it, so it is left out (named in a comment, escaped).
    assert '"lone\\u{d800}" left out: a name that is not valid Unicode' in schema and '"lone\\u{d800}"?' not in schema
    (policy_dir / "umlaut.cedar").write_text(
        '@id("no-umlaut")\nforbid (principal, action == Action::"call_tool", resource == Tool::"shop/u")\n'
        'when { context.args has "ü" && context.args["ü"] == "x" };\n')
    checked = run("validate", policy_dir)
    assert checked.returncode == 0, checked.stderr
    explained = run("explain", "--policies", policy_dir, "--principal-claims", '{"sub": "a", "tenant": "acme"}',
                    "--tool", "shop/u", "--annotations", '{"read_only": true}', "--args", '{"ü": "x"}')
    assert explained.returncode == 0, explained.stderr
    assert json.loads(explained.stdout)["policies"] == ["no-umlaut"]


def test_schema_errors(tmp_path: Path) -> None:
    missing = run("schema", "--policies", SHIPPED)
    assert missing.returncode == 2 and "--tools-json" in missing.stderr
    bad = tmp_path / "tools.json"
    bad.write_text('{"inventory": 5}')
    assert "expected a tools/list result" in run("schema", "--tools-json", bad).stderr
    config = tmp_path / "customs.yaml"
    config.write_text("upstreams: []\nnope: 1\n")
    assert run("schema", "--config", config, "--tools-json", bad).returncode == 2


def test_replay_reports_changed_decisions_grouped_by_policy(policy_dir: Path, tmp_path: Path) -> None:
    reader = agent("spiffe://customs.demo/agent/reader")
    lines = []
    for tool, outcome, ids in [("inventory/get_stock", "allow", ["reads-allowed"]),
                               ("payments/pay", "approval_required", ["writes-need-approval"]),
                               ("hr/salaries", "deny", ["restricted-needs-clearance"])]:
        snapshot = authz_input(reader, "call_tool", TOOLS[tool], call(reader, tool, {"amount": 1}), "dev",
                               include_args=True)
        lines.append(json.dumps({"decision": outcome, "policy_ids": ids, "authz_input": snapshot}))
    lines.append(json.dumps({"decision": "allow"}))  # an old line without authz_input: skipped
    log = tmp_path / "decisions.jsonl"
    log.write_text("\n".join(lines) + "\n")
    same = run("replay", "--log", log, "--policies", SHIPPED)
    assert same.returncode == 0 and "3 replayed, 0 changed, 1 skipped" in same.stdout
    (policy_dir / "freeze.cedar").write_text('@id("freeze")\nforbid (principal, action, resource)\n'
                                             'when { resource in Server::"inventory" };')
    changed = run("replay", "--log", log, "--policies", policy_dir)
    assert changed.returncode == 1
    assert "freeze: 1 changed" in changed.stdout and "inventory/get_stock: allow -> deny" in changed.stdout
    empty = tmp_path / "empty.jsonl"
    empty.write_text("not json\n")
    assert run("replay", "--log", empty, "--policies", SHIPPED).returncode == 2
    assert run("replay", "--log", tmp_path / "none.jsonl", "--policies", SHIPPED).returncode == 2


def test_replay_without_logged_arguments_reports_argument_policies_as_undetermined(
        policy_dir: Path, tmp_path: Path) -> None:
    """Without decision_log.include_args the replay cannot see arguments: a decision an argument-reading
    policy made is not reported as changed under the very policies that made it, but as undetermined."""
    (policy_dir / "cap.cedar").write_text('@id("small-reads")\npermit (principal, action == Action::"call_tool", '
                                          'resource == Tool::"payments/pay")\n'
                                          'when { context.args has amount && context.args.amount < 5 };')
    payer = agent("spiffe://customs.demo/agent/reader")
    lines = []
    for include_args in (False, True):
        snapshot = authz_input(payer, "call_tool", TOOLS["payments/pay"], call(payer, "payments/pay", {"amount": 1}),
                               "dev", include_args=include_args)
        lines.append(json.dumps({"decision": "allow", "policy_ids": ["small-reads"], "authz_input": snapshot}))
    log = tmp_path / "decisions.jsonl"
    log.write_text("\n".join(lines) + "\n")
    same = run("replay", "--log", log, "--policies", policy_dir)
    assert same.returncode == 0, same.stdout + same.stderr
    assert ("2 replayed, 0 changed, 0 skipped (no authz_input or not a decision), "
            "1 undetermined (arguments not logged)") in same.stdout
    assert "line 1: spiffe://customs.demo/agent/reader call_tool payments/pay: allow -> " in same.stdout
    (policy_dir / "cap.cedar").unlink()  # no policy reads arguments now: both lines replay exactly
    changed = run("replay", "--log", log, "--policies", policy_dir)
    assert changed.returncode == 1 and "2 replayed, 2 changed" in changed.stdout, changed.stdout
    assert "undetermined" not in changed.stdout


def test_replay_without_logged_arguments_names_calls_a_new_argument_policy_may_change(
        policy_dir: Path, tmp_path: Path) -> None:
    """A new forbid on arguments (payments over 5,000), replayed on a log without them (the default), decided
    every call on `{}`: it never fired, and the replay said `0 changed`, exit 0, as if the policy would change
    nothing. A call within an argument-reading policy's scope (principal, action, resource) is now listed as
    undetermined though its outcome on `{}` is the same; a call outside every such scope is not."""
    reader = agent("spiffe://customs.demo/agent/reader")
    lines = []
    for tool, outcome, ids in [("payments/pay", "approval_required", ["writes-need-approval"]),
                               ("inventory/get_stock", "allow", ["reads-allowed"])]:
        snapshot = authz_input(reader, "call_tool", TOOLS[tool], call(reader, tool, {"amount": 6000}), "dev",
                               include_args=False)
        lines.append(json.dumps({"decision": outcome, "policy_ids": ids, "authz_input": snapshot}))
    log = tmp_path / "decisions.jsonl"
    log.write_text("\n".join(lines) + "\n")
    (policy_dir / "limit.cedar").write_text(
        '@id("payment-limit")\nforbid (principal, action == Action::"call_tool", resource == Tool::"payments/pay")\n'
        'when { context.args has amount && context.args.amount > 5000 };\n')
    result = run("replay", "--log", log, "--policies", policy_dir)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 replayed, 0 changed, 0 skipped (no authz_input or not a decision), 1 undetermined" in result.stdout
    assert ("line 1: spiffe://customs.demo/agent/reader call_tool payments/pay: approval_required, unchanged "
            "without arguments; payment-limit reads them") in result.stdout, result.stdout
    assert "inventory/get_stock" not in result.stdout
    assert "undetermined" not in run("replay", "--log", log, "--policies", SHIPPED).stdout


def test_replay_without_logged_arguments_does_not_report_an_argument_error_deny_as_changed(
        policy_dir: Path, tmp_path: Path) -> None:
    """A call denied because of its arguments' types (12.5 where a policy compares a Long: policy_errors),
    replayed on `{}` against the very policies that denied it, has no error and was reported as changed
    (deny -> approval_required, exit 1); without the arguments that cannot be told, so it is undetermined."""
    (policy_dir / "limit.cedar").write_text(
        '@id("payment-limit")\nforbid (principal, action == Action::"call_tool", resource == Tool::"payments/pay")\n'
        'when { context.args has amount && context.args.amount > 5000 };\n')
    reader = agent("spiffe://customs.demo/agent/reader")
    snapshot = authz_input(reader, "call_tool", TOOLS["payments/pay"], call(reader, "payments/pay", {"amount": 12.5}),
                           "dev", include_args=False)
    errors = ["argument type mismatch: context.args.amount is decimal, the schema declares Long"]
    log = tmp_path / "decisions.jsonl"
    log.write_text(json.dumps({"decision": "deny", "policy_ids": [], "policy_errors": errors,
                               "authz_input": snapshot}) + "\n")
    result = run("replay", "--log", log, "--policies", policy_dir)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 replayed, 0 changed, 0 skipped (no authz_input or not a decision), 1 undetermined" in result.stdout
    assert "payments/pay: deny -> approval_required (as replayed without arguments)" in result.stdout


def test_validate_catches_a_misspelled_argument_behind_has(policy_dir: Path) -> None:
    """Cedar alone accepts a guarded misspelling (always false); validate names it and suggests the argument."""
    assert run("validate", SHIPPED).returncode == 0
    (policy_dir / "cap.cedar").write_text('@id("cap")\nforbid (principal, action == Action::"call_tool", resource)\n'
                                          'when { context.args has amount && context.args.amount > 5 };')
    ok = run("validate", policy_dir)
    assert ok.returncode == 0 and "OK (14 policies" in ok.stdout, ok.stderr
    (policy_dir / "cap.cedar").write_text('@id("cap")\nforbid (principal, action == Action::"call_tool", resource)\n'
                                          'when { context.args has amout && context.args.amout > 5 };')
    bad = run("validate", policy_dir)
    assert bad.returncode == 1
    assert (f"{policy_dir / 'cap.cedar'}:1: policy 'cap': argument 'amout' read on context.args is not in the "
            "schema's Args record; did you mean 'amount'?") in bad.stderr


def test_prompts_and_resources_are_explained_and_tested_with_their_own_defaults(tmp_path: Path) -> None:
    """The gateway decides an unlabelled prompt or resource as read-only, not destructive and closed-world
    (docs/policies.md); `explain` and `test` used a tool's MCP defaults for them, so `reads-allowed` showed
    a deny for a prompt the gateway allows. Labels still override the defaults."""
    claims = '{"sub": "a", "tenant": "acme"}'
    for action, item in (("get_prompt", "inventory/restock"), ("read_resource", "inventory/inventory://skus")):
        ok = run("explain", "--policies", SHIPPED, "--principal-claims", claims, "--tool", item, "--action", action)
        assert ok.returncode == 0 and json.loads(ok.stdout)["outcome"] == "allow", (action, ok.stdout, ok.stderr)
        labelled = run("explain", "--policies", SHIPPED, "--principal-claims", claims, "--tool", item,
                       "--action", action, "--annotations", '{"read_only": false}')
        assert json.loads(labelled.stdout)["outcome"] == "deny", action
    as_tool = run("explain", "--policies", SHIPPED, "--principal-claims", claims, "--tool", "inventory/restock")
    assert json.loads(as_tool.stdout)["outcome"] == "approval_required"  # a tool keeps the MCP defaults (a write)
    cases = tmp_path / "items.yaml"
    cases.write_text("principals: {a: {id: a, attributes: {tenant: acme}}}\n"
                     "tools: {inventory/secret: {read_only: false}}\ncases:\n"
                     "  - {name: prompt, principal: a, action: get_prompt, tool: inventory/restock, expect: allow}\n"
                     "  - {name: resource, principal: a, action: read_resource, tool: 'inventory/inventory://skus',"
                     " expect: allow}\n"
                     "  - {name: labelled, principal: a, action: get_prompt, tool: inventory/secret, expect: deny}\n"
                     "  - {name: tool, principal: a, tool: inventory/restock, expect: approval_required}\n")
    result = run("test", cases, "--policies", SHIPPED)
    assert result.returncode == 0, result.stdout + result.stderr


def test_replay_prints_control_characters_in_names_as_escapes(policy_dir: Path, tmp_path: Path) -> None:
    """Tool names come from upstreams' lists and principal ids from tokens; replay printed them as they were,
    so `pay\\x1b[2K\\rread_docs` could rewrite the line a security engineer reads (as 83f075d fixed for the
    approvals and tools CLIs)."""
    from dataclasses import replace
    reader = agent("spiffe://customs.demo/agent/reader")
    sneaky = agent("user:eve\x1b[2K\rspiffe://customs.demo/agent/reader")
    tool = replace(TOOLS["inventory/get_stock"], name="get_stock\x1b[2K\rread_docs")
    lines = [json.dumps({"decision": "allow", "policy_ids": ["reads-allowed"],
                         "authz_input": authz_input(who, "call_tool", tool, call(who, "inventory/get_stock"), "dev",
                                                    include_args=True)}) for who in (reader, sneaky)]
    log = tmp_path / "decisions.jsonl"
    log.write_text("\n".join(lines) + "\n")
    (policy_dir / "freeze.cedar").write_text('@id("freeze")\nforbid (principal, action, resource)\n'
                                             'when { resource in Server::"inventory" };')
    changed = run_process("replay", "--log", log, "--policies", policy_dir)
    assert changed.returncode == 1 and "2 changed" in changed.stdout
    assert "\x1b" not in changed.stdout and "\r" not in changed.stdout
    assert "call_tool inventory/get_stock\\x1b[2K\\rread_docs: allow -> deny" in changed.stdout
    assert "user:eve\\x1b[2K\\rspiffe://" in changed.stdout
