"""A CLIENT span's `mcp.session.id` is the upstream's own session (the MCP conventions' MCP client span).

The gateway's session with a streamable-HTTP upstream has the `Mcp-Session-Id` the upstream gave it; the
CLIENT span of every request sent in that session names it, whether the pipeline forwarded the call or the
router made the request itself (lists). It is never the agent's session with the gateway (the SERVER span's).
Real gateway, real SDK streamable-HTTP upstream, real OTLP receiver.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from gateway.demo.servers import inventory_server
from tests.conftest import RunningGateway
from tests.support.mcp_client import sdk_client
from tests.support.otlp import OtlpReceiver
from tests.support.servers import SeenRequest, run_http_server, stdio_command

StartGateway = Callable[[dict[str, Any]], Awaitable[RunningGateway]]


def _config(url: str, policies: Path, telemetry: dict[str, Any]) -> dict[str, Any]:
    return {"upstreams": [{"name": "inventory", "url": url}], "identity": {"mode": "anonymous"},
            "policies": {"dir": str(policies)}, "telemetry": telemetry}


def _upstream_session_ids(seen: list[SeenRequest]) -> set[str]:
    return {r.headers["mcp-session-id"] for r in seen if "mcp-session-id" in r.headers}


async def test_client_spans_carry_the_upstream_session_id(
        otlp: OtlpReceiver, start_gateway: StartGateway, permissive_policies: Path) -> None:
    seen: list[SeenRequest] = []
    async with run_http_server(inventory_server(), requests=seen) as url:
        gateway = await start_gateway(_config(url, permissive_policies, {"traces": {"endpoint": otlp.url}}))
        async with sdk_client(gateway.mcp) as client:
            await client.list_tools()
            await client.call_tool("inventory__get_stock", {"sku": "A-1"})
        await gateway.gateway.parts.observability.telemetry.flush()
    [upstream_session] = _upstream_session_ids(seen)
    [upstream_version] = {r.headers["mcp-protocol-version"] for r in seen if "mcp-protocol-version" in r.headers}

    call = await otlp.wait_for_span(lambda s: s.kind == "SERVER" and s.name == "tools/call inventory__get_stock")
    agent_session = call.attributes["mcp.session.id"]
    assert agent_session != upstream_session
    # (The session's set-up, where this request opened it, is a CLIENT span `initialize` of its own.)
    [forwarded] = await otlp.wait_for(lambda r: [s for s in r.children(call) if s.kind == "CLIENT"
                                                 and s.name != "initialize"])
    assert forwarded.attributes["mcp.session.id"] == upstream_session
    assert forwarded.attributes["mcp.protocol.version"] == upstream_version  # the upstream's, as negotiated

    # The router's own requests (the tools/list fanned out upstream) name the upstream's session too.
    listing = await otlp.wait_for_span(lambda s: s.kind == "SERVER" and s.name == "tools/list")
    [listed] = await otlp.wait_for(lambda r: [s for s in r.children(listing) if s.kind == "CLIENT"
                                              and s.name != "initialize"])
    assert listed.attributes["mcp.session.id"] == upstream_session
    assert listed.attributes["mcp.protocol.version"] == upstream_version


async def test_a_stdio_childs_client_spans_have_a_version_and_no_session_id(
        otlp: OtlpReceiver, start_gateway: StartGateway, permissive_policies: Path) -> None:
    gateway = await start_gateway({"upstreams": [{"name": "inventory", "command": stdio_command("inventory")}],
                                   "identity": {"mode": "anonymous"}, "policies": {"dir": str(permissive_policies)},
                                   "telemetry": {"traces": {"endpoint": otlp.url}}})
    async with sdk_client(gateway.mcp) as client:
        await client.call_tool("inventory__get_stock", {"sku": "A-1"})
    await gateway.gateway.parts.observability.telemetry.flush()
    call = await otlp.wait_for_span(lambda s: s.kind == "SERVER" and s.name == "tools/call inventory__get_stock")
    [forwarded] = await otlp.wait_for(lambda r: [s for s in r.children(call) if s.name == "tools/call get_stock"])
    # A pipe carries no session id (the conventions' stdio example shows one, but nothing on the wire names it).
    assert "mcp.session.id" not in forwarded.attributes and forwarded.attributes["network.transport"] == "pipe"
    assert forwarded.attributes["mcp.protocol.version"] == \
        gateway.gateway.parts.upstreams["inventory"].initialize_result["protocolVersion"]
