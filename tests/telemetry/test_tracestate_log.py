"""An agent's malformed `tracestate` is dropped without a word in the gateway's log (issue 6, propagation).

The W3C trace-state parser of the OpenTelemetry API warns about a member it refuses and quotes it. A `tracestate`
is the caller's text: in `params._meta` it is a JSON string, so it can hold line breaks, and a warning quoting it
wrote lines of the agent's choosing into the gateway's log (a forged record), up to 8 KB a request. A malformed
`tracestate` is ignored as a malformed `traceparent` is (docs/tracing.md, "Context propagation"), silently.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from gateway.demo.servers import inventory_server
from tests.conftest import GatewayProcess
from tests.support.mcp_client import sdk_client
from tests.support.otlp import OtlpReceiver
from tests.support.servers import run_http_server

Spawn = Callable[..., Awaitable[GatewayProcess]]

AGENT_TRACE, AGENT_SPAN = "6bf92f3577b34da6a3ce929d0e0e4736", "20f067aa0ba902b7"
FORGED = "2026-01-01 00:00:00,000 CRITICAL customs: FORGED-BY-THE-AGENT"


async def test_a_malformed_tracestate_is_ignored_and_never_quoted_in_the_log(
        otlp: OtlpReceiver, spawn_gateway: Spawn, permissive_policies: Path) -> None:
    async with run_http_server(inventory_server()) as url:
        gateway = await spawn_gateway({
            "upstreams": [{"name": "inventory", "url": url}],
            "identity": {"mode": "anonymous", "anonymous_attributes": {"tenant": "acme"}},
            "policies": {"dir": str(permissive_policies)},
            "telemetry": {"traces": {"endpoint": otlp.url}},
        })
        headers = {"traceparent": f"00-{AGENT_TRACE}-{AGENT_SPAN}-01", "tracestate": "HEADER-MEMBER-" + "!" * 300}
        async with sdk_client(gateway.mcp, headers=headers) as client:
            result = await client.call_tool("inventory__get_stock", {"sku": "widget"}, meta={  # type: ignore[arg-type]
                "traceparent": f"00-{AGENT_TRACE}-{AGENT_SPAN}-01", "tracestate": f"ok=1,bad\n{FORGED},x=2"})
            assert not result.is_error
        server = await otlp.wait_for_span(lambda s: s.kind == "SERVER" and s.name == "tools/call inventory__get_stock",
                                          within=30)
    # The traceparent beside it still parents the call; the trace state it came with is dropped, not repaired.
    assert (server.trace_id, server.parent_span_id, server.trace_state) == (AGENT_TRACE, AGENT_SPAN, "")
    log = gateway.log()
    assert "FORGED-BY-THE-AGENT" not in log and "HEADER-MEMBER" not in log, log
