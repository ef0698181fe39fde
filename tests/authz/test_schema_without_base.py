"""`customs policy schema` for a policy directory that has no schema yet (a security engineer's first run): it printed,
or with `-o` wrote, the generated `Args` block alone, a schema without the contract's entity types and actions, so
no policy written from the pinned names (`Action::"call_tool"`, `Agent`, `Tool`, ...) validated against it. The
shipped schema is the base now, so the first policy validates and decides."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.cli import customs, customs_main

TOOLS = {"inventory": {"tools": [{"name": "get_stock", "inputSchema": {
    "type": "object", "properties": {"sku": {"type": "string"}}}}]}}
POLICY = """@id("no-gizmo")
forbid (principal, action == Action::"call_tool", resource == Tool::"inventory/get_stock")
when { context.args has sku && context.args.sku == "gizmo" };

@id("acme-reads")
permit (principal in Tenant::"acme", action == Action::"call_tool", resource in Server::"inventory")
when { resource.read_only && context.tenant == "acme" };
"""
CASES = """cases:
  - name: a read
    principal: {sub: "spiffe://acme.test/agent/reader", tenant: acme}
    tool: inventory/get_stock
    labels: {read_only: true}
    args: {sku: widget}
    expect: allow
  - name: the forbidden sku
    principal: {sub: "spiffe://acme.test/agent/reader", tenant: acme}
    tool: inventory/get_stock
    labels: {read_only: true}
    args: {sku: gizmo}
    expect: deny
    policies: [no-gizmo]
"""


def test_a_directory_without_a_schema_gets_the_contract_schema_with_the_generated_args(tmp_path: Path) -> None:
    tools = tmp_path / "tools.json"
    tools.write_text(json.dumps(TOOLS))
    policies = tmp_path / "policies"
    policies.mkdir()
    written = customs_main("policy", "schema", "--tools-json", tools, "--policies", policies,
                           "-o", policies / "schema.cedarschema")
    assert written.returncode == 0, written.stderr
    assert "shipped schema" in written.stderr  # says what the base is
    schema = (policies / "schema.cedarschema").read_text()
    assert "entity Agent" in schema and "action call_tool" in schema
    assert '"sku"?: String' in schema and '"amount"' not in schema.split("// END GENERATED ARGS")[0].split(
        "// BEGIN GENERATED ARGS")[1]  # the shipped Args block is replaced by this tool's
    (policies / "mine.cedar").write_text(POLICY)
    assert customs_main("policy", "validate", policies).returncode == 0
    (policies / "tests").mkdir()
    (policies / "tests" / "cases.yaml").write_text(CASES)
    tested = customs_main("policy", "test", policies / "tests")
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_without_policies_in_the_working_directory_stdout_is_a_whole_schema(tmp_path: Path) -> None:
    tools = tmp_path / "tools.json"
    tools.write_text(json.dumps(TOOLS))
    result = customs("policy", "schema", "--tools-json", tools, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "entity Agent" in result.stdout and '"sku"?: String' in result.stdout
