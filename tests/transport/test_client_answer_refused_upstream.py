"""The agent's answer to a server→client request is a JSON-RPC response: the gateway takes it with 202
even when passing it on fails (the upstream refused it or is gone), as it does for the agent's
notifications, never with a 200 carrying a JSON-RPC error (Streamable HTTP: a POSTed response is
answered 202 with no body). Real gateway; a hand-written aiohttp upstream whose GET stream asks
`roots/list` and which refuses every answer; raw HTTP agent."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.support.servers import run_aiohttp

pytestmark = pytest.mark.asyncio
ANON = {"mode": "anonymous", "anonymous_attributes": {"tenant": "acme"}}
HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {"roots": {}},
                   "clientInfo": {"name": "t", "version": "1"}}}
ROOTS = {"jsonrpc": "2.0", "id": 99, "method": "roots/list"}


def refusing_upstream(answers: list[Any]) -> web.Application:
    changed = asyncio.Event()

    async def mcp(request: web.Request) -> web.StreamResponse:
        if request.method == "GET":  # the session stream: asks for the roots once the client says they changed
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            await changed.wait()
            await resp.write(b"data: " + json.dumps(ROOTS).encode() + b"\n\n")
            await asyncio.Event().wait()
        if request.method != "POST":
            return web.Response(status=200)
        message = json.loads(await request.read())
        if message.get("method") == "initialize":
            result = {"protocolVersion": "2025-11-25", "capabilities": {}, "serverInfo": {"name": "r", "version": "1"}}
            return web.json_response({"jsonrpc": "2.0", "id": message["id"], "result": result},
                                     headers={"Mcp-Session-Id": "s-1"})
        if "method" not in message:
            answers.append(message)
            return web.Response(status=500)  # refuses the client's answer
        if message["method"] == "notifications/roots/list_changed":
            changed.set()
        return web.Response(status=202)

    app = web.Application()
    app.router.add_route("*", "/mcp", mcp)
    return app


async def test_an_answer_the_upstream_refuses_is_still_accepted(start_gateway: Any, permissive_policies: Path) -> None:
    answers: list[Any] = []
    async with run_aiohttp(refusing_upstream(answers), handler_cancellation=True, shutdown_timeout=1) as base:
        gw = await start_gateway({"upstreams": [{"name": "up", "url": f"{base}/mcp"}], "identity": ANON,
                                  "policies": {"dir": str(permissive_policies)}})
        url = f"{gw.mcp}/up"
        async with aiohttp.ClientSession() as http:
            async with http.post(url, json=INIT, headers=HEADERS) as resp:
                session = {**HEADERS, "Mcp-Session-Id": resp.headers["Mcp-Session-Id"]}
            async with http.get(url, headers={"Accept": "text/event-stream", **{
                    "Mcp-Session-Id": session["Mcp-Session-Id"]}}) as stream:
                changed = {"jsonrpc": "2.0", "method": "notifications/roots/list_changed"}
                async with http.post(url, json=changed, headers=session) as resp:
                    assert resp.status == 202
                async with asyncio.timeout(10):
                    line = b""
                    while not line.startswith(b"data: "):
                        line = await stream.content.readline()
                asked = json.loads(line[6:])
                assert asked["method"] == "roots/list"
                answer = {"jsonrpc": "2.0", "id": asked["id"], "result": {"roots": []}}
                async with http.post(url, json=answer, headers=session) as resp:
                    status, body = resp.status, await resp.text()
    assert answers and answers[0]["id"] == 99  # it was passed on, with the upstream's own id
    assert (status, body) == (202, ""), (status, body)  # was 200 with an upstream_error JSON-RPC error
