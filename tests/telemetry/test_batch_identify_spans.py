"""Every request of a JSON-RPC batch (2025-03-26 sessions) gets its `customs.identify` child (issue 6, docs/tracing.md:
"`customs.identify` | every request"), as a single POST's request does.

The batch path (gateway/http/batch.py) opened each request's SERVER span without the POST's identify times
(`start_ns`/`identify_ns`), so those spans had no identify child and started when their task ran, not when the POST
arrived. Real gateway, real SDK upstream, raw HTTP agent, the in-test OTLP receiver.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from tests.conftest import RunningGateway
from tests.support.feature_server import feature_server
from tests.support.otlp import OtlpReceiver
from tests.support.servers import run_http_server

StartGateway = Callable[[dict[str, Any]], Awaitable[RunningGateway]]
HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


def trace_of(i: int) -> str:
    return f"{i:x}".rjust(32, "c")


async def test_each_request_of_a_batch_has_its_identify_child(
        otlp: OtlpReceiver, start_gateway: StartGateway, permissive_policies: Path) -> None:
    server, _ = feature_server()
    async with run_http_server(server) as url:
        gateway = await start_gateway({
            "upstreams": [{"name": "f", "url": url}], "identity": {"mode": "anonymous"},
            "policies": {"dir": str(permissive_policies)}, "telemetry": {"traces": {"endpoint": otlp.url}}})
        async with aiohttp.ClientSession() as http:
            init = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
                "protocolVersion": "2025-03-26", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}}
            async with http.post(gateway.mcp, json=init, headers=HEADERS) as resp:
                session = {**HEADERS, "Mcp-Session-Id": resp.headers["Mcp-Session-Id"]}
            async with http.post(gateway.mcp, json={"jsonrpc": "2.0", "method": "notifications/initialized"},
                                 headers=session) as resp:
                assert resp.status == 202
            batch = [{"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": {
                "name": "f__echo", "arguments": {"value": str(i)},
                "_meta": {"traceparent": f"00-{trace_of(i)}-{'b' * 16}-01"}}} for i in (1, 2)]
            async with http.post(gateway.mcp, json=batch, headers=session) as resp:
                assert resp.status == 200, await resp.text()
                await resp.read()
        await gateway.gateway.parts.observability.telemetry.flush()
    for i in (1, 2):
        span = await otlp.wait_for_span(lambda s, i=i: s.trace_id == trace_of(i) and s.kind == "SERVER")
        await otlp.wait_for(lambda r, span=span: {"customs.authorize", "tools/call echo"}
                            <= {s.name for s in r.children(span)})
        children = {s.name for s in otlp.children(span)}
        assert "customs.identify" in children, (span.name, children)
