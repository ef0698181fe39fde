"""Which requests take a rate-limit token, through a real gateway (docs/tools-and-limits.md): `tools/call`,
`resources/read` and `prompts/get` each take one; lists, `completion/complete`, subscriptions and `ping` take
none, so a budget of N calls admits N calls however often the client lists, and lists go on once it is spent."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from mcp.server.mcpserver import MCPServer

from tests.hardening.conftest import ANON, RawClient
from tests.support.servers import run_http_server

pytestmark = pytest.mark.asyncio


def catalog_server() -> MCPServer[Any]:
    server: MCPServer[Any] = MCPServer("cat")

    @server.tool()
    def lookup(sku: str) -> str:
        """Read one SKU."""
        return f"stock of {sku}"

    @server.resource("stock://levels")
    def levels() -> str:
        return "widget: 5"

    @server.prompt()
    def summary(topic: str) -> str:
        return f"Summarise {topic}"

    @server.completion()
    async def complete(ref: Any, argument: Any, context: Any) -> Any:
        return None

    return server


@pytest.fixture
async def client(start_gateway: Any, permissive_policies: Path) -> AsyncIterator[RawClient]:
    async with run_http_server(catalog_server()) as url, aiohttp.ClientSession() as http:
        gw = await start_gateway({"upstreams": [{"name": "cat", "url": url}], "identity": ANON,
                                  "policies": {"dir": str(permissive_policies), "watch": False},
                                  "limits": {"per_principal": {"rate_per_s": 0.001, "burst": 3}}})
        client = RawClient(http, gw.mcp)
        await client.initialize()
        yield client


FREE = [("tools/list", {}), ("resources/list", {}), ("resources/templates/list", {}), ("prompts/list", {}),
        ("ping", {}),
        ("completion/complete", {"ref": {"type": "ref/prompt", "name": "cat__summary"},
                                 "argument": {"name": "topic", "value": "st"}}),
        ("resources/subscribe", {"uri": "stock://levels"}), ("resources/unsubscribe", {"uri": "stock://levels"})]
def limited(body: Any) -> bool:
    """Whether an answer is the gateway's rate_limited (an upstream's own errors may carry any `data`)."""
    data = (body.get("error") or {}).get("data") if isinstance(body, dict) else None
    return isinstance(data, dict) and data.get("reason") == "rate_limited"


CALLS = [("tools/call", {"name": "cat__lookup", "arguments": {"sku": "widget"}}),
         ("resources/read", {"uri": "stock://levels"}),
         ("prompts/get", {"name": "cat__summary", "arguments": {"topic": "stock"}})]


async def test_calls_take_tokens_and_lists_completions_subscriptions_and_ping_do_not(client: RawClient) -> None:
    ids = iter(range(1, 1000))

    async def send(method: str, params: dict[str, Any]) -> tuple[int, Any]:
        status, _, body = await client.post({"jsonrpc": "2.0", "id": next(ids), "method": method, "params": params})
        return status, body

    for method, params in CALLS:  # the burst of 3 spent one call at a time, with every free request around each
        for free, free_params in FREE * 2:
            status, body = await send(free, free_params)
            assert status == 200 and not limited(body), (free, body)
        status, body = await send(method, params)
        assert status == 200 and "result" in body, (method, body)
    for method, params in CALLS:  # the budget is spent: every kind of call is refused
        status, body = await send(method, params)
        assert status == 429 and limited(body), (method, body)
    for free, free_params in FREE:  # and nothing else is
        status, body = await send(free, free_params)
        assert status == 200 and not limited(body), (free, body)
