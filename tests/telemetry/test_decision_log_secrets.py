"""Names an agent sends are redacted in the decision log as they are on spans: a token in a resource URI, or a
token sent as a tool name that does not exist, is `[REDACTED]` in the record (`tool` and the replay snapshot)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from mcp.shared.exceptions import MCPError

from tests.conftest import REPO, RunningGateway
from tests.support.mcp_client import sdk_client
from tests.support.servers import run_http_server
from tests.telemetry.test_span_status_secrets import document_server

StartGateway = Callable[[dict[str, Any]], Awaitable[RunningGateway]]
URI_TOKEN = "ghp_" + "a1B2" * 9
NAME_TOKEN = "ghp_" + "c3D4" * 9


def docs_config(url: str, policies: Path, log: Path) -> dict[str, Any]:
    """One upstream `docs` at `url`, anonymous agents, `policies`, the decision log written to `log`."""
    return {"upstreams": [{"name": "docs", "url": url}], "identity": {"mode": "anonymous"},
            "policies": {"dir": str(policies)}, "decision_log": {"path": str(log)}}


async def test_tokens_in_names_an_agent_sends_are_redacted_in_the_decision_log(
        start_gateway: StartGateway, permissive_policies: Path, tmp_path: Path) -> None:
    log = tmp_path / "decisions.jsonl"
    async with run_http_server(document_server()) as url:
        gateway = await start_gateway(docs_config(url, permissive_policies, log))
        async with sdk_client(gateway.mcp) as client:
            await client.read_resource(f"customs://docs/doc://{URI_TOKEN}")
            with pytest.raises(MCPError, match="Unknown tool"):
                await client.call_tool(NAME_TOKEN, {})
        await gateway.gateway.parts.observability.log.close()
    text = log.read_text()
    assert URI_TOKEN not in text and NAME_TOKEN not in text, text
    records = {r["method"]: r for r in map(json.loads, text.splitlines()) if r["type"] == "decision"}
    read = records["resources/read"]
    assert read["tool"] == "doc://[REDACTED]" and read["outcome"] == "ok"
    assert read["authz_input"]["tool"]["name"] == "doc://[REDACTED]"
    probe = records["tools/call"]
    assert (probe["tool"], probe["not_found"], probe["reason"]) == ("[REDACTED]", True, "unknown_tool")


async def test_a_token_sent_as_a_prompt_name_the_upstream_refuses_is_redacted(
        start_gateway: StartGateway, permissive_policies: Path, tmp_path: Path) -> None:
    """A prompt the upstream lists (so not `not_found`) and refuses (a required argument missing: an upstream
    JSON-RPC error): the SERVER span names a failed prompt only through the redactor, and so must the record
    (it was written as sent, on /mcp/{upstream} and on /mcp alike)."""
    log = tmp_path / "decisions.jsonl"
    server = document_server()

    def refused(topic: str) -> str:
        return topic

    server.prompt(name=NAME_TOKEN)(refused)
    async with run_http_server(server) as url:
        gateway = await start_gateway(docs_config(url, permissive_policies, log))
        for endpoint, name in ((f"{gateway.mcp}/docs", NAME_TOKEN), (gateway.mcp, f"docs__{NAME_TOKEN}")):
            async with sdk_client(endpoint) as client:
                with pytest.raises(MCPError):
                    await client.get_prompt(name, {})
        await gateway.gateway.parts.observability.log.close()
    text = log.read_text()
    assert NAME_TOKEN not in text, text
    records = [r for r in map(json.loads, text.splitlines()) if r["type"] == "decision"]
    assert [(r["method"], r["tool"], r["outcome"]) for r in records] == [("prompts/get", "[REDACTED]", "error")] * 2
    assert all(r["authz_input"]["tool"]["name"] == "[REDACTED]" for r in records), records


async def test_a_token_sent_as_a_tool_name_denied_before_the_tools_are_known_is_redacted(
        start_gateway: StartGateway, tmp_path: Path) -> None:
    """A policy that denies whatever the tool could be decides before the gateway asks the upstream for its tools,
    so the name is not found to be made up (no `not_found`), yet it is the agent's choice all the same."""
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "schema.cedarschema").write_text((REPO / "policies" / "schema.cedarschema").read_text())
    (policies / "deny.cedar").write_text('@id("docs-closed")\nforbid (principal, action, resource in Server::"docs");\n'
                                         '@id("rest")\npermit (principal, action, resource);\n')
    log = tmp_path / "decisions.jsonl"
    async with run_http_server(document_server()) as url:
        gateway = await start_gateway(docs_config(url, policies, log))
        async with sdk_client(f"{gateway.mcp}/docs") as client:
            with pytest.raises(MCPError):
                await client.call_tool(NAME_TOKEN, {})
        await gateway.gateway.parts.observability.log.close()
    text = log.read_text()
    assert NAME_TOKEN not in text, text
    (record,) = [r for r in map(json.loads, text.splitlines()) if r["type"] == "decision"]
    assert (record["tool"], record["decision"], record["policy_ids"]) == ("[REDACTED]", "deny", ["docs-closed"])
    assert "not_found" not in record and record["authz_input"]["tool"]["name"] == "[REDACTED]"
