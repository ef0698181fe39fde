"""`customs policy schema --config` (gateway/authz/live_tools.py) lists the upstreams' tools on a pool that lets an idle
connection go before a common upstream's keep-alive closes it, as the gateway's does
(tests/hardening/test_upstream_idle_connections.py).

Two upstreams behind one host and port share the pool's connections: a slow one's requests, after its initialize,
took the connection the fast one left idle (aiohttp hands out the oldest first), and one idle for 5 s is what
uvicorn and Node close just then.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from gateway.authz.live_tools import fetch_tools
from gateway.config import parse_config
from tests.support.servers import CLOSE_MARGIN_S, SERVER_KEEPALIVE_S, IdleCloser, run_aiohttp


class TwoUpstreams(IdleCloser):
    """`/fast/mcp` and `/slow/mcp` on one server behaving as a 5 s keep-alive server when a request crosses its
    close; `/slow` answers initialize after the idle spell under test."""

    async def post(self, request: web.Request) -> web.StreamResponse:
        return await self._answer(request.match_info["name"], await request.json())

    async def _answer(self, name: str, body: dict[str, Any]) -> web.StreamResponse:
        if "id" not in body:
            return web.Response(status=202)
        if body["method"] == "initialize":
            if name == "slow":  # Not synchronisation: the fast upstream's connection idling is what is under test.
                await asyncio.sleep(SERVER_KEEPALIVE_S - CLOSE_MARGIN_S + 0.1)
            result: dict[str, Any] = {"protocolVersion": "2025-11-25", "capabilities": {"tools": {}},
                                      "serverInfo": {"name": name, "version": "1"}}
            return web.json_response({"jsonrpc": "2.0", "id": body["id"], "result": result},
                                     headers={"Mcp-Session-Id": name})
        tools = [{"name": f"{name}_tool", "inputSchema": {"type": "object"}}]
        return web.json_response({"jsonrpc": "2.0", "id": body["id"], "result": {"tools": tools}})


@pytest.fixture
async def two_upstreams() -> AsyncIterator[tuple[TwoUpstreams, str]]:
    server = TwoUpstreams()
    app = web.Application()
    app.router.add_post("/{name}/mcp", server.wrap(server.post))
    app.router.add_delete("/{name}/mcp", lambda _request: web.Response(status=204))  # type: ignore[arg-type,return-value]
    async with run_aiohttp(app, access_log=None) as base:
        yield server, base


@pytest.mark.asyncio
async def test_a_slow_upstream_does_not_reuse_a_connection_left_idle_past_the_keepalive(
        two_upstreams: tuple[TwoUpstreams, str]) -> None:
    server, base = two_upstreams
    config = parse_config({"upstreams": [{"name": name, "url": f"{base}/{name}/mcp"} for name in ("fast", "slow")]})
    tools = await fetch_tools(config)
    assert {name: [t["name"] for t in listed] for name, listed in tools.items()} == {
        "fast": ["fast_tool"], "slow": ["slow_tool"]}
    assert server.dropped == 0
