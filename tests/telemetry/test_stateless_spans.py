"""Requests of the stateless 2026-07-28 revision are part of no MCP session: their spans carry no `mcp.session.id`.

The conventions record `mcp.session.id` "when the MCP request or notification is part of a session" (the
`Mcp-Session-Id` of the handshake revisions). The gateway keeps one implicit session per principal and
endpoint for stateless clients (their credential task); its id is the gateway's own, shared by every
stateless client of that principal, so putting it on their spans would group unrelated clients as one session.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from gateway.demo.servers import inventory_server
from tests.conftest import RunningGateway
from tests.support.mcp_client import sdk_client
from tests.support.otlp import OtlpReceiver
from tests.support.servers import run_http_server

StartGateway = Callable[[dict[str, Any]], Awaitable[RunningGateway]]


async def test_stateless_requests_have_no_session_id(otlp: OtlpReceiver, start_gateway: StartGateway,
                                                     permissive_policies: Path) -> None:
    async with run_http_server(inventory_server()) as url:
        gateway = await start_gateway({
            "upstreams": [{"name": "inventory", "url": url}],
            "identity": {"mode": "anonymous"},
            "policies": {"dir": str(permissive_policies)},
            "telemetry": {"traces": {"endpoint": otlp.url}},
        })
        async with sdk_client(gateway.mcp, mode="auto") as client:  # server/discover, then stateless requests
            await client.call_tool("inventory__get_stock", {"sku": "widget"})
        async with sdk_client(gateway.mcp) as client:  # the handshake revisions: a real session
            await client.call_tool("inventory__get_stock", {"sku": "gadget"})
        await gateway.gateway.parts.observability.telemetry.flush()
    calls = await otlp.wait_for(lambda r: found if len(found := [
        s for s in r.spans if s.kind == "SERVER" and s.name == "tools/call inventory__get_stock"]) == 2 else None)
    stateless = [s for s in calls if s.attributes["mcp.protocol.version"] == "2026-07-28"]
    stateful = [s for s in calls if s.attributes["mcp.protocol.version"] != "2026-07-28"]
    assert len(stateless) == 1 and len(stateful) == 1, [s.attributes for s in calls]
    assert "mcp.session.id" not in stateless[0].attributes, stateless[0].attributes
    assert len(stateful[0].attributes["mcp.session.id"]) == 64  # the Mcp-Session-Id the client was given
