"""Stateless (2026-07-28) `server/discover` describes the server as the handshake's `initialize` does: on
`/mcp/{upstream}` the upstream itself (its name, its instructions, its capabilities, less what that revision cannot
deliver), on `/mcp` the gateway. It answered the gateway's aggregated capabilities and no instructions on every
path (`completions` and `logging` promised for upstreams without them, the upstream's instructions lost), and its
`serverInfo` stood beside the result instead of in `_meta` (`io.modelcontextprotocol/serverInfo`), where that
revision carries it and the SDK's client reads it (it saw no server identity). Real gateway, real SDK upstreams."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.demo.servers import inventory_server
from tests.support.mcp_client import sdk_client
from tests.support.servers import run_http_server

pytestmark = pytest.mark.asyncio
META = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}


@pytest.fixture
async def gateway_url(start_gateway: Any, permissive_policies: Path) -> AsyncIterator[str]:
    async with run_http_server(inventory_server()) as url:
        gw = await start_gateway({"upstreams": [{"name": "inventory", "url": url}], "identity": {"mode": "anonymous"},
                                  "policies": {"dir": str(permissive_policies)}})
        yield gw.mcp


async def discover(url: str) -> dict[str, Any]:
    headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json",
               "MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "server/discover"}
    body = {"jsonrpc": "2.0", "id": 1, "method": "server/discover", "params": {"_meta": META}}
    async with aiohttp.ClientSession() as http, http.post(url, data=json.dumps(body), headers=headers) as resp:
        assert resp.status == 200
        result: dict[str, Any] = json.loads(await resp.text())["result"]
        return result


@pytest.mark.parametrize("view", ["/inventory", ""], ids=["pass-through", "aggregated"])
async def test_discover_tells_what_initialize_tells(gateway_url: str, view: str) -> None:
    url = gateway_url + view
    async with sdk_client(url, mode="legacy") as handshake:
        name, instructions = handshake.server_info.name, handshake.instructions
        promised = handshake.server_capabilities.model_dump(exclude_none=True)
    async with sdk_client(url, mode="auto") as stateless:
        assert stateless.protocol_version == "2026-07-28"
        assert stateless.server_info is not None and stateless.server_info.name == name
        assert stateless.instructions == instructions
        capabilities = stateless.server_capabilities.model_dump(exclude_none=True)
    assert capabilities.keys() == promised.keys()  # e.g. no completions or logging the upstream never offered
    assert name == ("inventory" if view else "customs") and instructions


async def test_the_stateless_revision_promises_no_change_notifications_on_a_view(gateway_url: str) -> None:
    result = await discover(gateway_url + "/inventory")
    assert result["supportedVersions"] == ["2026-07-28"] and result["resultType"] == "complete"
    assert result["_meta"]["io.modelcontextprotocol/serverInfo"]["name"] == "inventory"
    assert "serverInfo" not in result
    caps = result["capabilities"]
    assert not any(caps[kind].get("listChanged") for kind in ("tools", "prompts", "resources"))
    assert not caps["resources"].get("subscribe")
