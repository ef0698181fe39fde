"""A JWKS fetch while the gateway has many calls in flight: it must not wait behind the upstream calls.

The gateway's HTTP client pool (100 connections) is shared by every upstream call; a JWKS fetch drawn from the
same pool waited for a slot while 100 slow tool calls held them, timed out after 5 s, and every token of a key
the IdP had just rotated in was refused (`Unknown signing key`) for as long as the load lasted.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
from mcp.server.mcpserver import MCPServer

from tests.support.servers import run_http_server
from tests.support.tokens import TestIssuer

IN_FLIGHT = 100  # aiohttp's default connection limit, the size of the gateway's shared client pool
SHOPPER = "spiffe://acme.test/agent/shopper"
ACCEPT = "application/json, text/event-stream"
INITIALIZE = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
              "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                         "clientInfo": {"name": "t", "version": "1"}}}


def holding_server(started: list[int], release: asyncio.Event) -> MCPServer[Any]:
    server: MCPServer[Any] = MCPServer("slow")

    @server.tool()
    async def hold() -> str:
        """Answers once the test lets it."""
        started.append(1)
        await release.wait()
        return "done"

    return server


@asynccontextmanager
async def calls_in_flight(http: aiohttp.ClientSession, mcp: str, token: str,
                          started: list[int], release: asyncio.Event) -> AsyncIterator[dict[str, str]]:
    """IN_FLIGHT tool calls held by the upstream, each holding one of the gateway's upstream connections; yields
    the headers of their MCP session."""
    headers = {"Authorization": f"Bearer {token}", "Accept": ACCEPT}
    async with http.post(mcp, json=INITIALIZE, headers=headers) as resp:
        headers |= {"Mcp-Session-Id": resp.headers["Mcp-Session-Id"], "MCP-Protocol-Version": "2025-06-18"}
    async with http.post(mcp, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers):
        pass

    async def call(n: int) -> int:
        message = {"jsonrpc": "2.0", "id": 10 + n, "method": "tools/call", "params": {"name": "slow__hold"}}
        async with http.post(mcp, json=message, headers=headers) as resp:
            await resp.read()
            return resp.status

    calls = [asyncio.create_task(call(n)) for n in range(IN_FLIGHT)]
    try:
        await until(lambda: len(started) >= IN_FLIGHT)
        yield headers
    finally:
        release.set()
        assert set(await asyncio.gather(*calls)) == {200}


async def until(condition: Callable[[], bool], timeout_s: float = 20.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.02)


async def test_a_rotated_key_is_fetched_while_the_upstream_pool_is_busy(
        start_gateway: Callable[[dict[str, Any]], Awaitable[Any]], permissive_policies: Path, tmp_path: Path) -> None:
    idp = TestIssuer(tmp_path, algorithms=("ES256",))
    idp.close_connections = True  # no kept-alive IdP connection to reuse: each fetch opens one, as in production
    await idp.serve()
    started: list[int] = []
    release = asyncio.Event()
    try:
        async with run_http_server(holding_server(started, release)) as upstream:
            gw = await start_gateway({"upstreams": [{"name": "slow", "url": upstream}],
                                      # refetch on an unknown kid at most once per 0.2 s (min(30, jwks_refresh_s))
                                      "identity": {"mode": "jwt", "issuers": [idp.config(source="url",
                                                                                         jwks_refresh_s=0.2)]},
                                      "policies": {"dir": str(permissive_policies)}})
            loop = asyncio.get_running_loop()
            cooled = loop.time() + 0.3
            token = idp.mint(SHOPPER, aud=gw.mcp, alg="ES256", tenant="acme")
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http, \
                    calls_in_flight(http, gw.mcp, token, started, release):
                await until(lambda: loop.time() >= cooled)  # the unknown kid may fetch again
                idp.rotate("ES256")
                rotated = idp.mint(SHOPPER, aud=gw.mcp, alg="ES256", tenant="acme")
                headers = {"Authorization": f"Bearer {rotated}", "Accept": ACCEPT}
                async with http.post(gw.mcp, json=INITIALIZE, headers=headers) as resp:
                    assert resp.status == 200, await resp.text()
                assert len(started) == IN_FLIGHT  # still held: the pool was full all along
    finally:
        await idp.close()
