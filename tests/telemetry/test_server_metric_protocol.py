"""`mcp.server.operation.duration` carries the conventions' recommended `mcp.protocol.version` and `network.*`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from mcp import Client
from mcp.client.sse import sse_client
from mcp.server.mcpserver import MCPServer

from tests.conftest import RunningGateway
from tests.support.mcp_client import sdk_client
from tests.support.servers import run_http_server

StartGateway = Callable[[dict[str, Any]], Awaitable[RunningGateway]]


def tool_server() -> MCPServer:
    server = MCPServer("tools")

    @server.tool()
    def echo(text: str) -> str:
        return text

    return server


def labels(line: str) -> dict[str, str]:
    inner = line[line.index("{") + 1:line.rindex("}")]
    return dict((k, v.strip('"')) for k, v in (pair.split("=", 1) for pair in inner.split('",') if "=" in pair))


@pytest.mark.parametrize("mode", ["legacy", "auto"])  # initialize's session, and stateless 2026-07-28
async def test_server_durations_name_protocol_and_connection(start_gateway: StartGateway, permissive_policies: Path,
                                                             mode: str) -> None:
    async with run_http_server(tool_server()) as url:
        gateway = await start_gateway({
            "upstreams": [{"name": "mem", "url": url}],
            "identity": {"mode": "anonymous"},
            "policies": {"dir": str(permissive_policies)},
        })
        async with sdk_client(gateway.mcp, mode=mode) as client:
            negotiated = client.protocol_version
            result = await client.call_tool("mem__echo", {"text": "hi"})
        assert "hi" in str(result.content[0])
        async with aiohttp.ClientSession() as http, http.get(gateway.url + "/metrics") as response:
            text = await response.text()
    calls = [labels(line) for line in text.splitlines()
             if line.startswith("mcp_server_operation_duration_seconds_count") and "tools/call" in line]
    assert len(calls) == 1, calls
    call = calls[0]
    assert call["network_transport"] == "tcp" and call["network_protocol_name"] == "http", call
    assert call["network_protocol_version"] == "1.1", call
    assert call["mcp_protocol_version"] == negotiated, (call, negotiated)
    assert call["gen_ai_tool_name"] == "mem__echo" and call["mcp_method_name"] == "tools/call", call
    if mode == "legacy":  # the initialize that made the session names the version it negotiated, as its span does
        (initialize,) = [labels(line) for line in text.splitlines()
                         if line.startswith("mcp_server_operation_duration_seconds_count") and '"initialize"' in line]
        assert initialize["mcp_protocol_version"] == negotiated, (initialize, negotiated)



async def test_a_legacy_sse_notification_names_protocol_and_connection(start_gateway: StartGateway,
                                                                       permissive_policies: Path) -> None:
    # An agent's notification POSTed to legacy /messages is timed as on /mcp: with the session's protocol and the
    # connection's network.* (it was recorded without them, the HTTP request not handed to the metric).
    async with run_http_server(tool_server()) as url:
        gateway = await start_gateway({"upstreams": [{"name": "mem", "url": url}], "identity": {"mode": "anonymous"},
                                       "policies": {"dir": str(permissive_policies)}})
        async with Client(sse_client(f"{gateway.url}/sse"), mode="legacy") as client:
            assert "hi" in str((await client.call_tool("mem__echo", {"text": "hi"})).content[0])
            negotiated = client.protocol_version
        async with aiohttp.ClientSession() as http, http.get(gateway.url + "/metrics") as response:
            text = await response.text()
    noted = [labels(line) for line in text.splitlines()
             if line.startswith("mcp_server_operation_duration_seconds_count") and "notifications/initialized" in line]
    assert len(noted) == 1, noted
    assert negotiated and noted[0].get("mcp_protocol_version") == negotiated, (noted, negotiated)
    assert noted[0].get("network_transport") == "tcp" and noted[0].get("network_protocol_version") == "1.1", noted
