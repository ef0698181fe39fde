"""Names an agent makes up never become metric attribute values or span names.

A tool, prompt or method name no upstream's catalog has is the caller's choice: as a metric attribute it
would make one series per invented name (an agent could grow every instrument to its cardinality limit),
as a span name one operation per name in a trace backend. The MCP conventions ask for a low-cardinality
target in span names ("If there is no low-cardinality target available, the Span name SHOULD be
`{mcp.method.name}`"); so the gateway keeps real names (listed tools, prompts an upstream answered,
methods MCP defines) and leaves the others out: no `gen_ai.tool.name`/`gen_ai.prompt.name` on the metric
point, `mcp.method.name="_OTHER"` there for a method MCP does not define, and a span named by its method
only (`_OTHER` for such a method). The span keeps the name the agent sent in its attributes: one trace is
one request, and a probe for names is worth seeing there. Real gateway, SDK servers and client, OTLP receiver.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from mcp.server.mcpserver import MCPServer
from mcp.shared.exceptions import MCPError

from tests.conftest import RunningGateway
from tests.support.mcp_client import sdk_client
from tests.support.otlp import OtlpReceiver
from tests.support.servers import run_http_server

StartGateway = Callable[[dict[str, Any]], Awaitable[RunningGateway]]
HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
# Policies: everything but the tools of `locked` (decided before its tool list is known: no upstream request).
POLICY = ('@id("allow")\npermit(principal, action, resource);\n'
          '@id("locked")\nforbid(principal, action == Action::"call_tool", resource in Server::"locked");\n')


def mem_server() -> MCPServer:
    server = MCPServer("mem")

    @server.tool()
    def echo(value: str) -> str:
        """Return the value."""
        return value

    @server.prompt()
    def greet(name: str) -> str:
        return f"Hello {name}"

    @server.resource("mem://note/{key}")
    def note(key: str) -> str:
        return f"note {key}"

    return server


async def _gateway(start_gateway: StartGateway, permissive_policies: Path, url: str,
                   otlp: OtlpReceiver) -> RunningGateway:
    (permissive_policies / "allow.cedar").write_text(POLICY)
    return await start_gateway({"upstreams": [{"name": "mem", "url": url}, {"name": "locked", "url": url}],
                                "identity": {"mode": "anonymous"}, "policies": {"dir": str(permissive_policies)},
                                "telemetry": {"traces": {"endpoint": otlp.url}}})


async def _raw(http: aiohttp.ClientSession, url: str, headers: dict[str, str], body: dict[str, Any]) -> int:
    async with http.post(url, json=body, headers=headers) as resp:
        await resp.read()
        return resp.status


async def _made_up_methods(url: str) -> None:
    """A request and a notification whose methods MCP does not define, and a call of a tool never listed."""
    headers = dict(HEADERS)
    initialize = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
                  "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t",
                                                                                             "version": "0"}}}
    async with aiohttp.ClientSession() as http:
        async with http.post(url, json=initialize, headers=headers) as resp:
            headers["Mcp-Session-Id"] = resp.headers["Mcp-Session-Id"]
            headers["MCP-Protocol-Version"] = "2025-11-25"
        assert await _raw(http, url, headers, {"jsonrpc": "2.0", "id": 2, "method": "madeup/method-1"}) == 200
        assert await _raw(http, url, headers, {"jsonrpc": "2.0", "method": "notifications/madeup-2"}) == 202
        # Before any tool list is known: denied whatever the tool could be, so its name is never checked.
        call = {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "locked__madeup_d"}}
        assert await _raw(http, url, headers, call) == 200


async def test_made_up_names_are_no_metric_values_or_span_names(otlp: OtlpReceiver, start_gateway: StartGateway,
                                                               permissive_policies: Path) -> None:
    async with run_http_server(mem_server()) as url:
        gateway = await _gateway(start_gateway, permissive_policies, url, otlp)
        await _made_up_methods(gateway.mcp)
        async with sdk_client(gateway.mcp) as client:
            assert not (await client.call_tool("mem__echo", {"value": "x"})).is_error  # a real tool
            for name in ("mem__madeup_a", "nowhere__madeup_b", "locked__madeup_c"):
                with pytest.raises(MCPError, match="Unknown tool"):
                    await client.call_tool(name, {})
            with pytest.raises(MCPError, match="Unknown prompt"):  # mem lists no such prompt
                await client.get_prompt("mem__madeup_p", {})
        async with sdk_client(f"{gateway.mcp}/mem") as client:
            await client.read_resource("mem://note/madeup-r")
        text = gateway.gateway.parts.observability.metrics.prometheus_text().decode()
        await gateway.gateway.parts.observability.telemetry.flush()
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    # (on the old code: gen_ai_tool_name="mem__madeup_a" in mcp_server_operation_duration, "madeup_c" in
    # customs_calls, gen_ai_prompt_name="madeup_p" in both operation durations, the resource URI as
    # gen_ai_tool_name in customs_calls, mcp_method_name="madeup/method-1" ...)
    assert [line.split(",otel_scope")[0] for line in lines if "madeup" in line] == []
    assert any('gen_ai_tool_name="mem__echo"' in line for line in lines
               if line.startswith("mcp_server_operation_duration_seconds_count"))
    assert any('gen_ai_tool_name="echo"' in line for line in lines if line.startswith("customs_calls_total"))
    assert any('mcp_method_name="_OTHER"' in line for line in lines
               if line.startswith("mcp_server_operation_duration_seconds_count"))
    span = await otlp.wait_for_span(lambda s: s.kind == "SERVER" and
                                    s.attributes.get("gen_ai.tool.name") == "mem__madeup_a")
    assert span.name == "tools/call"
    real = await otlp.wait_for_span(lambda s: s.kind == "SERVER" and
                                    s.attributes.get("gen_ai.tool.name") == "mem__echo")
    assert real.name == "tools/call mem__echo"
    prompt = await otlp.wait_for_span(lambda s: s.kind == "SERVER" and s.attributes.get("mcp.method.name") ==
                                      "prompts/get")
    assert prompt.name == "prompts/get"
    other = await otlp.wait_for_span(lambda s: s.kind == "SERVER" and s.attributes.get("mcp.method.name") ==
                                     "madeup/method-1")
    assert other.name == "_OTHER"
    notification = await otlp.wait_for_span(lambda s: s.attributes.get("mcp.method.name") ==
                                            "notifications/madeup-2")
    assert notification.name == "_OTHER"
