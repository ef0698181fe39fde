"""OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT / OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT bound every string attribute of an
exported span, as the SDK's SpanLimits do. A name an agent makes up stays on the SERVER span (docs/tracing.md), so
without the bound one request put a ~1 MB attribute (up to listen.max_body_bytes) on a span, and a batch of them
is larger than a collector takes (413): the other calls' spans of that batch were lost with it."""

from __future__ import annotations

import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from mcp.shared.exceptions import MCPError

from gateway.demo.servers import inventory_server
from tests.conftest import GatewayProcess
from tests.support.mcp_client import sdk_client
from tests.support.otlp import OtlpReceiver
from tests.support.servers import run_http_server

Spawn = Callable[..., Awaitable[GatewayProcess]]


@pytest.mark.parametrize("variable", ["OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT", "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT"])
async def test_attribute_value_length_limit_applies_to_exported_spans(
        otlp: OtlpReceiver, spawn_gateway: Spawn, permissive_policies: Path, variable: str) -> None:
    async with run_http_server(inventory_server()) as url:
        gateway = await spawn_gateway({
            "upstreams": [{"name": "inventory", "url": url}],
            "identity": {"mode": "anonymous", "anonymous_attributes": {"tenant": "acme"}},
            "policies": {"dir": str(permissive_policies)},
            "telemetry": {"traces": {"endpoint": otlp.url}},
        }, env={variable: "64"})
        async with sdk_client(gateway.mcp) as client:
            with pytest.raises(MCPError, match="Unknown tool"):
                await client.call_tool("inventory__" + "x" * 100_000, {})
        span = await otlp.wait_for_span(lambda s: s.kind == "SERVER" and s.name == "tools/call", within=30)
        gateway.proc.send_signal(signal.SIGTERM)
    assert span.attributes["gen_ai.tool.name"] == ("inventory__" + "x" * 100_000)[:64]
    assert all(len(v) <= 64 for v in span.attributes.values() if isinstance(v, str)), span.attributes.keys()


def test_value_length_limit_variables_and_precedence(caplog: pytest.LogCaptureFixture) -> None:
    from gateway.telemetry.settings import value_length_limit
    assert value_length_limit({}) is None
    assert value_length_limit({"OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT": "10"}) == 10
    assert value_length_limit({"OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT": "5",
                               "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT": "10"}) == 5
    assert value_length_limit({"OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT": "-1"}) is None
    assert "not a whole number" in caplog.text


def test_clipped_cuts_strings_alone_and_in_sequences_and_link_attributes() -> None:
    from gateway.telemetry.spans import clipped
    context = (1, 2, False, 1, ())
    span = ("n", 1, context, None, 0, 1, {"a": "abcdef", "b": 7, "c": ("xyz123", 3), "d": ["long!", "ok"]},
            [(context, {"l": "linkvalue"})], (0, None))
    out = clipped(span, 3)  # type: ignore[arg-type]
    assert out[6] == {"a": "abc", "b": 7, "c": ("xyz", 3), "d": ["lon", "ok"]}
    assert out[7] == [(context, {"l": "lin"})]
