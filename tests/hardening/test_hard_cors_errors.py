"""CORS on the answers aiohttp makes when an exception escapes an agent-path handler.

The guard names an allowed origin on every answer it returns and on the HTTP exceptions raised past it; an
exception of another kind escapes it, and aiohttp answers it itself (`handle_error`: a text/plain 500, or a 504
for a TimeoutError), with no CORS headers: a browser agent saw an opaque network error instead of the status.
One was found for real: an agent's notification passed on to an upstream that answers it with a malformed HTTP
response (aiohttp's client raised ClientResponseError, which the one-way path did not turn into a GatewayError):
a text/plain 500. It is now an `upstream_error`, and the notification is taken (202) as any other whose passing
on fails; no real agent-path input is known to raise past its handler now, so routes added to a real gateway app
stand in for such handlers.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.app import create_app, serving_runner
from gateway.config import parse_config
from tests.conftest import bound_socket, with_port
from tests.support.servers import run_aiohttp

AGENT_ORIGIN = "http://agent.example:3000"
INIT = {"jsonrpc": "2.0", "id": 0, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "web", "version": "1"}}}
HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
BROKEN = "notifications/roots/list_changed"  # the notification the upstream answers with bytes no HTTP parser takes


@asynccontextmanager
async def malformed_upstream(broken: list[str]) -> AsyncIterator[str]:
    """A streamable HTTP upstream that answers `BROKEN` with a malformed status line (and closes the connection);
    every other message as any server answers it."""
    async def handle(request: web.Request) -> web.StreamResponse:
        message = json.loads(await request.read())
        if message.get("method") == BROKEN:
            broken.append(BROKEN)
            assert request.transport is not None
            request.transport.write(b"HTTP/1.1 abc Nonsense\r\n\r\n")
            request.transport.close()
            return web.Response(status=202)  # never written: the connection is gone
        if "id" not in message:
            return web.Response(status=202)
        result = {"protocolVersion": "2025-06-18", "capabilities": {"tools": {}},
                  "serverInfo": {"name": "malformed", "version": "1"}}
        return web.json_response({"jsonrpc": "2.0", "id": message["id"], "result": result})

    app = web.Application()
    app.router.add_post("/mcp", handle)
    async with run_aiohttp(app) as base:
        yield f"{base}/mcp"


@pytest.fixture
async def broken() -> list[str]:
    return []


@pytest.fixture
async def gw(start_gateway: Any, permissive_policies: Path, broken: list[str]) -> Any:
    async with malformed_upstream(broken) as url:
        yield await start_gateway({
            "listen": {"allowed_origins": [AGENT_ORIGIN]},
            "upstreams": [{"name": "malformed", "url": url, "timeout_s": 5}],
            "identity": {"mode": "anonymous", "anonymous_attributes": {"tenant": "acme"}},
            "policies": {"dir": str(permissive_policies), "watch": False}})


async def _session(http: aiohttp.ClientSession, url: str) -> str:
    async with http.post(url, json=INIT, headers={**HEADERS, "Origin": AGENT_ORIGIN}) as resp:
        assert resp.status == 200, await resp.text()  # the view's upstream session is opened by initialize
        return resp.headers["Mcp-Session-Id"]


async def test_a_malformed_upstream_answer_to_a_notification_is_taken_and_named_for_the_allowed_origin(
        gw: Any, broken: list[str]) -> None:
    url = f"{gw.url}/mcp/malformed"
    notification = {"jsonrpc": "2.0", "method": BROKEN}
    async with aiohttp.ClientSession() as http:
        session = await _session(http, url)
        headers = {**HEADERS, "Mcp-Session-Id": session, "MCP-Protocol-Version": "2025-06-18"}
        async with http.post(url, json=notification, headers={**headers, "Origin": AGENT_ORIGIN}) as resp:
            body = await resp.text()
            # (old code: aiohttp's text/plain 500 for the escaped ClientResponseError, with no CORS headers)
            assert resp.status == 202 and broken == [BROKEN], body
            assert resp.headers.get("Access-Control-Allow-Origin") == AGENT_ORIGIN, resp.headers
            assert "Mcp-Session-Id" in resp.headers["Access-Control-Expose-Headers"]
            assert "Origin" in resp.headers.getall("Vary")
        # A refused origin is refused by the guard: no handler runs, nothing is named.
        async with http.post(url, json=notification, headers={**headers, "Origin": "http://evil.example"}) as resp:
            assert resp.status == 403 and "Access-Control-Allow-Origin" not in resp.headers
            assert broken == [BROKEN]
        # No Origin (not a browser): taken too, nothing to share.
        async with http.post(url, json=notification, headers=headers) as resp:
            assert resp.status == 202 and broken == [BROKEN, BROKEN]
            assert "Access-Control-Allow-Origin" not in resp.headers and "Vary" not in resp.headers
        # The gateway goes on serving that session.
        ping = {"jsonrpc": "2.0", "id": 9, "method": "ping"}
        async with http.post(url, json=ping, headers=headers) as resp:
            assert resp.status == 200 and (await resp.json())["id"] == 9


async def test_every_answer_aiohttp_makes_for_an_escaped_exception_names_only_an_agent_path_origin(
        permissive_policies: Path) -> None:
    """aiohttp answers a TimeoutError out of a handler with a 504 of its own, any other exception with a 500. No
    agent-path input is known to raise a TimeoutError: routes added to a real gateway app stand in for such
    handlers, on an agent path and on the approvers' API (never shared with another origin)."""
    async def timed_out(request: web.Request) -> web.StreamResponse:
        raise TimeoutError

    async def failed(request: web.Request) -> web.StreamResponse:
        raise RuntimeError("a bug")

    sock = bound_socket()
    port = sock.getsockname()[1]
    app = await create_app(parse_config(with_port({
        "listen": {"allowed_origins": [AGENT_ORIGIN]}, "upstreams": [{"name": "u", "url": "http://127.0.0.1:9/mcp"}],
        "identity": {"mode": "anonymous"}, "policies": {"dir": str(permissive_policies), "watch": False}}, port)))
    app.router.add_post("/mcp/u/timed-out", timed_out)
    app.router.add_post("/mcp/u/failed", failed)
    app.router.add_post("/api/approvals/x/failed", failed)
    runner = await serving_runner(app, shutdown_timeout=5, access_log=None)
    try:
        await web.SockSite(runner, sock).start()
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as http:
            for path, status, named in (("/mcp/u/timed-out", 504, AGENT_ORIGIN), ("/mcp/u/failed", 500, AGENT_ORIGIN),
                                        ("/api/approvals/x/failed", 500, None)):
                async with http.post(base + path, json={}, headers={"Origin": AGENT_ORIGIN}) as resp:
                    assert resp.status == status, (path, await resp.text())
                    assert resp.headers.get("Access-Control-Allow-Origin") == named, (path, resp.headers)
    finally:
        await runner.cleanup()
