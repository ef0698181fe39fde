"""`customs policy schema -o policies/schema.cedarschema` writes over the schema the gateway loads: a text that does
not parse as a Cedar schema (the generated per-tool type also declared outside the markers, a second pair of
markers around another `Args`) was written all the same, exit 0, and the next start or reload refused the policies.
It is refused now, exit 2, naming the problem, and nothing is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.cli import customs_main

TOOLS = {"payments": {"tools": [{"name": "pay", "inputSchema": {"type": "object",
                                                                "properties": {"amount": {"type": "number"}}}}]}}
SECOND_PAIR = ('\n// BEGIN GENERATED ARGS\ntype Args = { "x"?: Long };\n// END GENERATED ARGS\n'
               '// BEGIN GENERATED ARGS\ntype Args = { "y"?: Long };\n// END GENERATED ARGS\n')


@pytest.fixture
def tools_json(tmp_path: Path) -> Path:
    path = tmp_path / "tools.json"
    path.write_text(json.dumps(TOOLS))
    return path


@pytest.mark.parametrize("extra", ['\ntype payments_pay_args = { "note"?: String };\n', SECOND_PAIR],
                         ids=["per-tool-type-declared-twice", "two-pairs-of-markers"])
@pytest.mark.parametrize("output", [True, False], ids=["-o", "stdout"])
def test_a_schema_that_would_not_parse_is_refused_and_nothing_is_written(
        policy_dir: Path, tools_json: Path, extra: str, output: bool) -> None:
    schema = policy_dir / "schema.cedarschema"
    if extra == SECOND_PAIR:  # the shipped markers become this text's first pair
        text = schema.read_text()
        start, end = text.index("// BEGIN GENERATED ARGS"), text.index("// END GENERATED ARGS")
        schema.write_text(text[:start] + text[end + len("// END GENERATED ARGS"):] + extra)
    else:
        schema.write_text(schema.read_text() + extra)
    before = schema.read_text()
    result = customs_main("policy", "schema", "--tools-json", tools_json, "--policies", policy_dir,
                          *(["-o", schema] if output else []))
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert f"{schema}: " in result.stderr and "would not parse" in result.stderr, result.stderr
    assert result.stdout == "" and schema.read_text() == before


def test_a_schema_that_parses_is_still_written(policy_dir: Path, tools_json: Path) -> None:
    schema = policy_dir / "schema.cedarschema"
    result = customs_main("policy", "schema", "--tools-json", tools_json, "--policies", policy_dir, "-o", schema)
    assert result.returncode == 0, result.stderr
    assert "type payments_pay_args" in schema.read_text()
    assert customs_main("policy", "validate", policy_dir).returncode == 0


def test_writing_a_schema_the_policies_do_not_validate_against_warns(policy_dir: Path, tools_json: Path) -> None:
    """A tool changed (its `amount` is now `sum`): the schema generated from it is right, and a policy reading
    `amount` is now invalid, which is what typed arguments are for. It was written with exit 0 and nothing said,
    while the gateway watching the directory refused the set (keeping its last good one) and the next start failed.
    It is still written (the schema is the tools' truth), and every problem of the policies is named at once."""
    (policy_dir / "limit.cedar").write_text(
        '@id("pay-limit")\nforbid (principal, action == Action::"call_tool", resource == Tool::"payments/pay")\n'
        "when { context.args has amount && context.args.amount > 5000 };\n")
    tools_json.write_text(json.dumps({"payments": {"tools": [{"name": "pay", "inputSchema": {
        "type": "object", "properties": {"sum": {"type": "number"}}}}]}}))
    schema = policy_dir / "schema.cedarschema"
    result = customs_main("policy", "schema", "--tools-json", tools_json, "--policies", policy_dir, "-o", schema)
    assert result.returncode == 0, result.stderr
    assert '"sum"?: Long' in schema.read_text()
    assert (f"warning: the policies in {policy_dir} do not validate against {schema}: fix them before the gateway "
            "loads this schema") in result.stderr, result.stderr
    assert f"  {policy_dir / 'limit.cedar'}:1: policy 'pay-limit': argument 'amount' read on context.args" \
        in result.stderr
    ok = customs_main("policy", "schema", "--tools-json", tools_json, "--policies", policy_dir, "-o",
                      policy_dir.parent / "other.cedarschema")  # written elsewhere: the same check, of that file
    assert "warning: the policies" in ok.stderr
