"""Protocol version negotiation: the gateway answers `initialize` with the version the agent asked for.

MCP lifecycle: a server that supports the requested version MUST answer with it, else with one it
supports. The gateway is the agent's server on every endpoint, whatever its upstream negotiated: a
stdio child initialized once for every session, an SDK server over streamable HTTP or legacy SSE, an
upstream that only speaks an older revision, and the aggregated /mcp view. The negotiated version is
the session's from then on: later requests carry it in MCP-Protocol-Version and spans record it.
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, KNOWN_PROTOCOL_VERSIONS, LATEST_HANDSHAKE_VERSION

from gateway.demo.servers import inventory_server, payments_server
from tests.support.otlp import OtlpReceiver, ReceivedSpan
from tests.support.servers import run_http_server, run_sse_server

pytestmark = pytest.mark.asyncio

HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
OLDER = "2025-03-26"  # the only revision the scripted `older` upstream speaks
# The agent asks for every revision the gateway knows, and one it does not.
REQUESTED = [*KNOWN_PROTOCOL_VERSIONS, "1999-01-01"]
ENDPOINTS = {"stdio": "/mcp/stock", "streamable_http": "/mcp/payments", "sse": "/mcp/legacy",
             "counter_offer": "/mcp/older", "aggregated": "/mcp"}


def expected(requested: str) -> str:
    # 2026-07-28 has no initialize (it is stateless), so asking for it there gets the latest handshake one.
    return requested if requested in HANDSHAKE_PROTOCOL_VERSIONS else LATEST_HANDSHAKE_VERSION


def initialize(version: str, request_id: Any = 1) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "method": "initialize",
            "params": {"protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}


@dataclass
class OlderUpstream:
    """A Streamable HTTP upstream that answers every initialize with 2025-03-26 (a counter-offer)."""

    versions_seen: list[str | None] = field(default_factory=list)  # MCP-Protocol-Version after initialize

    async def post(self, request: web.Request) -> web.Response:
        message = await request.json()
        method = message.get("method")
        if method != "initialize":
            self.versions_seen.append(request.headers.get("MCP-Protocol-Version"))
        if "id" not in message:
            return web.Response(status=202)
        result: dict[str, Any] = {}
        if method == "initialize":
            result = {"protocolVersion": OLDER, "capabilities": {"tools": {}},
                      "serverInfo": {"name": "older", "version": "1"}}
        elif method == "tools/list":
            result = {"tools": [{"name": "hello", "inputSchema": {"type": "object"}}]}
        return web.json_response({"jsonrpc": "2.0", "id": message["id"], "result": result},
                                 headers={"Mcp-Session-Id": "older-1"})

    def app(self) -> web.Application:
        async def no_stream(_: web.Request) -> web.Response:
            return web.Response(status=405)

        async def deleted(_: web.Request) -> web.Response:
            return web.Response(status=200)

        app = web.Application()
        app.router.add_post("/mcp", self.post)
        app.router.add_get("/mcp", no_stream)
        app.router.add_delete("/mcp", deleted)
        return app


@dataclass
class Env:
    url: str
    otlp: OtlpReceiver
    older: OlderUpstream


@pytest.fixture
async def otlp() -> AsyncIterator[OtlpReceiver]:
    async with OtlpReceiver() as receiver:
        yield receiver


@pytest.fixture
async def older() -> AsyncIterator[tuple[OlderUpstream, str]]:
    upstream = OlderUpstream()
    runner = web.AppRunner(upstream.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield upstream, f"http://127.0.0.1:{runner.addresses[0][1]}/mcp"
    finally:
        await runner.cleanup()


@pytest.fixture
async def env(otlp: OtlpReceiver, older: tuple[OlderUpstream, str], start_gateway: Any,
              permissive_policies: Path) -> AsyncIterator[Env]:
    # Set up before start_gateway, the receiver and the older upstream outlive the gateway.
    async with run_http_server(payments_server()) as pay, run_sse_server(inventory_server()) as sse:
        gw = await start_gateway({
            "upstreams": [{"name": "stock", "command": [sys.executable, "-m", "gateway.demo.servers", "inventory"]},
                          {"name": "payments", "url": pay},
                          {"name": "legacy", "url": sse, "transport": "sse"},
                          {"name": "older", "url": older[1]}],
            "policies": {"dir": str(permissive_policies)},
            "telemetry": {"traces": {"endpoint": otlp.url}},
        })
        yield Env(gw.url, otlp, older[0])


async def post(http: aiohttp.ClientSession, url: str, body: Any,
               headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    async with http.post(url, data=json.dumps(body), headers={**HEADERS, **(headers or {})}) as resp:
        return resp.status, dict(resp.headers), await resp.json(content_type=None)


def listing_of(session_id: str) -> Callable[[ReceivedSpan], bool]:
    def match(span: ReceivedSpan) -> bool:
        attrs = span.attributes
        return attrs.get("mcp.session.id") == session_id and attrs.get("mcp.method.name") == "tools/list"
    return match


@pytest.mark.parametrize("kind", list(ENDPOINTS))
async def test_initialize_is_answered_with_the_requested_version(env: Env, kind: str) -> None:
    url = env.url + ENDPOINTS[kind]
    async with aiohttp.ClientSession() as http:
        for requested in REQUESTED:
            status, headers, body = await post(http, url, initialize(requested))
            assert status == 200, (requested, body)
            answered = body["result"]["protocolVersion"]
            assert answered == expected(requested), f"{kind}: asked {requested}, got {answered}"
            sid = headers["Mcp-Session-Id"]
            session = {"Mcp-Session-Id": sid, "MCP-Protocol-Version": answered}
            status, _, _ = await post(http, url, {"jsonrpc": "2.0", "method": "notifications/initialized"}, session)
            assert status == 202
            status, _, body = await post(http, url, {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, session)
            assert status == 200 and body["result"]["tools"], (requested, body)
            span = await env.otlp.wait_for_span(listing_of(sid))
            assert span.attributes["mcp.protocol.version"] == answered


async def test_the_gateway_speaks_the_upstreams_own_version_upstream(env: Env) -> None:
    """The agent gets its own version; the upstream that counter-offered keeps getting the one it chose."""
    async with aiohttp.ClientSession() as http:
        status, headers, body = await post(http, env.url + "/mcp/older", initialize("2025-11-25"))
        assert status == 200 and body["result"]["protocolVersion"] == "2025-11-25"
        assert body["result"]["serverInfo"]["name"] == "older"  # the rest of the upstream's answer passes
        session = {"Mcp-Session-Id": headers["Mcp-Session-Id"], "MCP-Protocol-Version": "2025-11-25"}
        status, _, _ = await post(http, env.url + "/mcp/older", {"jsonrpc": "2.0", "id": 2, "method": "ping"},
                                  session)
        assert status == 200
    assert env.older.versions_seen and set(env.older.versions_seen) == {OLDER}


async def sse_events(response: aiohttp.ClientResponse) -> AsyncIterator[tuple[str, str]]:
    event, data = "message", ""
    async for raw in response.content:
        line = raw.decode().rstrip("\r\n")
        if line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data = line[5:].strip()
        elif not line and data:
            yield event, data
            event, data = "message", ""


@pytest.mark.parametrize("path", ["/sse", "/sse/stock"])
async def test_legacy_sse_inbound_negotiates_too(env: Env, path: str) -> None:
    """The 2024-11-05 HTTP+SSE endpoint used to echo any string; it negotiates like /mcp now."""
    async with aiohttp.ClientSession() as http:
        for requested in REQUESTED:
            async with http.get(env.url + path, headers={"Accept": "text/event-stream"}) as stream:
                events = sse_events(stream)
                kind, endpoint = await anext(events)
                assert kind == "endpoint"
                async with http.post(env.url + endpoint, data=json.dumps(initialize(requested, "init")),
                                     headers=HEADERS) as resp:
                    assert resp.status == 202
                kind, data = await anext(events)
                reply = json.loads(data)
                assert reply["id"] == "init" and reply["result"]["protocolVersion"] == expected(requested)
