"""`customs config check` and `customs policy ...` on files they cannot use: a message and exit 2, no traceback.

Run by the CLI's main() in this process (an exception would fail the test as it escapes); the commands as
child processes are tested in test_authz_cli.py and tests/core/test_config.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from authz_helpers import SHIPPED

from tests.support.cli import customs, customs_main

NOT_UTF8 = b"\xff\xfe\x00 not text"


@pytest.fixture
def binary(tmp_path: Path) -> Path:
    path = tmp_path / "binary.yaml"
    path.write_bytes(NOT_UTF8)
    return path


@pytest.mark.parametrize("argv", [
    ("config", "check", "{f}"),
    ("policy", "test", "{f}"),
    ("policy", "replay", "--log", "{f}", "--policies", str(SHIPPED)),
    ("policy", "explain", "--policies", str(SHIPPED), "--principal-claims", "@{f}", "--tool", "a/b"),
    ("policy", "schema", "--tools-json", "{f}", "--policies", str(SHIPPED)),
])
def test_a_file_that_is_not_utf8_is_named_not_a_traceback(binary: Path, argv: tuple[str, ...]) -> None:
    result = customs_main(*(a.format(f=binary) for a in argv))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert f"{binary.name}" in result.stderr and "not UTF-8" in result.stderr


def test_schema_output_into_a_directory_is_an_error(tmp_path: Path) -> None:
    tools = tmp_path / "tools.json"
    tools.write_text("{}")
    result = customs_main("policy", "schema", "--tools-json", tools, "--policies", SHIPPED, "--output", tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"--output: cannot write {tmp_path}" in result.stderr


def test_schema_refuses_a_base_that_declares_args_outside_the_markers(tmp_path: Path) -> None:
    """A hand-written schema with its own `type Args` and no BEGIN/END markers got a second `Args` appended:
    exit 0, and with `-o` onto itself the schema was replaced by one that no longer parses."""
    tools = tmp_path / "tools.json"
    tools.write_text(json.dumps({"shop": [{"name": "buy", "inputSchema": {"properties": {"n": {"type": "integer"}}}}]}))
    policies = tmp_path / "policies"
    policies.mkdir()
    shipped = (SHIPPED / "schema.cedarschema").read_text()
    for base in (shipped.replace("// BEGIN GENERATED ARGS\n", "").replace("// END GENERATED ARGS\n", ""),
                 shipped.replace("// END GENERATED ARGS\n", "")):
        (policies / "schema.cedarschema").write_text(base)
        result = customs_main("policy", "schema", "--tools-json", tools, "--policies", policies,
                              "-o", policies / "schema.cedarschema")
        assert result.returncode == 2, result.stdout
        assert "declares `type Args` outside" in result.stderr or "END GENERATED ARGS" in result.stderr, result.stderr
        assert (policies / "schema.cedarschema").read_text() == base  # left as it was
    # A schema without an Args of its own still gets the block appended.
    (policies / "schema.cedarschema").write_text("entity A;\n")
    result = customs_main("policy", "schema", "--tools-json", tools, "--policies", policies)
    assert result.returncode == 0 and '"n"?: Long' in result.stdout, result.stderr


def test_bad_case_yaml_names_line_and_an_empty_directory_names_itself(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("cases: [\n")
    result = customs_main("policy", "test", bad)
    assert result.returncode == 2 and "line 2, column 1: invalid YAML" in result.stderr
    assert "<unicode string>" not in result.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    result = customs_main("policy", "test", empty)
    assert result.returncode == 2 and f"no cases found in {empty}" in result.stderr


# Each: a value of the wrong shape where the format wants a mapping (or a list); it must be named, not crash.
CASE = "{name: c, principal: {sub: a, tenant: acme}, tool: a/b, expect: deny"
MALFORMED_CASE_FILES = {
    "case labels a list": f"cases: [{CASE}, labels: [1]}}]",
    "case args a list": f"cases: [{CASE}, args: [1]}}]",
    "case args a number": f"cases: [{CASE}, args: 5}}]",
    "case policies a number": f"cases: [{CASE}, policies: 5}}]",
    "file tools a list": f"tools: [1]\ncases: [{CASE}}}]",
    "file tool labels a list": f"tools: {{a/b: [1]}}\ncases: [{CASE}}}]",
    "file principals a list": f"principals: [1]\ncases: [{CASE}}}]",
    "approve groups a number": "cases: [{name: c, action: approve, user: {id: u, groups: 5}, expect: deny}]",
    "approve approval a list": "cases: [{name: c, action: approve, user: {id: u}, approval: [1], expect: deny}]",
}


@pytest.mark.parametrize("body", MALFORMED_CASE_FILES.values(), ids=MALFORMED_CASE_FILES.keys())
def test_a_case_file_with_a_value_of_the_wrong_shape_is_named_not_a_traceback(tmp_path: Path, body: str) -> None:
    cases = tmp_path / "cases.yaml"
    cases.write_text(f"policies: {SHIPPED}\n{body}\n")
    result = customs_main("policy", "test", cases)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert f"error: {cases}" in result.stderr and "must be" in result.stderr


@pytest.mark.parametrize(("option", "value"), [("--annotations", "[1]"), ("--args", "[1]"), ("--args", "5")])
def test_explain_with_an_option_that_is_not_an_object_names_the_option(option: str, value: str) -> None:
    result = customs_main("policy", "explain", "--policies", SHIPPED, "--principal-claims", '{"sub": "a"}',
                     "--tool", "a/b", option, value)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert f"error: {option}" in result.stderr and "must be" in result.stderr


MALFORMED_TOOLS = {
    "inputSchema a number": [{"name": "x", "inputSchema": 5}],
    "properties a list of names": [{"name": "x", "inputSchema": {"type": "object", "properties": ["q"]}}],
    "properties a string": [{"name": "x", "inputSchema": {"type": "object", "properties": "q"}}],
    "no name": [{"inputSchema": {"type": "object", "properties": {"q": {"type": "string"}}}}],
}


@pytest.mark.parametrize("tools", MALFORMED_TOOLS.values(), ids=MALFORMED_TOOLS.keys())
def test_schema_tools_json_with_a_malformed_tool_names_it(tmp_path: Path, tools: list[object]) -> None:
    path = tmp_path / "tools.json"
    path.write_text(json.dumps({"up": {"tools": tools}}))
    result = customs_main("policy", "schema", "--tools-json", path, "--policies", SHIPPED)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert "error: --tools-json: up: tools[0]" in result.stderr


def test_replay_skips_records_it_cannot_read_instead_of_crashing_or_counting_them(tmp_path: Path) -> None:
    from authz_helpers import TOOLS, agent, call

    from gateway.authz.record import authz_input

    reader = agent("spiffe://customs.demo/agent/reader")
    snapshot = authz_input(reader, "call_tool", TOOLS["inventory/get_stock"],
                           call(reader, "inventory/get_stock"), "dev")
    good = {"decision": "allow", "policy_ids": ["reads-allowed"], "authz_input": snapshot}
    broken = [
        {**good, "policy_ids": 5},                                       # was a TypeError traceback
        {**good, "decision": {"outcome": "allow", "policy_ids": "reads-allowed"}},
        {**good, "decision": [1]},                                       # was counted as changed: [1] -> allow
        {**good, "decision": "maybe"},
        {**good, "authz_input": {**snapshot, "action": 5}},              # was replayed as action "5"
        {**good, "authz_input": {**snapshot, "action": "delete_everything"}},
    ]
    log = tmp_path / "decisions.jsonl"
    log.write_text("\n".join(json.dumps(r) for r in [good, *broken]) + "\n")
    result = customs_main("policy", "replay", "--log", log, "--policies", SHIPPED)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"1 replayed, 0 changed, {len(broken)} skipped (no authz_input or not a decision)" in result.stdout


def test_replay_skips_a_line_that_is_not_utf8_instead_of_refusing_the_whole_log(tmp_path: Path) -> None:
    """One torn line (a write cut inside a multi-byte character, a disk that filled up) made the whole log
    unreadable: exit 2 "cannot read", nothing replayed. It is now one skipped line. And the log was split
    at every Unicode line break, which the writer (orjson) leaves unescaped inside strings: a record holding
    U+2028 or U+0085 (an argument, a principal's attribute) was cut in two and skipped."""
    from authz_helpers import TOOLS, agent, call

    from gateway.authz.record import authz_input

    reader = agent("spiffe://customs.demo/agent/reader")
    snapshot = authz_input(reader, "call_tool", TOOLS["inventory/get_stock"],
                           call(reader, "inventory/get_stock"), "dev")
    good = json.dumps({"decision": "allow", "policy_ids": ["reads-allowed"], "authz_input": snapshot}).encode()
    log = tmp_path / "decisions.jsonl"
    odd = {"decision": "allow", "policy_ids": ["reads-allowed"],
           "authz_input": {**snapshot, "principal": {**snapshot["principal"],
                                                     "attributes": {"tenant": "acme", "owner": "a\u2028b\x85c"}}}}
    log.write_bytes(good + b"\n" + good[:40] + "é".encode()[:1] + b"\n" + good + b"\n"
                    + json.dumps(odd, ensure_ascii=False).encode() + b"\n")
    result = customs_main("policy", "replay", "--log", log, "--policies", SHIPPED)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 replayed, 0 changed, 1 skipped (no authz_input or not a decision)" in result.stdout


def test_cases_outside_a_policy_directory_say_how_to_name_one(tmp_path: Path) -> None:
    """A cases file with neither `policies:` nor --policies is run against its own directory: the error named
    that directory (often `.`) and its missing *.cedar files, not how to point the command at the policies."""
    cases = tmp_path / "cases.yaml"
    cases.write_text("cases:\n  - {name: x, principal: {sub: a, tenant: acme}, tool: inventory/get, expect: deny}\n")
    result = customs_main("policy", "test", cases)
    assert result.returncode == 2 and "no *.cedar policy files" in result.stderr
    assert "--policies DIR" in result.stderr and "`policies:`" in result.stderr, result.stderr
    given = customs_main("policy", "test", cases, "--policies", tmp_path)
    assert given.returncode == 2 and "--policies DIR" not in given.stderr
    # A file that names its policies was told "no --policies given ... name them with `policies:`" all the same.
    cases.write_text("policies: ../nowhere\n" + cases.read_text())
    named = customs_main("policy", "test", cases)
    assert named.returncode == 2 and "no --policies given" not in named.stderr, named.stderr
    assert f"from the file's `policies: ../nowhere`, which is relative to the file's directory {tmp_path}" \
        in named.stderr, named.stderr


def test_explain_refuses_a_multi_valued_contract_claim_as_the_gateway_does() -> None:
    result = customs_main("policy", "explain", "--policies", SHIPPED, "--principal-claims",
                     '{"sub": "a", "tenant": ["acme"]}', "--tool", "inventory/get_stock")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "claim 'tenant' (attribute tenant) must be a single value (a string), got a list" in result.stderr


EXPLAIN = ("policy", "explain", "--policies", str(SHIPPED), "--principal-claims", '{"sub": "a"}', "--tool", "a/b")


@pytest.mark.parametrize(("option", "value"), [
    ("--environment", "prod\udcff"), ("--tool", "a/b\udcff"), ("--action", "call\udcff"),
    ("--principal-claims", '{"sub": "\udcff"}'), ("--args", '{"a": "\udcff"}'), ("--context", '{"x": "\udcff"}'),
    ("--annotations", '{"x": "\udcff"}'),
])
def test_explain_with_an_option_that_is_not_utf8_is_a_usage_error(option: str, value: str) -> None:
    """A shell passes bytes that are not UTF-8 as they are; Python reads them as lone surrogates (`\\udcff`),
    which ended in a traceback once the value reached Cedar's JSON (`str is not valid UTF-8`)."""
    result = customs_main(*EXPLAIN, option, value)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert f"argument {option}: not valid UTF-8" in result.stderr and "\\xff" in result.stderr, result.stderr


def test_explain_given_non_utf8_bytes_by_a_shell_exits_2_with_a_message() -> None:
    """The console script itself, given the raw byte 0xff as a shell would pass it."""
    result = customs(*EXPLAIN, "--environment", os.fsdecode(b"prod\xff"))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "argument --environment: not valid UTF-8: b'prod\\xff'" in result.stderr


@pytest.mark.parametrize("option", ["--principal-claims", "--args", "--context", "--annotations"])
def test_explain_refuses_a_json_escaped_lone_surrogate(option: str) -> None:
    r"""`"\udcff"` written as a JSON escape decodes to the same lone surrogate: named, not a traceback."""
    value = '{"sub": "a", "x": "\\udcff"}' if option == "--principal-claims" else '{"x": "\\udcff"}'
    result = customs_main(*EXPLAIN, option, value)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert f"{option}: " in result.stderr and "surrogate" in result.stderr, result.stderr


def test_a_file_name_that_is_not_utf8_is_still_a_file_name(tmp_path: Path) -> None:
    """Only text options are refused: a path (`@file`, --policies) may be any bytes the file system allows."""
    claims = tmp_path / os.fsdecode(b"claims\xff.json")
    claims.write_text('{"sub": "a"}')
    result = customs_main("policy", "explain", "--policies", SHIPPED, "--principal-claims", f"@{claims}",
                          "--tool", "a/b")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(("body", "where"), [
    ('principal: {sub: "a\\udcff", tenant: acme}', "cases[0].principal.sub"),
    ('principal: {"s\\udcff": x, sub: a}', "cases[0].principal.s\\udcff"),
    ('principal: {sub: a}\n    args: {q: ["\\udcff"]}', "cases[0].args.q[0]"),
])
def test_a_case_file_with_a_lone_surrogate_is_named_not_a_traceback(tmp_path: Path, body: str, where: str) -> None:
    """YAML's `"\\udcff"` escape decodes to a lone surrogate, which Cedar's JSON cannot take (a traceback)."""
    cases = tmp_path / "cases.yaml"
    cases.write_text(f"policies: {SHIPPED}\ncases:\n  - name: x\n    {body}\n    tool: inventory/get_stock\n"
                     "    expect: allow\n")
    result = customs_main("policy", "test", cases)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert f"error: {cases}: {where}: not valid Unicode text" in result.stderr, result.stderr


def test_replay_skips_a_record_holding_a_lone_surrogate(tmp_path: Path) -> None:
    """A `"\\udcff"` escape in a record decodes to a lone surrogate, which Cedar's JSON cannot take: that record
    is skipped like any other it cannot read (it was a traceback ending the whole replay)."""
    from authz_helpers import TOOLS, agent, call

    from gateway.authz.record import authz_input

    reader = agent("spiffe://customs.demo/agent/reader")
    snapshot = authz_input(reader, "call_tool", TOOLS["inventory/get_stock"],
                           call(reader, "inventory/get_stock"), "dev")
    good = json.dumps({"decision": "allow", "policy_ids": ["reads-allowed"], "authz_input": snapshot})
    log = tmp_path / "decisions.jsonl"
    log.write_text(f'{good}\n{good.replace(chr(34) + "dev" + chr(34), chr(34) + "d" + chr(92) + "udcff" + chr(34))}\n')
    assert "udcff" in log.read_text()
    result = customs_main("policy", "replay", "--log", log, "--policies", SHIPPED)
    assert "Traceback" not in result.stderr and result.returncode == 0, result.stdout + result.stderr
    assert "1 replayed, 0 changed, 1 skipped" in result.stdout


@pytest.mark.parametrize(("annotations", "problem"), [
    ('{"read_only": "yes"}', "label read_only must be true or false"),
    ('{"readonly": true}', "unknown tool label(s) ['readonly']"),
    ('{"sensitivity": "secret"}', "label sensitivity must be one of"),
])
def test_explain_names_annotations_for_a_bad_label(annotations: str, problem: str) -> None:
    """A bad label given with --annotations was reported as `--tool: label read_only ...`, sending the person to the
    option that was right."""
    result = customs_main("policy", "explain", "--policies", SHIPPED, "--principal-claims", '{"sub": "a"}',
                          "--tool", "inventory/get_stock", "--annotations", annotations)
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: --annotations: {problem}"), result.stderr


def test_invalid_json_in_a_file_names_the_file(tmp_path: Path) -> None:
    """`--principal-claims @claims.json` with a JSON error named only the option, its line and column in no named
    file; `--tools-json FILE` likewise."""
    claims = tmp_path / "claims.json"
    claims.write_text('{\n  "sub": "a",\n  "tenant": acme\n}\n')
    done = customs_main("policy", "explain", "--policies", SHIPPED, "--principal-claims", f"@{claims}",
                        "--tool", "inventory/get_stock")
    assert done.returncode == 2
    assert f"error: --principal-claims: {claims}: invalid JSON: Expecting value: line 3 column 13" in done.stderr
    tools = tmp_path / "tools.json"
    tools.write_text('{"inventory": }')
    done = customs_main("policy", "schema", "--tools-json", tools, "--policies", SHIPPED)
    assert done.returncode == 2
    assert f"error: --tools-json: {tools}: invalid JSON: Expecting value: line 1 column 15" in done.stderr
