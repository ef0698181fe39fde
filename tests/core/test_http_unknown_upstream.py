"""A path `/mcp/<name>` naming no upstream: its refusal answers the request's own id when the body can be read."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from gateway.demo.servers import inventory_server
from tests.support.servers import run_http_server

pytestmark = pytest.mark.asyncio

INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
CALL = {"jsonrpc": "2.0", "id": 41, "method": "tools/call",
        "params": {"name": "inventory__get_stock", "arguments": {"sku": "A-1"}}}


@pytest.fixture
async def gw(start_gateway, permissive_policies) -> AsyncIterator[Any]:
    async with run_http_server(inventory_server()) as url:
        yield await start_gateway({"upstreams": [{"name": "inventory", "url": url}],
                                   "policies": {"dir": str(permissive_policies)}})


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def post(http: aiohttp.ClientSession, url: str, raw: bytes,
               headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    async with http.post(url, data=raw, headers={**ACCEPT, **(headers or {})}) as resp:
        text = await resp.text()
        try:
            payload = json.loads(text)
        except ValueError:
            payload = text
        return resp.status, dict(resp.headers), payload


def reason(body: Any) -> Any:
    return body["error"]["data"]["reason"] if isinstance(body, dict) and "error" in body else body


@pytest.mark.parametrize(("raw", "answered_id"), [
    (json.dumps(CALL).encode(), 41),
    (json.dumps({**CALL, "id": "call-7"}).encode(), "call-7"),
    (json.dumps(INIT).encode(), 1),
    (b'{"jsonrpc": "2.0", "id": 9}', 9),  # malformed, but its id reads: as its invalid_request would answer
    # Not a request: nothing to answer with an id. A notification is refused as the gateway refuses any
    # notification at the HTTP level (session_required, unauthenticated): the error, id null (MCP: no id).
    (json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}).encode(), None),
    (json.dumps({"jsonrpc": "2.0", "id": 3, "result": {}}).encode(), None),
    (b"{oops", None),
    (b'[{"jsonrpc": "2.0", "id": 1, "method": "ping"}]', None),
    (b"", None),
])
async def test_an_unknown_upstream_answers_with_the_request_id(gw, http, raw, answered_id):
    """`/mcp/<name>` naming no upstream was refused before the body was read: id null, so a client waiting on
    its id never matched the answer to its call."""
    for path in ("nosuchupstream", "nosuchupstream/"):
        status, _, body = await post(http, f"{gw.mcp}/{path}", raw)
        assert status == 404 and reason(body) == "unknown_upstream", body
        assert body["error"]["code"] == -32019 and body["error"]["message"] == "Unknown upstream: nosuchupstream"
        assert "id" in body and body["id"] == answered_id, body


async def test_an_unknown_upstream_reads_no_more_than_the_body_limit(start_gateway, permissive_policies, http):
    async with run_http_server(inventory_server()) as url:
        gw = await start_gateway({"upstreams": [{"name": "inventory", "url": url}],
                                  "policies": {"dir": str(permissive_policies)}, "listen": {"max_body_bytes": 4096}})
        big = json.dumps({**CALL, "params": {**CALL["params"], "pad": "x" * 10_000}}).encode()
        status, _, body = await post(http, f"{gw.mcp}/nosuchupstream", big)
        assert status == 404 and reason(body) == "unknown_upstream" and body["id"] is None, body
        status, _, body = await post(http, f"{gw.mcp}/inventory", json.dumps(INIT).encode())  # still served
        assert status == 200, body
