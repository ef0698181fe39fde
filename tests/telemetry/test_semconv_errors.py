"""Failed MCP operations as the OpenTelemetry MCP conventions record them (docs/gen-ai/mcp.md), end to end.

A real gateway, a real SDK upstream and client, a real OTLP receiver and the real `/metrics`:

- span status is ERROR whenever `error.type` is set, a tool result with `isError: true` (`tool_error`) too;
- the status description is the JSON-RPC error's message, the upstream's own when it answered with one;
- `rpc.response.status_code` on a CLIENT span is the code the upstream answered, never one the gateway
  made up for a request the upstream did not answer (timeout);
- `mcp.server.operation.duration` / `mcp.client.operation.duration` carry `error.type` for every failure
  (`tool_error` included), `rpc.response.status_code` when the answer had an error code, and
  `gen_ai.operation.name=execute_tool` for tools/call.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from mcp import Client
from mcp.client.sse import sse_client
from mcp.server.mcpserver import MCPServer
from mcp.shared.exceptions import MCPError

from tests.conftest import RunningGateway, in_process_gateways, write_permissive_policies
from tests.support.mcp_client import sdk_client
from tests.support.otlp import OtlpReceiver, ReceivedSpan
from tests.support.servers import run_http_server

StartGateway = Callable[[dict[str, Any]], Awaitable[RunningGateway]]


def failing_server(release: asyncio.Event) -> MCPServer[Any]:
    server: MCPServer[Any] = MCPServer("audit")

    @server.tool()
    def reject(x: str) -> str:
        raise MCPError(code=-32602, message="no such account")  # a JSON-RPC error answer

    @server.tool()
    def boom(x: str) -> str:
        raise RuntimeError("ledger down")  # the SDK answers a result with isError: true

    @server.tool()
    async def slow(x: str) -> str:
        await release.wait()  # outlives the upstream's timeout_s
        return x

    return server


@dataclass
class Run:
    otlp: OtlpReceiver
    prometheus: str

    async def pair(self, tool: str) -> tuple[ReceivedSpan, ReceivedSpan]:
        """(SERVER span, its CLIENT child) of the call to `audit__<tool>`."""
        server = await self.otlp.wait_for_span(lambda s: s.kind == "SERVER" and s.name == f"tools/call audit__{tool}")
        client = await self.otlp.wait_for(lambda r: next(
            (s for s in r.children(server) if s.kind == "CLIENT" and s.name == f"tools/call {tool}"), None))
        return server, client

    def series(self, metric: str, tool: str) -> str:
        found = [line for line in self.prometheus.splitlines()
                 if line.startswith(f"{metric}_count{{") and f'gen_ai_tool_name="{tool}"' in line]
        assert len(found) == 1, (tool, found)
        return found[0]


# The failed calls are made once for the module (a gateway, an upstream, a receiver: seconds on a loaded machine): the
# tests that take `run` only read what they left (spans, /metrics), so they run in the fixture's event loop.
IN_RUN_LOOP = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def run(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Run]:
    release = asyncio.Event()
    policies = write_permissive_policies(tmp_path_factory.mktemp("semconv"))
    async with (OtlpReceiver() as otlp, in_process_gateways() as start_gateway,
                run_http_server(failing_server(release)) as url):
        gateway = await start_gateway({
            # Only `slow` must time out: the others answer at once, but a loaded CI runner can take over 0.3 s.
            "upstreams": [{"name": "audit", "url": url, "timeout_s": 30, "tools": {"slow": {"timeout_s": 0.3}}}],
            "identity": {"mode": "anonymous"},
            "policies": {"dir": str(policies)},
            "telemetry": {"traces": {"endpoint": otlp.url}},
        })
        async with sdk_client(gateway.mcp) as client:
            with pytest.raises(MCPError, match="no such account"):
                await client.call_tool("audit__reject", {"x": "1"})
            assert (await client.call_tool("audit__boom", {"x": "1"})).is_error
            with pytest.raises(MCPError, match="timed out"):
                await client.call_tool("audit__slow", {"x": "1"})
            with pytest.raises(MCPError, match="Unknown tool"):
                await client.call_tool("audit__missing", {"x": "1"})
        release.set()
        async with aiohttp.ClientSession() as http, http.get(f"{gateway.url}/metrics") as resp:
            prometheus = await resp.text()
        await gateway.gateway.parts.observability.telemetry.flush()
        yield Run(otlp, prometheus)


@IN_RUN_LOOP
async def test_an_upstream_json_rpc_error_is_described_by_its_message(run: Run) -> None:
    server, client = await run.pair("reject")
    for span in (server, client):
        assert span.status == "ERROR" and span.status_message == "no such account", span
        assert span.attributes["error.type"] == "-32602" and span.attributes["rpc.response.status_code"] == "-32602"


@IN_RUN_LOOP
async def test_a_tool_error_result_sets_the_error_status(run: Run) -> None:
    server, client = await run.pair("boom")
    for span in (server, client):
        assert span.attributes["error.type"] == "tool_error" and span.status == "ERROR", span
        assert "rpc.response.status_code" not in span.attributes  # the JSON-RPC answer was a result


@IN_RUN_LOOP
async def test_a_timeout_has_no_upstream_status_code_on_the_client_span(run: Run) -> None:
    server, client = await run.pair("slow")
    assert client.attributes["error.type"] == "upstream_timeout" and client.status == "ERROR"
    assert "rpc.response.status_code" not in client.attributes  # the upstream never answered
    # The agent was answered with the gateway's error: its code is on the SERVER span.
    assert server.attributes["error.type"] == "upstream_timeout" and server.attributes["rpc.response.status_code"]


NO_CODE = "!rpc_response_status_code=\"-"  # absent, or the empty value Prometheus gives a missing label


@IN_RUN_LOOP
@pytest.mark.parametrize(("tool", "server_labels", "client_labels"), [
    ("reject", ['error_type="-32602"', 'rpc_response_status_code="-32602"'],
     ['error_type="-32602"', 'rpc_response_status_code="-32602"']),
    ("boom", ['error_type="tool_error"', NO_CODE], ['error_type="tool_error"', NO_CODE]),
    ("slow", ['error_type="upstream_timeout"', 'rpc_response_status_code="-32041"'],
     ['error_type="upstream_timeout"', NO_CODE]),
])
async def test_operation_durations_carry_the_failure(run: Run, tool: str, server_labels: list[str],
                                                     client_labels: list[str]) -> None:
    server = run.series("mcp_server_operation_duration_seconds", f"audit__{tool}")
    client = run.series("mcp_client_operation_duration_seconds", tool)
    for line, labels in ((server, server_labels), (client, client_labels)):
        for label in [*labels, 'gen_ai_operation_name="execute_tool"', 'mcp_method_name="tools/call"']:
            if label.startswith("!"):
                assert label[1:] not in line, (label, line)
            else:
                assert label in line, (label, line)


@IN_RUN_LOOP
async def test_a_refused_call_counts_its_reason_and_code(run: Run) -> None:
    # A name no upstream lists is no metric value (test_metric_cardinality.py): the point has no tool name.
    assert not [line for line in run.prometheus.splitlines() if "audit__missing" in line]
    found = [line for line in run.prometheus.splitlines()
             if line.startswith("mcp_server_operation_duration_seconds_count{") and 'gen_ai_tool_name=""' in line
             and 'mcp_method_name="tools/call"' in line]
    assert len(found) == 1, found
    assert 'error_type="unknown_tool"' in found[0] and 'rpc_response_status_code="-32602"' in found[0], found


async def test_a_tool_error_over_legacy_sse_with_tracing_off_is_counted_as_one(
        start_gateway: StartGateway, permissive_policies: Path) -> None:
    async with run_http_server(failing_server(asyncio.Event())) as url:
        gateway = await start_gateway({
            "upstreams": [{"name": "audit", "url": url}],
            "identity": {"mode": "anonymous"},
            "policies": {"dir": str(permissive_policies)},
        })
        async with Client(sse_client(f"{gateway.url}/sse"), mode="legacy") as client:
            assert (await client.call_tool("audit__boom", {"x": "1"})).is_error
        async with aiohttp.ClientSession() as http, http.get(f"{gateway.url}/metrics") as resp:
            prometheus = await resp.text()
    line = Run(OtlpReceiver(), prometheus).series("mcp_server_operation_duration_seconds", "audit__boom")
    assert 'error_type="tool_error"' in line and 'gen_ai_operation_name="execute_tool"' in line, line
