"""`/mcp` offers completions whatever its upstreams do (docs/transports.md): an upstream with no completion support
answers a completion there with no values, not with its own "method not found" for a capability the agent was told
exists. `/mcp/{upstream}` passes that upstream's capabilities and its answer through unchanged."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
from mcp.server.mcpserver import MCPServer

from tests.support.contract import Agent
from tests.support.servers import run_http_server


def prompts_only_server() -> MCPServer[Any]:
    server: MCPServer[Any] = MCPServer("notes")

    @server.prompt()
    def summary(topic: str) -> str:
        """Summarise a topic."""
        return f"Summarise {topic}"

    return server


async def test_completion_of_an_upstream_without_completions(start_gateway: Any, permissive_policies: Path) -> None:
    async with run_http_server(prompts_only_server()) as url, aiohttp.ClientSession() as http:
        gw = await start_gateway({"upstreams": [{"name": "notes", "url": url}], "identity": {"mode": "anonymous"},
                                  "policies": {"dir": str(permissive_policies)}})
        aggregated = await Agent(http, gw.mcp, None).open()
        await aggregated.send({"jsonrpc": "2.0", "id": 1, "method": "prompts/list"})
        status, body, _ = await aggregated.send({"jsonrpc": "2.0", "id": 2, "method": "completion/complete", "params": {
            "ref": {"type": "ref/prompt", "name": "notes__summary"}, "argument": {"name": "topic", "value": "a"}}})
        assert status == 200 and body.get("result") == {"completion": {"values": [], "hasMore": False}}, body
        passthrough = await Agent(http, f"{gw.mcp}/notes", None).open()
        status, body, _ = await passthrough.send({
            "jsonrpc": "2.0", "id": 3, "method": "completion/complete",
            "params": {"ref": {"type": "ref/prompt", "name": "summary"}, "argument": {"name": "topic", "value": "a"}}})
        assert body.get("error", {}).get("code") == -32601, body
