"""Opening an upstream session on a request's behalf is traced and propagated like any upstream request (issue 6).

The gateway opens its session with an HTTP upstream when a request first needs it: `initialize`, then
`notifications/initialized` (and, for a legacy SSE upstream, the stream's GET first). Those requests go inside
a CLIENT span `initialize` under the request's span and carry its W3C context, as headers and in
`params._meta`, so an upstream that traces sees its session's set-up in the agent's trace. The context is the
set-up's alone: a session re-opened later (the upstream forgot it) carries none of the first request's trace,
and with tracing off nothing is added.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from mcp.shared.exceptions import MCPError

from gateway.demo.servers import inventory_server
from tests.conftest import RunningGateway
from tests.support.mcp_client import sdk_client
from tests.support.otlp import OtlpReceiver, ReceivedSpan
from tests.support.servers import SeenRequest, run_aiohttp, run_sse_server

AGENT_TRACE, AGENT_SPAN = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
AGENT_PARENT = f"00-{AGENT_TRACE}-{AGENT_SPAN}-01"
ANON = {"mode": "anonymous", "anonymous_attributes": {"tenant": "acme"}}

StartGateway = Callable[[dict[str, Any]], Awaitable[RunningGateway]]


def traceparent(span: ReceivedSpan) -> str:
    return f"00-{span.trace_id}-{span.span_id}-01"


@dataclass
class Seen:
    """One JSON-RPC message a raw upstream received: method, `traceparent` header, `params._meta`."""
    method: str
    header: str | None
    meta: dict[str, Any] | None


@dataclass
class RawUpstream:
    url: str
    seen: list[Seen] = field(default_factory=list)
    forget_sessions: bool = False  # answer the next request of a known session 404 (the upstream restarted)


@asynccontextmanager
async def raw_upstream() -> AsyncIterator[RawUpstream]:
    """A streamable HTTP upstream (plain JSON answers) with one tool `echo`, recording what it receives."""
    sessions = iter(range(1, 1000))
    state = RawUpstream("")

    async def handle(request: web.Request) -> web.StreamResponse:
        message = json.loads(await request.read())
        params = message.get("params") or {}
        state.seen.append(Seen(message["method"], request.headers.get("traceparent"), params.get("_meta")))
        if message["method"] != "initialize" and state.forget_sessions:
            state.forget_sessions = False
            return web.Response(status=404)
        headers = {"Mcp-Session-Id": f"s{next(sessions)}"} if message["method"] == "initialize" else {}
        if "id" not in message:
            return web.Response(status=202)
        if message["method"] == "initialize":
            result: Any = {"protocolVersion": params["protocolVersion"], "capabilities": {"tools": {}},
                           "serverInfo": {"name": "raw", "version": "1"}}
        elif message["method"] == "tools/list":
            result = {"tools": [{"name": "echo", "inputSchema": {"type": "object"},
                                 "annotations": {"readOnlyHint": True}}]}
        else:
            result = {"content": [{"type": "text", "text": "ok"}]}
        return web.json_response({"jsonrpc": "2.0", "id": message["id"], "result": result}, headers=headers)

    app = web.Application()
    app.router.add_post("/mcp", handle)
    app.router.add_get("/mcp", lambda _: web.Response(status=405))  # no GET stream
    app.router.add_delete("/mcp", lambda _: web.Response(status=200))
    async with run_aiohttp(app) as base:
        state.url = f"{base}/mcp"
        yield state


async def test_the_set_up_of_a_session_opened_for_a_call_carries_its_own_client_span(
        otlp: OtlpReceiver, start_gateway: StartGateway, permissive_policies: Path) -> None:
    async with raw_upstream() as upstream:
        gateway = await start_gateway({"upstreams": [{"name": "raw", "url": upstream.url}], "identity": ANON,
                                       "policies": {"dir": str(permissive_policies)},
                                       "telemetry": {"traces": {"endpoint": otlp.url}}})
        async with sdk_client(gateway.mcp) as client:  # aggregated: the first call opens the upstream session
            upstream.seen.clear()
            result = await client.call_tool("raw__echo", {}, meta={"traceparent": AGENT_PARENT})  # type: ignore[arg-type]
            assert not result.is_error
            # The upstream forgets the session (a restart): the call it refused fails (upstream_unavailable), the
            # next one re-opens the session.
            upstream.forget_sessions = True
            first = list(upstream.seen)
            upstream.seen.clear()
            with pytest.raises(MCPError):
                await client.call_tool("raw__echo", {})
            result = await client.call_tool("raw__echo", {})
            assert not result.is_error
        await gateway.gateway.parts.observability.telemetry.flush()

    opening = await otlp.wait_for_span(lambda s: s.kind == "CLIENT" and s.name == "initialize")
    server = await otlp.wait_for_span(lambda s: s.kind == "SERVER" and s.name == "tools/call raw__echo")
    assert (opening.trace_id, opening.parent_span_id) == (AGENT_TRACE, server.span_id)
    assert opening.attributes["customs.upstream"] == "raw" and opening.attributes["mcp.method.name"] == "initialize"
    assert opening.attributes["server.address"] == "127.0.0.1"
    context = traceparent(opening)
    set_up = [s for s in first if s.method in ("initialize", "notifications/initialized")]
    assert [s.method for s in set_up] == ["initialize", "notifications/initialized"]
    for message in set_up:  # header (HTTP) and _meta (every transport) alike
        assert message.header == context and message.meta == {"traceparent": context}, message
    calls = [s for s in first if s.method == "tools/call"]  # the call itself: its own CLIENT span's context
    assert len(calls) == 1 and calls[0].header != context and str(calls[0].header).startswith(f"00-{AGENT_TRACE}-")
    # The re-open: a fresh initialize carrying none of the first call's set-up context.
    reopened = [s for s in upstream.seen if s.method in ("initialize", "notifications/initialized")]
    assert [s.method for s in reopened] == ["initialize", "notifications/initialized"]
    assert all(s.header != context and s.meta != {"traceparent": context} for s in reopened), reopened


async def test_a_pass_through_sessions_set_up_is_traced_under_the_agents_initialize(
        otlp: OtlpReceiver, start_gateway: StartGateway, permissive_policies: Path) -> None:
    async with raw_upstream() as upstream:
        gateway = await start_gateway({"upstreams": [{"name": "raw", "url": upstream.url}], "identity": ANON,
                                       "policies": {"dir": str(permissive_policies)},
                                       "telemetry": {"traces": {"endpoint": otlp.url}}})
        async with sdk_client(f"{gateway.url}/mcp/raw"):
            pass
        await gateway.gateway.parts.observability.telemetry.flush()

    agent_initialize = await otlp.wait_for_span(lambda s: s.kind == "SERVER" and s.name == "initialize")
    opening = await otlp.wait_for_span(lambda s: s.kind == "CLIENT" and s.name == "initialize")
    assert (opening.trace_id, opening.parent_span_id) == (agent_initialize.trace_id, agent_initialize.span_id)
    set_up = [s for s in upstream.seen if s.method in ("initialize", "notifications/initialized")]
    assert [(s.header, s.meta) for s in set_up] == [(traceparent(opening), {"traceparent": traceparent(opening)})] * 2


async def test_with_tracing_off_the_set_up_carries_no_trace_context(
        start_gateway: StartGateway, permissive_policies: Path) -> None:
    async with raw_upstream() as upstream:
        gateway = await start_gateway({"upstreams": [{"name": "raw", "url": upstream.url}], "identity": ANON,
                                       "policies": {"dir": str(permissive_policies)}})
        async with sdk_client(f"{gateway.url}/mcp/raw") as client:
            result = await client.call_tool("echo", {}, meta={"traceparent": AGENT_PARENT})  # type: ignore[arg-type]
            assert not result.is_error
    set_up = [s for s in upstream.seen if s.method in ("initialize", "notifications/initialized")]
    assert len(set_up) == 2 and all(s.header is None and s.meta is None for s in set_up), set_up


async def test_a_legacy_sse_upstreams_stream_and_set_up_carry_the_trace(
        otlp: OtlpReceiver, start_gateway: StartGateway, permissive_policies: Path) -> None:
    seen: list[SeenRequest] = []
    async with run_sse_server(inventory_server(), requests=seen) as sse_url:
        gateway = await start_gateway({"upstreams": [{"name": "inventory", "url": sse_url, "transport": "sse"}],
                                       "identity": ANON, "policies": {"dir": str(permissive_policies)},
                                       "telemetry": {"traces": {"endpoint": otlp.url}}})
        async with sdk_client(gateway.mcp) as client:
            seen.clear()
            await client.list_tools(meta={"traceparent": AGENT_PARENT})  # type: ignore[arg-type]
        await gateway.gateway.parts.observability.telemetry.flush()

    opening = await otlp.wait_for_span(lambda s: s.kind == "CLIENT" and s.name == "initialize")
    listing = await otlp.wait_for_span(lambda s: s.kind == "CLIENT" and s.name == "tools/list")
    assert opening.trace_id == AGENT_TRACE == listing.trace_id
    assert opening.attributes["customs.upstream"] == "inventory"
    # The stream's GET, then initialize and notifications/initialized POSTed to its endpoint; then the list.
    assert [(r.method, r.headers.get("traceparent")) for r in seen] == [
        ("GET", traceparent(opening)), ("POST", traceparent(opening)), ("POST", traceparent(opening)),
        ("POST", traceparent(listing))]
