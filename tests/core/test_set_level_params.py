"""`logging/setLevel` with a level MCP does not define is refused by the gateway itself, `invalid_params`
(-32602) in both views, as the SDK's own server refuses it (real gateway, real SDK upstream, raw HTTP)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.support.feature_server import feature_server
from tests.support.servers import SeenRequest, run_http_server

pytestmark = pytest.mark.asyncio
HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}


@pytest.fixture
async def gw(start_gateway: Any, permissive_policies: Any) -> AsyncIterator[tuple[Any, list[SeenRequest]]]:
    seen: list[SeenRequest] = []
    async with run_http_server(feature_server()[0], requests=seen) as url:
        gateway = await start_gateway({"upstreams": [{"name": "features", "url": url}],
                                       "policies": {"dir": str(permissive_policies)}})
        yield gateway, seen


async def ask(http: aiohttp.ClientSession, url: str, params: Any) -> dict[str, Any]:
    async with http.post(url, json=INIT, headers=HEADERS) as resp:
        sid = resp.headers["Mcp-Session-Id"]
    message = {"jsonrpc": "2.0", "id": 2, "method": "logging/setLevel", "params": params}
    async with http.post(url, json=message, headers={**HEADERS, "Mcp-Session-Id": sid}) as resp:
        assert resp.status == 200
        body: dict[str, Any] = await resp.json()
        return body


@pytest.mark.parametrize("view", ["", "/features"])
@pytest.mark.parametrize("params", [{"level": "loud"}, {}, {"level": 3}, {"level": None}])
async def test_an_unknown_level_is_invalid_params(gw: tuple[Any, list[SeenRequest]], view: str, params: Any) -> None:
    gateway, seen = gw
    async with aiohttp.ClientSession() as http:
        body = await ask(http, gateway.mcp + view, params)
        # The aggregated view answered {} (every upstream's refusal was swallowed), as if the level were set.
        assert body["error"]["code"] == -32602 and body["error"]["data"]["reason"] == "invalid_params", body
        posts = sum(1 for r in seen if r.method == "POST")
        await ask(http, gateway.mcp + view, {"level": "debug"})  # (this SDK server has no setLevel: its own error)
    assert sum(1 for r in seen if r.method == "POST") > posts + 2  # a valid level does reach it (after initialize)
