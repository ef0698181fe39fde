"""An upstream that echoes the key the gateway gave it never hands that key to the agent.

A static credential (or a token exchange's client secret) is the gateway's, never the agent's: an upstream that
quotes its request in a result or an error (a misconfigured tool, a debug message) would otherwise give the agent
the key. The gateway takes the exact secrets it holds out of every upstream answer (not the token patterns: a
tool may rightly answer with a token its user asked for). Real gateway, real SDK upstream, real SDK agent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

from gateway.credentials.redaction import Redactor
from tests.support.mcp_client import sdk_client
from tests.support.servers import run_http_server

KEY = "sk-static-Qw3rTy-9f8e7d6c"
GITHUB_LIKE = "ghp_" + "Ab12" * 9  # a token a tool may rightly return: not the gateway's, so kept


def echoing_server() -> MCPServer[Any]:
    server: MCPServer[Any] = MCPServer("echoing")

    @server.tool()
    def whoami() -> dict[str, Any]:
        """Says which key it was called with (as a badly written tool might)."""
        return {"called_with": f"Bearer {KEY}", "headers": {KEY: "as a key"}, "issued": GITHUB_LIKE}

    @server.tool()
    def broken() -> str:
        """Fails, quoting its key."""
        raise ToolError(f"upstream refused key {KEY}")  # (a ToolError's message reaches the client as written)

    return server


async def test_the_gateways_key_is_taken_out_of_results_and_errors(
        start_gateway: Any, permissive_policies: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ECHO_KEY", KEY)
    async with run_http_server(echoing_server()) as url:
        gw = await start_gateway({
            "upstreams": [{"name": "echo", "url": url,
                           "credentials": {"mode": "static", "value_env": "ECHO_KEY", "value_prefix": "Bearer "}}],
            "identity": {"mode": "anonymous"}, "policies": {"dir": str(permissive_policies)}})
        async with sdk_client(gw.mcp) as client:
            result = await client.call_tool("echo__whoami", {})
            failed = await client.call_tool("echo__broken", {})
    text = str(result.model_dump())
    assert KEY not in text and "Bearer [REDACTED]" in text and GITHUB_LIKE in text, text
    assert result.structured_content == {"called_with": "Bearer [REDACTED]", "headers": {"[REDACTED]": "as a key"},
                                         "issued": GITHUB_LIKE}
    assert failed.is_error and KEY not in str(failed.model_dump()) and "[REDACTED]" in str(failed.model_dump())


def test_nothing_is_copied_when_no_secret_appears() -> None:
    redactor = Redactor(known_secrets=['quo"ted\\key-123'])
    answer = {"result": {"content": [{"type": "text", "text": "fine"}]}}
    assert redactor.scrub_known(answer) is answer
    assert Redactor().scrub_known(answer) is answer  # no secret held: not even encoded
    quoted = {"error": {"code": -32000, "message": 'bad quo"ted\\key-123 given'}}
    assert redactor.scrub_known(quoted) == {"error": {"code": -32000, "message": "bad [REDACTED] given"}}
