"""Hand-written HTTP upstreams that leave chosen messages unanswered, for the tests of what the gateway does
when an upstream never answers: a streamable HTTP one (`/mcp`) and a legacy SSE one (`/sse` + `/messages`).

`answer(message)` gives the JSON-RPC answer of a request, or None to leave it unanswered for good; a message
whose method is in `hang_on` is never even taken (its POST waits for good). Notifications are taken (202)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Collection
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
from aiohttp import web

from tests.support.servers import run_aiohttp

Answer = Callable[[dict[str, Any]], dict[str, Any] | None]


def streamable_app(answer: Answer, hang_on: Collection[str] = ()) -> web.Application:
    async def mcp(request: web.Request) -> web.StreamResponse:
        if request.method != "POST":
            return web.Response(status=405)
        message = json.loads(await request.read())
        if message.get("method") in hang_on:
            await asyncio.Event().wait()
        if "id" not in message:
            return web.Response(status=202)
        reply = answer(message)
        if reply is None:
            await asyncio.Event().wait()
        return web.json_response(reply, headers={"Mcp-Session-Id": "s-1"})

    app = web.Application()
    app.router.add_route("*", "/mcp", mcp)
    return app


def sse_app(answer: Answer, hang_on: Collection[str] = ()) -> web.Application:
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def sse(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"event: endpoint\ndata: /messages?session=1\n\n")
        while True:
            await response.write(f"event: message\ndata: {json.dumps(await queue.get())}\n\n".encode())

    async def post(request: web.Request) -> web.Response:
        message = json.loads(await request.read())
        if message.get("method") in hang_on:
            await asyncio.Event().wait()
        reply = answer(message) if "id" in message and "method" in message else None
        if reply is not None:
            await queue.put(reply)
        return web.Response(status=202)  # a request is taken; one without an answer is never answered

    app = web.Application()
    app.router.add_get("/sse", sse)
    app.router.add_post("/messages", post)
    return app


@asynccontextmanager
async def mute_upstream(kind: str, answer: Answer, hang_on: Collection[str] = ()) -> AsyncIterator[str]:
    """One of the two, running; yields the URL a gateway's `upstreams[].url` names for it."""
    app = streamable_app(answer, hang_on) if kind == "streamable_http" else sse_app(answer, hang_on)
    # Its hung handlers never end: a graceful shutdown would only wait for them (shutdown_timeout, twice) in vain.
    async with run_aiohttp(app, shutdown_timeout=0.1) as base:
        yield f"{base}/mcp" if kind == "streamable_http" else f"{base}/sse"


async def agent_session(http: aiohttp.ClientSession, mcp_url: str) -> dict[str, str]:
    """A raw agent's `initialize` at the gateway: the headers its later requests carry (session, version)."""
    headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    init = {"jsonrpc": "2.0", "id": 0, "method": "initialize",
            "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                       "clientInfo": {"name": "t", "version": "1"}}}
    async with http.post(mcp_url, json=init, headers=headers) as resp:
        return headers | {"Mcp-Session-Id": resp.headers["Mcp-Session-Id"], "MCP-Protocol-Version": "2025-06-18"}
