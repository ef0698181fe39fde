"""W3C Trace Context on HTTP: two `traceparent` header fields are an invalid traceparent (a new trace, as the W3C
test suite's test_traceparent_duplicated expects), and several `tracestate` fields are one list, combined in order
(RFC 9110 5.3; test_tracestate_multiple_headers_different_keys). The gateway read only the first field of each."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from multidict import CIMultiDict

from gateway.demo.servers import inventory_server
from tests.conftest import RunningGateway
from tests.support.otlp import OtlpReceiver, ReceivedSpan
from tests.support.servers import run_http_server

StartGateway = Callable[[dict[str, Any]], Awaitable[RunningGateway]]
TRACE_A, SPAN_A = "8bf92f3577b34da6a3ce929d0e0e4736", "40f067aa0ba902b7"
TRACE_B, SPAN_B = "1af7651916cd43dd8448eb211c80319c", "c7ad6b7169203331"
INITIALIZE = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}
ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


async def test_duplicate_traceparent_fields_start_a_new_trace_and_tracestate_fields_combine(
        otlp: OtlpReceiver, start_gateway: StartGateway, permissive_policies: Path) -> None:
    async with run_http_server(inventory_server()) as url:
        gateway = await start_gateway({
            "upstreams": [{"name": "inventory", "url": url}],
            "identity": {"mode": "anonymous", "anonymous_attributes": {"tenant": "acme"}},
            "policies": {"dir": str(permissive_policies)},
            "telemetry": {"traces": {"endpoint": otlp.url}},
        })
        async with aiohttp.ClientSession(headers=ACCEPT) as http:
            for request_id, headers in (("dup", [("traceparent", f"00-{TRACE_A}-{SPAN_A}-01"),
                                                 ("traceparent", f"00-{TRACE_B}-{SPAN_B}-01")]),
                                        ("state", [("traceparent", f"00-{TRACE_B}-{SPAN_B}-01"),
                                                   ("tracestate", "foo=1"), ("tracestate", "bar=2")])):
                async with http.post(gateway.mcp, headers=CIMultiDict(headers), json={
                        "jsonrpc": "2.0", "id": request_id, "method": "initialize", "params": INITIALIZE}) as response:
                    assert response.status == 200, await response.text()
        await gateway.gateway.parts.observability.telemetry.flush()
    def answered(request_id: str) -> Callable[[ReceivedSpan], bool]:
        return lambda s: s.kind == "SERVER" and s.attributes.get("jsonrpc.request.id") == request_id

    dup, state = await otlp.wait_for_span(answered("dup")), await otlp.wait_for_span(answered("state"))
    assert dup.parent_span_id is None and dup.trace_id not in (TRACE_A, TRACE_B)
    assert (state.trace_id, state.parent_span_id, state.trace_state) == (TRACE_B, SPAN_B, "foo=1,bar=2")
