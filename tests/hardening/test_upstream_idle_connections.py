"""Pooled upstream connections are let go before a common upstream's keep-alive closes them (issue 2).

An HTTP server closes a keep-alive connection that sat idle for its timeout (uvicorn, which the MCP SDK
serves with, and Node's http server: 5 s). A gateway that keeps idle connections longer can pick one
just as the server closes it: the request crosses the close and the call fails `upstream_unavailable`,
and since the server may or may not have read it, a write must not be sent again. The gateway's pool
therefore never reuses a connection idle for 4 s or more.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.transport.http_base import UPSTREAM_IDLE_S
from tests.hardening.conftest import ANON, RawClient
from tests.support.servers import CLOSE_MARGIN_S, SERVER_KEEPALIVE_S, IdleCloser, run_post_only_mcp

pytestmark = pytest.mark.asyncio


class ClosingOnIdle(IdleCloser):
    """A streamable-HTTP MCP upstream behaving as a 5 s keep-alive server when a request crosses its close."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    async def post(self, request: web.Request) -> web.StreamResponse:
        return await self._answer(await request.json())

    async def _answer(self, body: dict[str, Any]) -> web.StreamResponse:
        if "id" not in body:
            return web.Response(status=202)
        if body["method"] == "initialize":
            result: dict[str, Any] = {"protocolVersion": "2025-11-25", "capabilities": {"tools": {}},
                                      "serverInfo": {"name": "idle", "version": "1"}}
            return web.json_response({"jsonrpc": "2.0", "id": body["id"], "result": result},
                                     headers={"Mcp-Session-Id": "s1"})
        if body["method"] == "tools/list":
            tool = {"name": "transfer", "inputSchema": {"type": "object"}}
            return web.json_response({"jsonrpc": "2.0", "id": body["id"], "result": {"tools": [tool]}})
        self.calls += 1
        content = [{"type": "text", "text": f"done {self.calls}"}]
        return web.json_response({"jsonrpc": "2.0", "id": body["id"], "result": {"content": content}})


@pytest.fixture
async def closing_upstream() -> AsyncIterator[tuple[ClosingOnIdle, str]]:
    upstream = ClosingOnIdle()
    async with run_post_only_mcp(upstream.wrap(upstream.post)) as url:
        yield upstream, url


async def test_the_pool_lets_go_before_a_five_second_keepalive_server() -> None:
    assert UPSTREAM_IDLE_S <= SERVER_KEEPALIVE_S - 2 * CLOSE_MARGIN_S


async def test_a_write_after_an_idle_spell_goes_on_a_fresh_connection(
        start_gateway: Any, permissive_policies: Path, http: aiohttp.ClientSession,
        closing_upstream: tuple[ClosingOnIdle, str]) -> None:
    upstream, url = closing_upstream
    gw = await start_gateway({"upstreams": [{"name": "bank", "url": url}], "identity": ANON,
                              "policies": {"dir": str(permissive_policies), "watch": False}})
    client = RawClient(http, gw.mcp)
    await client.initialize()
    _, _, body = await client.call("bank__transfer", {"amount": 1})
    assert body["result"]["content"][0]["text"] == "done 1", body
    # Not synchronisation: the connection's idle time is what is under test.
    await asyncio.sleep(SERVER_KEEPALIVE_S - CLOSE_MARGIN_S + 0.1)
    _, _, body = await client.call("bank__transfer", {"amount": 2})
    assert body.get("result", {}).get("content", [{}])[0].get("text") == "done 2", body
    assert upstream.dropped == 0
