"""Progress the agent reports on a server→client request (the request's `_meta.progressToken`) goes to
the upstream that asked, and to no other upstream of the aggregated session (real gateway; scripted
aiohttp upstreams that record every message they receive; raw HTTP agent)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.transport.base import Message
from tests.transport.conftest import Scripted, eventually

pytestmark = pytest.mark.asyncio
ANON = {"mode": "anonymous", "anonymous_attributes": {"tenant": "acme"}}
HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {"sampling": {}},
                   "clientInfo": {"name": "t", "version": "1"}}}
SAMPLE = {"jsonrpc": "2.0", "id": 7, "method": "sampling/createMessage",
          "params": {"messages": [], "maxTokens": 5, "_meta": {"progressToken": "pt"}}}


def tools(name: str) -> dict[str, Any]:
    return {"tools": [{"name": name, "inputSchema": {"type": "object"}}]}


def event(message: Message) -> bytes:
    return b"data: " + json.dumps(message).encode() + b"\n\n"


async def next_message(resp: aiohttp.ClientResponse) -> Message:
    """The next SSE data line of an answer stream, as a message."""
    async with asyncio.timeout(10):
        while True:
            line = await resp.content.readline()
            assert line, "stream ended"
            if line.startswith(b"data: "):
                message: Message = json.loads(line[6:])
                return message


async def test_agent_progress_reaches_only_the_asking_upstream(
        start_gateway: Any, permissive_policies: Path, scripted: Callable[..., Awaitable[Scripted]]) -> None:
    asking: Scripted | None = None

    async def ask(request: web.Request, message: Message) -> web.StreamResponse:
        if message["method"] == "tools/list":
            return web.json_response({"jsonrpc": "2.0", "id": message["id"], "result": tools("ask")})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(event(SAMPLE))  # sampling on this call's behalf, with a progress token
        assert asking is not None
        await eventually(lambda: any(m and m.get("id") == 7 and "result" in m for _, m in asking.seen))
        await resp.write(event({"jsonrpc": "2.0", "id": message["id"], "result": {"content": []}}))
        return resp

    async def other(request: web.Request, message: Message) -> web.StreamResponse:
        return web.json_response({"jsonrpc": "2.0", "id": message["id"], "result": tools("idle")})

    asking, bystander = await scripted(ask), await scripted(other)
    gw = await start_gateway({"upstreams": [{"name": "a", "url": asking.url}, {"name": "b", "url": bystander.url}],
                              "identity": ANON, "policies": {"dir": str(permissive_policies)}})
    async with aiohttp.ClientSession() as http:
        async with http.post(gw.mcp, json=INIT, headers=HEADERS) as resp:
            session = {**HEADERS, "Mcp-Session-Id": resp.headers["Mcp-Session-Id"]}
        async with http.post(gw.mcp, json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, headers=session) as resp:
            assert {t["name"] for t in (await resp.json())["result"]["tools"]} == {"a__ask", "b__idle"}
        call = {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "a__ask", "arguments": {}}}
        async with http.post(gw.mcp, json=call, headers=session) as stream:
            sample = await next_message(stream)
            assert sample["method"] == "sampling/createMessage"
            progress = {"jsonrpc": "2.0", "method": "notifications/progress",
                        "params": {"progressToken": "pt", "progress": 1, "total": 2}}
            async with http.post(gw.mcp, json=progress, headers=session) as resp:
                assert resp.status == 202
            answer = {"jsonrpc": "2.0", "id": sample["id"],
                      "result": {"role": "assistant", "model": "m", "content": {"type": "text", "text": "ok"}}}
            async with http.post(gw.mcp, json=answer, headers=session) as resp:
                assert resp.status == 202
            assert (await next_message(stream))["result"] == {"content": []}
    assert asking.count("notifications/progress") == 1
    assert bystander.count("notifications/progress") == 0  # was sent every upstream of the session

