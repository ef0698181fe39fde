"""Errors answering stateless (2026-07-28) requests carry the HTTP status that revision gives their
JSON-RPC code (the SDK's `ERROR_CODE_HTTP_STATUS`: -32601 is 404, -32602 and -32600 are 400), whoever
produced them, as the SDK's own server answers them; the handshake revisions keep HTTP 200. A denied
tool still answers exactly as an unknown one (real gateway, real SDK upstream, raw HTTP and the SDK's
stateless client)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from mcp.shared.exceptions import MCPError

from gateway.demo.servers import inventory_server
from tests.conftest import REPO
from tests.support.mcp_client import sdk_client
from tests.support.servers import run_http_server

pytestmark = pytest.mark.asyncio
META = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}
ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


@pytest.fixture
async def mcp_url(start_gateway: Any, tmp_path: Path) -> AsyncIterator[str]:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "schema.cedarschema").write_text((REPO / "policies" / "schema.cedarschema").read_text())
    (policies / "p.cedar").write_text(
        '@id("allow-all")\npermit(principal, action, resource);\n'
        '@id("no-set") forbid(principal, action == Action::"call_tool", resource)\n'
        '  when { resource.name == "set_stock" };\n')
    async with run_http_server(inventory_server()) as url:
        gw = await start_gateway({"upstreams": [{"name": "inventory", "url": url}], "identity": {"mode": "anonymous"},
                                  "policies": {"dir": str(policies)}})
        yield gw.mcp


async def post(url: str, method: str, params: dict[str, Any], headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    body = {"jsonrpc": "2.0", "id": 3, "method": method, "params": params}
    async with aiohttp.ClientSession() as http, \
            http.post(url, data=json.dumps(body), headers={**ACCEPT, **headers}) as resp:
        reply: dict[str, Any] = json.loads(await resp.text())
        return resp.status, reply


async def stateless(url: str, method: str, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    name = params.get("name") or params.get("uri")
    headers = {"MCP-Protocol-Version": "2026-07-28", "Mcp-Method": method, **({"Mcp-Name": name} if name else {})}
    return await post(url, method, {**params, "_meta": META}, headers)


@pytest.mark.parametrize(("method", "params", "status", "code"), [
    ("nosuch/method", {}, 404, -32601),
    ("tools/call", {"name": "inventory__nope", "arguments": {}}, 400, -32602),
    ("tools/call", {"name": "inventory__set_stock", "arguments": {"sku": "w", "quantity": 1}}, 400, -32602),
])
async def test_stateless_errors_use_the_revisions_status(mcp_url: str, method: str, params: dict[str, Any],
                                                         status: int, code: int) -> None:
    got, reply = await stateless(mcp_url, method, params)
    assert (got, reply["error"]["code"]) == (status, code), reply
    assert reply["id"] == 3


async def test_successes_and_tool_errors_stay_200(mcp_url: str) -> None:
    got, reply = await stateless(mcp_url, "tools/call", {"name": "inventory__get_stock", "arguments": {"sku": 5}})
    assert got == 200 and reply["result"]["isError"] is True


async def test_handshake_revisions_keep_200(mcp_url: str) -> None:
    init = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}
    async with aiohttp.ClientSession() as http, http.post(mcp_url, headers=ACCEPT, data=json.dumps(
            {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": init})) as resp:
        session = resp.headers["Mcp-Session-Id"]
    got, reply = await post(mcp_url, "nosuch/method", {}, {"Mcp-Session-Id": session})
    assert (got, reply["error"]["code"]) == (200, -32601)


async def test_the_sdk_stateless_client_reads_the_error(mcp_url: str) -> None:
    async with sdk_client(mcp_url, mode="auto") as client:
        assert client.protocol_version == "2026-07-28"
        with pytest.raises(MCPError) as info:
            await client.call_tool("inventory__set_stock", {"sku": "w", "quantity": 1})
        assert info.value.code == -32602 and info.value.error.message == "Unknown tool: inventory__set_stock"
