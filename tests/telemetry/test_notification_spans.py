"""An agent's notification gets a SERVER span and an `mcp.server.operation.duration` point, as the MCP
conventions ask for every request *or notification* a server receives.

The span is named by the method (`notifications/initialized`; no target), parented on the notification's
`params._meta.traceparent` when it has one, and carries the session; a notification has no id, so no
`jsonrpc.request.id`. Real gateway, real SDK streamable-HTTP upstream, real OTLP receiver.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import mcp_types as types
import pytest
from mcp.server import Server
from mcp.shared.exceptions import MCPError

from gateway.demo.servers import inventory_server
from tests.conftest import RunningGateway
from tests.support.feature_server import feature_server
from tests.support.mcp_client import sdk_client
from tests.support.otlp import OtlpReceiver
from tests.support.servers import run_http_server

StartGateway = Callable[[dict[str, Any]], Awaitable[RunningGateway]]
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


async def test_an_agent_notification_is_a_server_span(otlp: OtlpReceiver, start_gateway: StartGateway,
                                                      permissive_policies: Path) -> None:
    async with run_http_server(inventory_server()) as url:
        gateway = await start_gateway({"upstreams": [{"name": "inventory", "url": url}],
                                       "identity": {"mode": "anonymous"},
                                       "policies": {"dir": str(permissive_policies)},
                                       "telemetry": {"traces": {"endpoint": otlp.url}}})
        headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
        initialize = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
                      "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                                 "clientInfo": {"name": "t", "version": "0"}}}
        async with aiohttp.ClientSession() as http:
            async with http.post(gateway.mcp, json=initialize, headers=headers) as resp:
                assert resp.status == 200
                headers["Mcp-Session-Id"] = session_id = resp.headers["Mcp-Session-Id"]
                headers["MCP-Protocol-Version"] = "2025-11-25"
            initialized = {"jsonrpc": "2.0", "method": "notifications/initialized",
                           "params": {"_meta": {"traceparent": PARENT}}}
            async with http.post(gateway.mcp, json=initialized, headers=headers) as resp:
                assert resp.status == 202
            async with http.get(f"{gateway.url}/metrics") as resp:
                text = await resp.text()
        await gateway.gateway.parts.observability.telemetry.flush()
    span = await otlp.wait_for_span(lambda s: s.name == "notifications/initialized")
    assert span.kind == "SERVER" and span.trace_id == TRACE_ID and span.parent_span_id == "00f067aa0ba902b7"
    assert span.attributes["mcp.method.name"] == "notifications/initialized"
    assert span.attributes["mcp.session.id"] == session_id and "jsonrpc.request.id" not in span.attributes
    assert span.status != "ERROR"
    assert any(line.startswith("mcp_server_operation_duration_seconds_count{")
               and 'mcp_method_name="notifications/initialized"' in line for line in text.splitlines()), text


def roots_server(seen: list[dict[str, Any]], arrived: asyncio.Event) -> Server[Any]:
    """A low-level SDK server with one tool that records the `_meta` each roots/list_changed arrives with."""
    async def list_tools(ctx: Any, params: Any) -> types.ListToolsResult:
        return types.ListToolsResult(tools=[types.Tool(name="noop", input_schema={"type": "object"})])

    async def roots_changed(ctx: Any, params: Any) -> None:
        meta = getattr(params, "meta", None)
        seen.append(dict(meta or {}))
        arrived.set()

    return Server("roots", on_list_tools=list_tools, on_roots_list_changed=roots_changed)


@pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")  # (roots, as 2025-11-25 has it)
async def test_an_agent_notification_passed_on_is_a_client_span(otlp: OtlpReceiver, start_gateway: StartGateway,
                                                                permissive_policies: Path) -> None:
    # The conventions ask the sender of a notification for a CLIENT span: the gateway sends the agent's
    # notification on to the upstream sessions it opened, inside the notification's SERVER span, with the
    # CLIENT span's context in `_meta` (on the old code: no span, and the agent's own traceparent went upstream).
    seen: list[dict[str, Any]] = []
    arrived = asyncio.Event()
    async with run_http_server(roots_server(seen, arrived)) as url:
        gateway = await start_gateway({"upstreams": [{"name": "roots", "url": url}],
                                       "identity": {"mode": "anonymous"},
                                       "policies": {"dir": str(permissive_policies)},
                                       "telemetry": {"traces": {"endpoint": otlp.url}}})
        headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
        initialize = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
                      "params": {"protocolVersion": "2025-11-25", "capabilities": {"roots": {"listChanged": True}},
                                 "clientInfo": {"name": "t", "version": "0"}}}
        async with aiohttp.ClientSession() as http:
            async with http.post(gateway.mcp, json=initialize, headers=headers) as resp:
                headers["Mcp-Session-Id"] = resp.headers["Mcp-Session-Id"]
                headers["MCP-Protocol-Version"] = "2025-11-25"
            async with http.post(gateway.mcp, json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
                                 headers=headers) as resp:  # opens the gateway's session with the upstream
                assert resp.status == 200
            changed = {"jsonrpc": "2.0", "method": "notifications/roots/list_changed",
                       "params": {"_meta": {"traceparent": PARENT}}}
            async with http.post(gateway.mcp, json=changed, headers=headers) as resp:
                assert resp.status == 202
            await asyncio.wait_for(arrived.wait(), 10)
            async with http.get(f"{gateway.url}/metrics") as resp:
                text = await resp.text()
        await gateway.gateway.parts.observability.telemetry.flush()
    server = await otlp.wait_for_span(lambda s: s.kind == "SERVER" and s.name == "notifications/roots/list_changed")
    client = await otlp.wait_for_span(lambda s: s.kind == "CLIENT" and s.name == "notifications/roots/list_changed")
    assert client.trace_id == TRACE_ID and client.parent_span_id == server.span_id
    assert client.attributes["customs.upstream"] == "roots" and "jsonrpc.request.id" not in client.attributes
    assert seen[0]["traceparent"] == f"00-{TRACE_ID}-{client.span_id}-01", seen
    assert any(line.startswith("mcp_client_operation_duration_seconds_count{")
               and 'mcp_method_name="notifications/roots/list_changed"' in line and 'customs_upstream="roots"' in line
               for line in text.splitlines()), text


async def test_the_cancellation_of_a_timed_out_call_is_a_client_span(otlp: OtlpReceiver, start_gateway: StartGateway,
                                                                     permissive_policies: Path) -> None:
    # The gateway is the sender of the notifications/cancelled it sends for a call that timed out: a CLIENT span
    # under the call's own CLIENT span, its context in `_meta`, and a client duration point (on the old code:
    # neither, though the upstream is told to stop in the call's name).
    server, state = feature_server()
    async with run_http_server(server) as url:
        gateway = await start_gateway({"upstreams": [{"name": "feat", "url": url, "timeout_s": 1}],
                                       "identity": {"mode": "anonymous"},
                                       "policies": {"dir": str(permissive_policies)},
                                       "telemetry": {"traces": {"endpoint": otlp.url}}})
        async with sdk_client(gateway.mcp) as client:
            with pytest.raises(MCPError):
                await client.call_tool("feat__hang", {})
        await asyncio.wait_for(state.cancelled.wait(), 10)  # the upstream got it and stopped
        text = gateway.gateway.parts.observability.metrics.prometheus_text().decode()
        await gateway.gateway.parts.observability.telemetry.flush()
    call = await otlp.wait_for_span(lambda s: s.kind == "CLIENT" and s.name == "tools/call hang")
    cancel = await otlp.wait_for_span(lambda s: s.kind == "CLIENT" and s.name == "notifications/cancelled")
    assert cancel.trace_id == call.trace_id and cancel.parent_span_id == call.span_id
    assert cancel.attributes["customs.upstream"] == "feat"
    assert any(line.startswith("mcp_client_operation_duration_seconds_count{")
               and 'mcp_method_name="notifications/cancelled"' in line for line in text.splitlines()), text
