"""A `customs serve` process configured only by the standard OTEL_* variables exports both signals (issue 6).

No `telemetry:` section: OTEL_EXPORTER_OTLP_ENDPOINT points traces and metrics at one collector,
OTEL_SERVICE_NAME names the service and OTEL_RESOURCE_ATTRIBUTES adds to the resource. Nothing is flushed by
the test: the SIGTERM drain must export the spans and the last metric collection (the default export interval
is a minute).
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

from gateway.demo.servers import inventory_server
from tests.conftest import GatewayProcess
from tests.support.mcp_client import sdk_client
from tests.support.otlp import OtlpReceiver
from tests.support.servers import run_http_server

Spawn = Callable[..., Awaitable[GatewayProcess]]


async def test_the_standard_variables_alone_export_traces_and_metrics(
        otlp: OtlpReceiver, spawn_gateway: Spawn, permissive_policies: Path) -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": otlp.url, "OTEL_SERVICE_NAME": "customs-env",
           "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=ci,service.name=ignored"}
    async with run_http_server(inventory_server()) as url:
        gateway = await spawn_gateway({
            "upstreams": [{"name": "inventory", "url": url}],
            "identity": {"mode": "anonymous", "anonymous_attributes": {"tenant": "acme"}},
            "policies": {"dir": str(permissive_policies)},
        }, env=env)
        async with sdk_client(gateway.mcp) as client:
            result = await client.call_tool("inventory__get_stock", {"sku": "widget"})
        assert not result.is_error
        gateway.proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(gateway.proc.wait, 30) == 0, gateway.log()
    server = await otlp.wait_for_span(lambda s: s.kind == "SERVER" and s.name == "tools/call inventory__get_stock")
    assert server.resource["service.name"] == "customs-env"  # OTEL_SERVICE_NAME wins over the resource variable
    assert server.resource["deployment.environment"] == "ci"
    duration = await otlp.wait_for_point(lambda p: p.metric == "mcp.server.operation.duration"
                                         and p.attributes.get("mcp.method.name") == "tools/call")
    assert duration.kind == "histogram" and duration.count == 1 and duration.unit == "s"
    calls = await otlp.wait_for_point(lambda p: p.metric == "customs.calls")
    assert calls.value == 1 and calls.attributes["customs.upstream"] == "inventory"
    assert calls.attributes["customs.decision"] == "allow" and calls.attributes["gen_ai.tool.name"] == "get_stock"
