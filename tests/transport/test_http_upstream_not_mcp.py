"""/readyz tells the truth about an HTTP upstream whose URL answers, but not in MCP (issue 2: "/readyz (upstreams
reachable, config loaded)"): a wrong path's 404 text/plain, an HTML page, a JSON body that is no JSON-RPC, a reverse
proxy's 502. Every call failed (upstream_error; upstream_unavailable for the 502) while /readyz said `ready: true,
detail: "ok"` (the HTTP answer to the failed initialize counted as contact, and the probe's TCP connect as
"reachable"). Now it says `initialize failed: <why>` until an MCP handshake succeeds there, which the probe itself
tries (no agent may be sent to a replica that is not ready), so the same URL serving MCP later turns it ready by
itself. A refusal (HTTP 401/403, a JSON-RPC error) is an answer in MCP's terms, perhaps to one agent's credential: it
never makes the upstream not ready. An open circuit says why it opened (`; last: <detail>`), as a stdio upstream's
does. Real gateway, real HTTP, a hand-written aiohttp upstream switched to MCP by an event."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.support.servers import run_aiohttp

ANON = {"mode": "anonymous", "anonymous_attributes": {"tenant": "acme"}}
HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
INIT = {"jsonrpc": "2.0", "id": 0, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
ECHO = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "echo", "arguments": {}}}

# What a URL that is no MCP endpoint answers: each kind, and what /readyz then says per transport.
JUNK: dict[str, Callable[[], web.Response]] = {
    "404-text": lambda: web.Response(status=404, text="404: Not Found"),
    "html": lambda: web.Response(text="<!doctype html><title>Welcome to nginx!</title>", content_type="text/html"),
    "json-not-jsonrpc": lambda: web.json_response({"status": "ok", "service": "inventory"}),
    "proxy-502": lambda: web.Response(status=502, text="Bad Gateway"),  # a reverse proxy whose backend is down
}
DETAIL = {
    ("streamable_http", "404-text"): "initialize failed: unexpected upstream answer (HTTP 404, text/plain)",
    ("streamable_http", "html"): "initialize failed: unexpected upstream answer (HTTP 200, text/html)",
    ("streamable_http", "json-not-jsonrpc"): "initialize failed: upstream sent an invalid JSON-RPC message",
    ("sse", "404-text"): "initialize failed: upstream SSE endpoint answered HTTP 404",
    ("sse", "html"): "initialize failed: upstream SSE endpoint answered HTTP 200",
    ("sse", "json-not-jsonrpc"): "initialize failed: upstream SSE endpoint answered HTTP 200",
    ("streamable_http", "proxy-502"): "initialize failed: upstream answered HTTP 502",
    ("sse", "proxy-502"): "initialize failed: upstream answered HTTP 502",
}


@dataclass
class Switchable:
    """An upstream answering `junk` (to every request) until `serving` is set, then a small MCP server over streamable
    HTTP (/mcp) and legacy HTTP+SSE (/sse, /messages). `refusal`, when set, is its answer to `initialize` meanwhile."""

    junk: Callable[[], web.Response]
    serving: asyncio.Event = field(default_factory=asyncio.Event)
    refusal: Callable[[dict[str, Any]], web.Response] | None = None
    streams: dict[str, asyncio.Queue[bytes | None]] = field(default_factory=dict)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/mcp", self.mcp)
        app.router.add_get("/sse", self.sse)
        app.router.add_post("/messages", self.messages)
        return app

    async def mcp(self, request: web.Request) -> web.Response:
        if request.method == "POST" and self.refusal is not None:
            return self.refusal(await request.json())
        if not self.serving.is_set():
            return self.junk()
        if request.method != "POST":
            return web.Response(status=405 if request.method == "GET" else 200)
        message = await request.json()
        if "id" not in message:
            return web.Response(status=202)
        session = {"Mcp-Session-Id": "s-1"} if message["method"] == "initialize" else {}
        return web.json_response(answer(message), headers=session)

    async def sse(self, request: web.Request) -> web.StreamResponse:
        if not self.serving.is_set():
            return self.junk()
        key = str(len(self.streams))
        queue = self.streams[key] = asyncio.Queue()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(f"event: endpoint\ndata: /messages?s={key}\n\n".encode())
        while (chunk := await queue.get()) is not None:
            await response.write(chunk)
        return response

    async def messages(self, request: web.Request) -> web.Response:
        message = await request.json()
        if "id" in message and "method" in message:
            self.streams[request.query["s"]].put_nowait(b"event: message\ndata: %s\n\n" % json.dumps(answer(message))
                                                        .encode())
        return web.Response(status=202)


def answer(message: dict[str, Any]) -> dict[str, Any]:
    method = message["method"]
    if method == "initialize":
        result: dict[str, Any] = {"protocolVersion": message["params"]["protocolVersion"],
                                  "capabilities": {"tools": {}}, "serverInfo": {"name": "switched", "version": "1"}}
    elif method == "tools/list":
        result = {"tools": [{"name": "echo", "inputSchema": {"type": "object"}}]}
    elif method == "tools/call":
        result = {"content": [{"type": "text", "text": "ok"}]}
    else:
        result = {}
    return {"jsonrpc": "2.0", "id": message["id"], "result": result}


@asynccontextmanager
async def serving(up: Switchable) -> AsyncIterator[str]:
    async with run_aiohttp(up.app(), handler_cancellation=True, shutdown_timeout=2) as base:
        try:
            yield base
        finally:
            for queue in up.streams.values():
                queue.put_nowait(None)  # the gateway's legacy streams end before the server stops


async def start(start_gateway: Any, policies: Path, url: str, transport: str, **upstream: Any) -> Any:
    sse = {"transport": "sse"} if transport == "sse" else {}
    return await start_gateway({"upstreams": [{"name": "g", "url": url, "timeout_s": 5, **sse, **upstream}],
                                "identity": ANON, "policies": {"dir": str(policies), "watch": False}})


async def echo(http: aiohttp.ClientSession, gw: Any) -> dict[str, Any]:
    """A new agent session on /mcp/g calls `echo`: the answer to the first request that did not succeed, else the
    call's."""
    url = f"{gw.mcp}/g"
    async with asyncio.timeout(15):
        async with http.post(url, json=INIT, headers=HEADERS) as resp:
            body: dict[str, Any] = await resp.json(content_type=None)
            if resp.status != 200 or "error" in body:
                return body
            session = {**HEADERS, "Mcp-Session-Id": resp.headers["Mcp-Session-Id"],
                       "MCP-Protocol-Version": "2025-11-25"}
        async with http.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=session):
            pass
        async with http.post(url, json=ECHO, headers=session) as resp:
            body = await resp.json(content_type=None)
        async with http.delete(url, headers=session):
            pass
    return body


def reason(body: dict[str, Any]) -> Any:
    return ((body.get("error") or {}).get("data") or {}).get("reason")


async def readyz(http: aiohttp.ClientSession, gw: Any) -> tuple[int, dict[str, Any]]:
    async with asyncio.timeout(10), http.get(f"{gw.url}/readyz") as resp:
        body = await resp.json()
        return resp.status, body["upstreams"]["g"]


@pytest.mark.parametrize("kind", list(JUNK))
@pytest.mark.parametrize("transport", ["streamable_http", "sse"])
async def test_an_upstream_that_answers_no_mcp_is_not_ready_until_it_does(
        start_gateway: Any, permissive_policies: Path, http: aiohttp.ClientSession, transport: str, kind: str) -> None:
    up = Switchable(JUNK[kind])
    async with serving(up) as base:
        gw = await start(start_gateway, permissive_policies, f"{base}/{'sse' if transport == 'sse' else 'mcp'}",
                         transport)
        body = await echo(http, gw)
        assert reason(body) == ("upstream_unavailable" if kind == "proxy-502" else "upstream_error"), body
        for _ in range(2):  # the probe (a TCP connect would succeed) keeps the reason: it was "ok", then "reachable"
            status, ready = await readyz(http, gw)
            assert (status, ready) == (503, {"ready": False, "detail": DETAIL[transport, kind], "restarts": 0})
        up.serving.set()  # the same URL serves MCP now: the probe's own handshake turns it ready, no agent needed
        status, ready = await readyz(http, gw)
        assert (status, ready) == (200, {"ready": True, "detail": "ok", "restarts": 0})
        body = await echo(http, gw)
        assert body["result"]["content"][0]["text"] == "ok", body
        assert not gw.gateway.parts.upstreams["g"].sessions  # the probe's handshake left no session open


REFUSALS: dict[str, Callable[[dict[str, Any]], web.Response]] = {
    "http-401": lambda message: web.Response(status=401, text="invalid token",
                                             headers={"WWW-Authenticate": "Bearer"}),
    "jsonrpc-error": lambda message: web.json_response(
        {"jsonrpc": "2.0", "id": message.get("id"), "error": {"code": -32001, "message": "bad key sk-live-123"}}),
}


@pytest.mark.parametrize("refusal", list(REFUSALS))
async def test_a_refused_initialize_is_an_answer_in_mcp_terms_not_unreadiness(
        start_gateway: Any, permissive_policies: Path, http: aiohttp.ClientSession, refusal: str) -> None:
    """The credential of one agent refused must not take the replica out of rotation; and a URL that refuses in MCP's
    terms (where it answered junk before) is an MCP server again."""
    up = Switchable(JUNK["404-text"])
    async with serving(up) as base:
        gw = await start(start_gateway, permissive_policies, f"{base}/mcp", "streamable_http")
        assert reason(await echo(http, gw)) == "upstream_error"
        status, ready = await readyz(http, gw)
        assert status == 503 and ready["detail"].startswith("initialize failed: "), ready
        up.refusal = REFUSALS[refusal]
        assert reason(await echo(http, gw)) == "upstream_error"
        assert gw.gateway.parts.upstreams["g"].health().ready  # the agent's refused set-up itself cleared it
        status, ready = await readyz(http, gw)
        assert (status, ready) == (200, {"ready": True, "detail": "ok", "restarts": 0})


@pytest.mark.parametrize("transport", ["streamable_http", "sse"])
async def test_an_open_circuit_says_why_it_opened(start_gateway: Any, permissive_policies: Path,
                                                  http: aiohttp.ClientSession, bound_socket: socket.socket,
                                                  transport: str) -> None:
    """As a stdio upstream's: `circuit open after N consecutive connection failures; last: <the last failure>`."""
    port = bound_socket.getsockname()[1]  # bound, not listening: every connection is refused
    gw = await start(start_gateway, permissive_policies, f"http://127.0.0.1:{port}/{transport}", transport,
                     breaker={"threshold": 2, "cooldown_s": 600})
    for _ in range(2):
        assert reason(await echo(http, gw)) == "upstream_unavailable"
    status, ready = await readyz(http, gw)
    assert status == 503 and ready == {
        "ready": False, "restarts": 0,
        "detail": "circuit open after 2 consecutive connection failures; last: connection failed: ClientConnectorError"}
