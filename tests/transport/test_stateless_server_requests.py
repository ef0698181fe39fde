"""Stateless (2026-07-28) clients and server→client requests tied to no call: an HTTP upstream that
asks (roots/list here) without naming the request it serves sends it on its GET stream, and the gateway
would keep it for the session's GET stream, which a stateless session never has. The upstream then
waited for an answer that could never come and the agent's call hung until its timeout; the request is
now refused upstream at once (`client_unknown`), so the tool fails (or carries on) at once; a `ping` is
answered by the gateway (real SDK server, gateway and stateless SDK client)."""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from mcp.server.mcpserver import Context, MCPServer
from mcp_types import TextContent

from gateway.app import GATEWAY
from tests.support.mcp_client import sdk_client
from tests.support.servers import run_http_server

pytestmark = pytest.mark.asyncio
ANON = {"mode": "anonymous", "anonymous_attributes": {"tenant": "acme"}}


def roots_server() -> MCPServer[Any]:
    server: MCPServer[Any] = MCPServer("roots")

    @server.tool()
    async def roots(ctx: Context) -> str:
        """Ask the client for its roots, tied to no request (the SDK sends it on the GET stream)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                listed = await ctx.session.list_roots()
            except Exception as exc:  # the gateway's refusal
                return f"refused: {exc}"
        return ",".join(str(root.uri) for root in listed.roots)

    @server.tool()
    async def ping_client(ctx: Context) -> str:
        """Ping the client, tied to no request: the gateway, its client here, answers for a stateless one."""
        try:
            await ctx.session.send_ping()
        except Exception as exc:
            return f"refused: {exc}"
        return "pong"

    return server


@pytest.fixture
async def gw(start_gateway: Any, permissive_policies: Path) -> AsyncIterator[Any]:
    async with run_http_server(roots_server()) as url:
        yield await start_gateway({"upstreams": [{"name": "r", "url": url, "timeout_s": 60}], "identity": ANON,
                                   "policies": {"dir": str(permissive_policies), "watch": False}})


@pytest.mark.parametrize("path", ["", "/r"])
async def test_an_unlinked_server_request_is_refused_at_once_for_a_stateless_client(gw: Any, path: str) -> None:
    name = "roots" if path else "r__roots"
    async with sdk_client(f"{gw.mcp}{path}", mode="auto") as client:
        assert client.protocol_version == "2026-07-28"
        result = await asyncio.wait_for(client.call_tool(name, {}), 20)  # (on the old code: 60 s, upstream_timeout)
        content = result.content[0]
        assert isinstance(content, TextContent) and content.text.startswith("refused:"), content
        assert "client" in content.text
    sessions = gw.app[GATEWAY].sessions._stateless.values()
    assert all(not s.server_requests for s in sessions)  # nothing left awaiting an answer


async def test_an_unlinked_ping_is_answered_for_a_stateless_client(gw: Any) -> None:
    async with sdk_client(gw.mcp, mode="auto") as client:
        result = await asyncio.wait_for(client.call_tool("r__ping_client", {}), 20)
        content = result.content[0]
        assert isinstance(content, TextContent) and content.text == "pong", content


async def test_a_handshake_client_still_gets_it_on_its_get_stream(gw: Any) -> None:
    import mcp_types as types

    async def on_roots(ctx: Any) -> types.ListRootsResult:
        return types.ListRootsResult(roots=[types.Root(uri="file:///work")])

    async with sdk_client(gw.mcp, list_roots_callback=on_roots) as client:
        result = await asyncio.wait_for(client.call_tool("r__roots", {}), 20)
        content = result.content[0]
        assert isinstance(content, TextContent) and content.text == "file:///work"
