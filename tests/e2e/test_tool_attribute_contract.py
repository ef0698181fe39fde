"""The pinned `Tool` attributes (../shared/interfaces.md, Cedar contract: `read_only`, `destructive`, `idempotent`,
`open_world`, `sensitivity`), each read by a policy through a real gateway: from the upstream's MCP annotations, the
MCP defaults when it gives none, and the `upstreams[].tools` overrides of config (docs/policies.md, Resource)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest
from mcp.server.mcpserver import MCPServer
from mcp_types import ToolAnnotations

from tests.support.contract import Agent, reason, write_policies
from tests.support.servers import run_http_server
from tests.support.tokens import TestIssuer

AGENT = "spiffe://acme.test/agent/attrs"


def annotated_server() -> MCPServer[Any]:
    server: MCPServer[Any] = MCPServer("attrs")

    @server.tool()
    def plain() -> str:  # no annotations: readOnlyHint false, destructiveHint true, idempotentHint false,
        return "plain"   # openWorldHint true (the MCP defaults)

    @server.tool(annotations=ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True,
                                             open_world_hint=False))
    def careful() -> str:
        return "careful"

    @server.tool()
    def relabelled() -> str:  # no annotations; config gives it the opposite of every default
        return "relabelled"

    return server


LABELS = {"relabelled": {"read_only": True, "destructive": False, "idempotent": True, "open_world": False,
                         "sensitivity": "confidential"}}


@pytest.mark.parametrize(("condition", "allowed"), [
    ("resource.read_only", {"careful", "relabelled"}),
    ("!resource.destructive", {"careful", "relabelled"}),
    ("resource.idempotent", {"careful", "relabelled"}),
    ("!resource.open_world", {"careful", "relabelled"}),
    ("!resource.read_only && resource.destructive && !resource.idempotent && resource.open_world", {"plain"}),
    ('resource.sensitivity == "internal"', {"plain", "careful"}),  # the default label
    ('resource.sensitivity == "confidential"', {"relabelled"}),
])
async def test_each_tool_attribute_decides_as_annotated_or_labelled(start_gateway: Any, tmp_path: Path,
                                                                    condition: str, allowed: set[str]) -> None:
    issuer = TestIssuer(tmp_path)
    policy = ('@id("by-attribute")\npermit (principal, action == Action::"call_tool", resource in Server::"attrs")\n'
              f"when {{ {condition} }};\n")
    async with run_http_server(annotated_server()) as url, aiohttp.ClientSession() as http:
        gw = await start_gateway({"upstreams": [{"name": "attrs", "url": url, "tools": LABELS}],
                                  "identity": {"mode": "jwt", "issuers": [issuer.config()]},
                                  "policies": {"dir": str(write_policies(tmp_path / "p", policy))}})
        agent = await Agent(http, gw.mcp, issuer.mint(AGENT, aud=gw.mcp, tenant="acme")).open()
        answered = {}
        for tool in ("plain", "careful", "relabelled"):
            status, body, _ = await agent.call(f"attrs__{tool}", {})
            assert status == 200, body
            answered[tool] = "result" if "result" in body else reason(body)
    assert answered == {tool: "result" if tool in allowed else "unknown_tool" for tool in answered}, condition
