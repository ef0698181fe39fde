"""`mcp.client.session.duration`: how long each of the gateway's sessions with an upstream lasted.

The conventions' MCP client metric: one point per upstream session when it ends (the agent's session it
served ended, or the gateway shut down), in seconds with the conventions' buckets, with the upstream's
protocol version, transport and address; a session ended by the gateway has no `error.type`.
Real gateway, real SDK streamable-HTTP upstream, real OTLP receiver.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from mcp.shared.exceptions import MCPError

from gateway.demo.servers import inventory_server
from tests.conftest import RunningGateway
from tests.support.mcp_client import sdk_client
from tests.support.otlp import OtlpReceiver
from tests.support.servers import SeenRequest, run_http_server, run_sse_server, stdio_command

StartGateway = Callable[[dict[str, Any]], Awaitable[RunningGateway]]
METRIC = "mcp_client_session_duration_seconds"


def _config(url: str, policies: Path, telemetry: dict[str, Any]) -> dict[str, Any]:
    return {"upstreams": [{"name": "inventory", "url": url}], "identity": {"mode": "anonymous"},
            "policies": {"dir": str(policies)}, "telemetry": telemetry}


def _upstream_session_ids(seen: list[SeenRequest]) -> set[str]:
    return {r.headers["mcp-session-id"] for r in seen if "mcp-session-id" in r.headers}


async def test_an_ended_upstream_session_is_one_duration_point(start_gateway: StartGateway,
                                                               permissive_policies: Path) -> None:
    seen: list[SeenRequest] = []
    async with run_http_server(inventory_server(), requests=seen) as url:
        gateway = await start_gateway(_config(url, permissive_policies, {}))
        async with sdk_client(gateway.mcp) as client:
            await client.call_tool("inventory__get_stock", {"sku": "A-1"})
        # The SDK client DELETEs its session; the gateway ends it (and its upstream session) before answering.
        async with aiohttp.ClientSession() as http, http.get(f"{gateway.url}/metrics") as resp:
            text = await resp.text()
    assert len(_upstream_session_ids(seen)) == 1
    assert f"# TYPE {METRIC} histogram" in text, "no mcp.client.session.duration histogram"
    counts = [line for line in text.splitlines() if line.startswith(f"{METRIC}_count{{")]
    assert len(counts) == 1 and counts[0].endswith("} 1.0"), counts
    port = url.split(":")[2].split("/")[0]
    for label in ('network_transport="tcp"', 'network_protocol_name="http"', 'network_protocol_version="1.1"',
                  'server_address="127.0.0.1"', f'server_port="{port}"', 'customs_upstream="inventory"'):
        assert label in counts[0], (label, counts[0])
    assert re.search(r'mcp_protocol_version="\d{4}-\d{2}-\d{2}"', counts[0]), counts[0]
    assert "error_type" not in counts[0]
    bounds = re.findall(rf'{METRIC}_bucket{{[^}}]*le="([^"]+)"', text)
    assert [float(b) for b in bounds] == [0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60, 120, 300,
                                          float("inf")], bounds


async def _open_session_and_call(mcp: str) -> None:
    """initialize and one tools/call over plain HTTP, leaving the session open (no DELETE)."""
    headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    initialize = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
                  "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                             "clientInfo": {"name": "t", "version": "0"}}}
    async with aiohttp.ClientSession() as http:
        async with http.post(mcp, json=initialize, headers=headers) as resp:
            assert resp.status == 200, await resp.text()
            headers["Mcp-Session-Id"] = resp.headers["Mcp-Session-Id"]
            headers["MCP-Protocol-Version"] = "2025-11-25"
        async with http.post(mcp, json={"jsonrpc": "2.0", "method": "notifications/initialized"},
                             headers=headers) as resp:
            assert resp.status == 202
        call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                "params": {"name": "inventory__get_stock", "arguments": {"sku": "A-1"}}}
        async with http.post(mcp, json=call, headers=headers) as resp:
            assert resp.status == 200 and "in stock" in await resp.text()


@pytest.mark.parametrize("transport", ["http", "sse", "stdio"])
async def test_upstream_sessions_open_at_shutdown_are_recorded(
        otlp: OtlpReceiver, start_gateway: StartGateway, permissive_policies: Path, transport: str) -> None:
    async with AsyncExitStack() as stack:
        if transport == "stdio":
            upstream: dict[str, Any] = {"name": "inventory", "command": stdio_command("inventory")}
        else:
            serve = run_sse_server if transport == "sse" else run_http_server
            url = await stack.enter_async_context(serve(inventory_server()))
            upstream = {"name": "inventory", "url": url, **({"transport": "sse"} if transport == "sse" else {})}
        gateway = await start_gateway({"upstreams": [upstream], "identity": {"mode": "anonymous"},
                                       "policies": {"dir": str(permissive_policies)},
                                       "telemetry": {"metrics": {"prometheus": False, "otlp_endpoint": otlp.url}}})
        await _open_session_and_call(gateway.mcp)
        # The agent's session is still open: the gateway's shutdown ends it and its upstream session (a stdio
        # child's one session ends with the child), and the metrics' last export, after the upstreams are
        # closed, carries the point.
        await gateway.runner.cleanup()
        point = await otlp.wait_for_point(lambda p: p.metric == "mcp.client.session.duration")
    assert point.kind == "histogram" and point.unit == "s" and point.count == 1
    assert point.attributes["customs.upstream"] == "inventory" and "error.type" not in point.attributes
    assert point.attributes["network.transport"] == ("pipe" if transport == "stdio" else "tcp")
    assert isinstance(point.attributes["mcp.protocol.version"], str)


async def test_a_session_the_upstream_ended_is_recorded_with_its_error(start_gateway: StartGateway,
                                                                       permissive_policies: Path) -> None:
    seen: list[SeenRequest] = []
    async with run_http_server(inventory_server(), requests=seen) as url:
        gateway = await start_gateway(_config(url, permissive_policies, {}))
        async with sdk_client(gateway.mcp) as client:
            await client.call_tool("inventory__get_stock", {"sku": "A-1"})
            [first] = _upstream_session_ids(seen)
            async with aiohttp.ClientSession() as http, \
                    http.delete(url, headers={"Mcp-Session-Id": first, "MCP-Protocol-Version": "2025-11-25"}) as resp:
                assert resp.status == 200  # the upstream ends the gateway's session behind its back
            with pytest.raises(MCPError) as refused:  # the upstream forgot the session: upstream_unavailable
                await client.call_tool("inventory__get_stock", {"sku": "A-1"})
            assert (refused.value.error.data or {}).get("reason") == "upstream_unavailable", refused.value.error
            await client.call_tool("inventory__get_stock", {"sku": "A-1"})  # in a fresh upstream session
        async with aiohttp.ClientSession() as http, http.get(f"{gateway.url}/metrics") as resp:
            text = await resp.text()
    assert len(_upstream_session_ids(seen)) == 2
    counts = [line for line in text.splitlines() if line.startswith(f"{METRIC}_count{{")]
    ended_by_upstream = [c for c in counts if 'error_type="upstream_unavailable"' in c]
    # (Prometheus gives every series of a metric the same labels: an absent error.type reads error_type="".)
    ended_by_gateway = [c for c in counts if 'error_type="upstream_unavailable"' not in c]
    assert len(counts) == 2 and len(ended_by_upstream) == len(ended_by_gateway) == 1, counts
    assert ended_by_upstream[0].endswith("} 1.0") and ended_by_gateway[0].endswith("} 1.0"), counts
