"""A span's status description never carries a secret, also when an upstream's error message quotes one.

An upstream answers its JSON-RPC error with a message the gateway passes to the agent unchanged (transparency,
docs/errors.md), and the SERVER and CLIENT spans are described by that message (the conventions'
JSONRPCError.message). An upstream that quotes what it was sent ("rejected credential <the key>") would put the
static key the gateway holds for it, or a minted token, into every trace backend that receives the spans: the
description goes through the gateway's secret redactor (known secrets, token and key patterns) first.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from mcp.server.mcpserver import MCPServer
from mcp.shared.exceptions import MCPError

from tests.conftest import RunningGateway
from tests.support.mcp_client import sdk_client
from tests.support.otlp import OtlpReceiver
from tests.support.servers import run_http_server

StartGateway = Callable[[dict[str, Any]], Awaitable[RunningGateway]]
STATIC_KEY = "audit-static-key-3f9a7c21"  # no token pattern: only the gateway's knowing it can redact it
JWT = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhZ2VudCJ9.c2lnbmF0dXJlLW9mLXRoZS10b2tlbg"


def traced_config(upstream: dict[str, Any], policies: Path, otlp: OtlpReceiver) -> dict[str, Any]:
    """One upstream, anonymous, allow-all, spans to `otlp`."""
    return {"upstreams": [upstream], "identity": {"mode": "anonymous"}, "policies": {"dir": str(policies)},
            "telemetry": {"traces": {"endpoint": otlp.url}}}


def quoting_server() -> MCPServer[Any]:
    server: MCPServer[Any] = MCPServer("audit")

    @server.tool()
    def pay(x: str) -> str:
        raise MCPError(code=-32001, message=f"rejected key {STATIC_KEY} and Bearer {JWT}")

    return server


async def test_an_upstream_error_quoting_a_secret_is_redacted_on_the_spans(
        otlp: OtlpReceiver, start_gateway: StartGateway, permissive_policies: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUDIT_KEY", STATIC_KEY)
    async with run_http_server(quoting_server()) as url:
        gateway = await start_gateway(traced_config(
            {"name": "audit", "url": url,
             "credentials": {"mode": "static", "value_env": "AUDIT_KEY", "header": "X-Api-Key"}},
            permissive_policies, otlp))
        async with sdk_client(gateway.mcp) as client:
            with pytest.raises(MCPError) as refused:
                await client.call_tool("audit__pay", {"x": "1"})
        await gateway.gateway.parts.observability.telemetry.flush()
    # The agent hears the upstream's answer without the gateway's own key (Redactor.scrub_known: the exact secrets the
    # gateway holds), the rest as it was: a token pattern in an upstream's answer is the upstream's business.
    assert STATIC_KEY not in str(refused.value) and "rejected key [REDACTED]" in str(refused.value)
    assert JWT in str(refused.value)

    server = await otlp.wait_for_span(lambda s: s.kind == "SERVER" and s.name == "tools/call audit__pay")
    client = await otlp.wait_for(lambda r: next(
        (s for s in r.children(server) if s.kind == "CLIENT" and s.name == "tools/call pay"), None))
    for span in (server, client):
        assert span.status == "ERROR" and span.attributes["error.type"] == "-32001", span
        assert span.status_message == "rejected key [REDACTED] and Bearer [REDACTED]", span.status_message
    for span in otlp.spans:
        assert STATIC_KEY not in repr(span) and JWT not in repr(span), span


def document_server() -> MCPServer[Any]:
    server: MCPServer[Any] = MCPServer("docs")

    @server.resource("doc://{ref}")
    def doc(ref: str) -> str:
        return f"document {len(ref)}"

    return server


async def test_a_resource_uri_with_a_token_is_redacted_on_the_client_span_too(
        otlp: OtlpReceiver, start_gateway: StartGateway, permissive_policies: Path) -> None:
    # Without traces.capture_args: the URI is no argument value, it is always recorded, and always redacted.
    token = "ghp_" + "a1B2" * 9
    async with run_http_server(document_server()) as url:
        gateway = await start_gateway(traced_config({"name": "docs", "url": url}, permissive_policies, otlp))
        async with sdk_client(gateway.mcp) as client:
            await client.read_resource(f"customs://docs/doc://{token}")
        await gateway.gateway.parts.observability.telemetry.flush()
    server = await otlp.wait_for_span(lambda s: s.kind == "SERVER" and s.name == "resources/read")
    client = await otlp.wait_for(lambda r: next(
        (s for s in r.children(server) if s.kind == "CLIENT" and s.name == "resources/read"), None))
    assert server.attributes["mcp.resource.uri"] == "customs://docs/doc://[REDACTED]"
    assert client.attributes["mcp.resource.uri"] == "doc://[REDACTED]"
    for span in otlp.spans:
        assert token not in repr(span), span


async def test_a_token_sent_as_a_tool_name_is_redacted_on_the_span(
        otlp: OtlpReceiver, start_gateway: StartGateway, permissive_policies: Path) -> None:
    token = "ghp_" + "c3D4" * 9
    async with run_http_server(quoting_server()) as url:
        gateway = await start_gateway(traced_config({"name": "audit", "url": url}, permissive_policies, otlp))
        async with sdk_client(gateway.mcp) as client:
            with pytest.raises(MCPError, match="Unknown tool"):
                await client.call_tool(token, {})
            with pytest.raises(MCPError, match="Unknown tool"):
                await client.call_tool("audit__nosuch", {})
        await gateway.gateway.parts.observability.telemetry.flush()
    probes = [s for s in await otlp.wait_for(lambda r: [s for s in r.spans if s.attributes.get("customs.not_found")]
                                             if len([s for s in r.spans if s.attributes.get("customs.not_found")]) == 2
                                             else None)]
    assert sorted(s.attributes["gen_ai.tool.name"] for s in probes) == ["[REDACTED]", "audit__nosuch"]
    assert {s.name for s in probes} == {"tools/call"}
    for span in otlp.spans:
        assert token not in repr(span), span


async def test_every_span_the_gateway_marks_redacts_with_its_known_secrets(otlp: OtlpReceiver) -> None:
    """A span ended by an exception leaving its block (SERVER, CLIENT, a stage's) or recorded after the fact with
    an error: the description goes through the gateway's redactor, so a secret only the gateway knows (a static
    key, no token pattern) is caught there too, not only the call paths that passed it before."""
    from gateway.config.model import TelemetryConfig
    from gateway.errors import GatewayError
    from gateway.telemetry.tracing import Telemetry

    def leak(where: str) -> GatewayError:  # a message an upstream's answer or a transport error could carry
        return GatewayError("upstream_error", f"{where} saw {STATIC_KEY}")

    telemetry = Telemetry(TelemetryConfig.model_validate({"traces": {"endpoint": otlp.url}}), env={})
    telemetry.redact = lambda value: value.replace(STATIC_KEY, "[REDACTED]") if isinstance(value, str) else value
    await telemetry.start()
    try:
        with pytest.raises(GatewayError), telemetry.server_span("tools/call", "leaky"):
            with pytest.raises(GatewayError), telemetry.stage_span("customs.credential"):
                raise leak("stage")
            with pytest.raises(GatewayError), telemetry.client_span("tools/call", "leaky"):
                raise leak("client")
            telemetry.record_span("customs.identify", 1, 2, {"k": "v"}, error=leak("identify"))
            raise leak("server")
        assert await telemetry.flush()
    finally:
        await telemetry.close()
    for name in ("tools/call leaky", "customs.credential", "customs.identify"):
        spans = [await otlp.wait_for_span(lambda s, n=name, k=kind: s.name == n and s.kind == k)
                 for kind in (("SERVER", "CLIENT") if name == "tools/call leaky" else ("INTERNAL",))]
        for span in spans:
            assert STATIC_KEY not in span.status_message and "[REDACTED]" in span.status_message, (name, span)
