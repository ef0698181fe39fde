"""A server→client request an upstream sends while the gateway is still opening the upstream session (here a `ping`
on the GET stream the moment it opens, before `connect()` has returned) reaches the client, and the client's answer
reaches the upstream (real SDK client and gateway; a scripted aiohttp upstream). On `/mcp/{upstream}` that is during
the client's own `initialize`, before it has a GET stream: its first GET stream brings the request still awaited."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.app import GATEWAY
from tests.support.mcp_client import sdk_client
from tests.transport.conftest import eventually

pytestmark = pytest.mark.asyncio
ANON = {"mode": "anonymous", "anonymous_attributes": {"tenant": "acme"}}
PING = {"jsonrpc": "2.0", "id": "srv-1", "method": "ping"}


async def ping_at_stream_open(scripted: Any) -> Any:
    async def on_get(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(f"event: message\ndata: {json.dumps(PING)}\n\n".encode())
        await asyncio.Event().wait()
        return response

    async def on_request(request: web.Request, message: dict[str, Any]) -> web.StreamResponse:
        return web.json_response({"jsonrpc": "2.0", "id": message["id"], "result": {"tools": []}})

    return await scripted(on_request, on_get)


async def test_a_request_sent_as_the_upstream_session_opens_is_answered(start_gateway: Any, permissive_policies: Path,
                                                                        scripted: Any) -> None:
    up = await ping_at_stream_open(scripted)
    gw = await start_gateway({"upstreams": [{"name": "up", "url": up.url, "timeout_s": 10}], "identity": ANON,
                              "policies": {"dir": str(permissive_policies)}})
    async with sdk_client(gw.mcp) as client:
        session = next(iter(gw.app[GATEWAY].sessions._sessions.values()))
        await eventually(lambda: session.get_stream_open)  # the client's GET stream, where the ping goes
        await client.list_tools()  # the first call opens the upstream session
        # (on the old code the ping was dropped unanswered: the upstream session was not recorded yet)
        await eventually(lambda: any(m and m.get("id") == "srv-1" and m.get("result") == {} for _, m in up.seen), 10)


async def test_a_request_sent_during_the_clients_initialize_comes_on_its_first_get_stream(
        start_gateway: Any, permissive_policies: Path, scripted: Any) -> None:
    up = await ping_at_stream_open(scripted)
    gw = await start_gateway({"upstreams": [{"name": "up", "url": up.url, "timeout_s": 10}], "identity": ANON,
                              "policies": {"dir": str(permissive_policies)}})
    async with sdk_client(f"{gw.mcp}/up"):  # its initialize opens the upstream session, and the ping comes
        # (on the old code the ping stayed in the replay buffer, which a GET without Last-Event-ID does not replay)
        await eventually(lambda: any(m and m.get("id") == "srv-1" and m.get("result") == {} for _, m in up.seen), 10)


JSON = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}


async def test_a_request_the_client_was_given_is_not_given_again_on_a_new_get_stream(
        start_gateway: Any, permissive_policies: Path, scripted: Any) -> None:
    up = await ping_at_stream_open(scripted)
    gw = await start_gateway({"upstreams": [{"name": "up", "url": up.url, "timeout_s": 10}], "identity": ANON,
                              "policies": {"dir": str(permissive_policies)}})
    async with aiohttp.ClientSession() as http:
        async with http.post(gw.mcp, json=INIT, headers=JSON) as resp:
            headers = {"Mcp-Session-Id": resp.headers["Mcp-Session-Id"], "MCP-Protocol-Version": "2025-11-25"}
        stream = {**headers, "Accept": "text/event-stream"}
        session = next(iter(gw.app[GATEWAY].sessions._sessions.values()))
        async with http.get(gw.mcp, headers=stream) as first:
            await eventually(lambda: session.get_stream_open)
            listed = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
            async with http.post(gw.mcp, json=listed, headers={**JSON, **headers}) as resp:
                assert resp.status == 200  # the upstream session is open, its ping sent on this GET stream
            async for line in first.content:
                if b'"method":"ping"' in line:
                    break  # given it (under the gateway's id) and not answered yet
        async with http.get(gw.mcp, headers=stream) as second:  # a new stream, no Last-Event-ID
            await eventually(lambda: session.get_stream_open)
            async with http.delete(gw.mcp, headers=headers):
                pass  # the session ends, and the stream with it
            # (on 7ee0658 it came again: every request still awaited did, on any GET without Last-Event-ID)
            assert b'"method":"ping"' not in await asyncio.wait_for(second.content.read(), 10)
