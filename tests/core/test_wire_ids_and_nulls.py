"""What the SDK's own servers accept on the wire, the gateway accepts too (`params: null`, `arguments: null`,
Accept media ranges, a trailing slash), and an invalid request is answered with its own id."""

from __future__ import annotations

import json

import pytest
from mcp import Client
from mcp.client.sse import sse_client

from tests.core.test_http_edge import INIT, post, session_id
from tests.support.mcp_client import sdk_client

pytestmark = pytest.mark.asyncio


@pytest.mark.parametrize("path", ["", "/inventory"])
async def test_null_params_and_null_arguments_mean_none(gw, http, path):
    url = gw.mcp + path
    sid = await session_id(http, url)
    headers = {"Mcp-Session-Id": sid, "MCP-Protocol-Version": INIT["params"]["protocolVersion"]}
    status, _, body = await post(http, url, {"jsonrpc": "2.0", "id": 0, "method": "ping", "params": None}, headers)
    assert status == 200 and body == {"jsonrpc": "2.0", "id": 0, "result": {}}
    status, _, body = await post(http, url, {"jsonrpc": "2.0", "id": "l", "method": "tools/list", "params": None},
                                 headers)
    assert status == 200 and body["id"] == "l" and body["result"]["tools"], body
    name = "inventory__list_skus" if path == "" else "list_skus"
    call = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": name, "arguments": None}}
    status, _, body = await post(http, url, call, headers)
    assert status == 200 and body["result"]["structuredContent"] == {"result": ["gadget", "gizmo", "widget"]}, body


async def test_null_params_member_of_a_batch_is_answered(gw, http):
    init = {**INIT, "params": {**INIT["params"], "protocolVersion": "2025-03-26"}}
    status, headers, _ = await post(http, gw.mcp, init)
    assert status == 200
    sid = headers["Mcp-Session-Id"]
    batch = [{"jsonrpc": "2.0", "id": 1, "method": "ping", "params": None},
             {"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": None}]
    status, _, body = await post(http, gw.mcp, batch, {"Mcp-Session-Id": sid})
    assert status == 200
    assert sorted(reply["id"] for reply in body) == [1, 2] and all("result" in reply for reply in body), body


@pytest.mark.parametrize(("body", "request_id"), [
    ({"jsonrpc": "1.0", "id": 11, "method": "ping"}, 11),
    ({"jsonrpc": "2.0", "id": "s", "method": "tools/list", "params": [1]}, "s"),
    ({"jsonrpc": "2.0", "id": 0, "method": "notifications/x"}, 0),
    ({"jsonrpc": "2.0", "id": 5, "method": "ping", "params": {"_meta": 3}}, 5),
    ({"jsonrpc": "2.0", "id": [1], "method": "ping"}, None),  # an id that cannot be used is answered as null
    ({"jsonrpc": "2.0", "id": 3, "result": {}, "error": {}}, None),  # a response is never answered with its id
])
async def test_an_invalid_request_is_answered_with_its_own_id(gw, http, body, request_id):
    """JSON-RPC: id null only when the id cannot be read; a client waiting on its id must get the error."""
    sid = await session_id(http, gw.mcp)
    status, _, reply = await post(http, gw.mcp, body, {"Mcp-Session-Id": sid})
    assert status == 400 and reply["error"]["data"]["reason"] == "invalid_request", reply
    assert reply["id"] == request_id


async def test_an_invalid_batch_member_is_answered_with_its_own_id(gw, http):
    init = {**INIT, "params": {**INIT["params"], "protocolVersion": "2025-03-26"}}
    _, headers, _ = await post(http, gw.mcp, init)
    batch = [{"jsonrpc": "2.0", "id": 1, "method": "ping"}, {"jsonrpc": "2.0", "id": "bad", "method": 7},
             {"jsonrpc": "2.0", "id": 2, "method": "ping", "params": "x"}]
    status, _, body = await post(http, gw.mcp, batch, {"Mcp-Session-Id": headers["Mcp-Session-Id"]})
    assert status == 200
    errors = {reply["id"]: reply["error"]["data"]["reason"] for reply in body if "error" in reply}
    assert errors == {"bad": "invalid_request", 2: "invalid_request"}, body


async def test_legacy_sse_invalid_request_is_answered_with_its_own_id(gw, http):
    async with http.get(f"{gw.url}/sse") as stream:
        endpoint = ""
        async for line in stream.content:
            if line.startswith(b"data:"):
                endpoint = line[5:].strip().decode()
                break
        status, _, reply = await post(http, f"{gw.url}{endpoint}", {"jsonrpc": "2.0", "id": 9, "method": ""})
    assert status == 400 and reply["id"] == 9 and reply["error"]["code"] == -32600, reply


@pytest.mark.parametrize(("accept", "json_ok", "sse_ok"), [
    ("*/*", True, True), ("application/*, text/*", True, True), ("application/*", True, False),
    ("text/*", False, True), ("application/json;q=0.9, text/event-stream", True, True), ("text/html", False, False),
    # q=0 is "not acceptable" (RFC 9110 §12.5.1), and the most specific range decides (§12.5.1: text/event-stream;q=0
    # refuses SSE whatever */* says); q=0 used to count as acceptance.
    ("application/json, text/event-stream;q=0", True, False), ("application/json;q=0, text/event-stream", False, True),
    ("*/*, text/event-stream;q=0", True, False), ("*/*;q=0, application/json", True, False),
    ("application/json; q=0.000, text/event-stream;Q=0", False, False), ("text/*;q=0, text/event-stream", False, True),
])
async def test_accept_media_ranges_count_as_http_defines_them(gw, http, accept, json_ok, sse_ok):
    sid = await session_id(http, gw.mcp)
    ping = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "ping"})
    headers = {"Content-Type": "application/json", "Accept": accept, "Mcp-Session-Id": sid}
    async with http.post(gw.mcp, data=ping, headers=headers) as resp:
        assert resp.status == (200 if json_ok else 406), await resp.text()
    async with http.get(gw.mcp, headers={"Accept": accept, "Mcp-Session-Id": sid}) as resp:
        assert resp.status == (200 if sse_ok else 406)
        if sse_ok:
            assert resp.headers["Content-Type"].startswith("text/event-stream")


@pytest.mark.parametrize(("path", "tool"), [("/", "inventory__get_stock"), ("/inventory/", "get_stock")])
async def test_a_trailing_slash_names_the_same_endpoint(gw, path, tool):
    """`/mcp/` and `/mcp/inventory/` are the endpoints without the slash (the SDK's server redirects there)."""
    async with sdk_client(gw.mcp + path) as client:
        assert tool in {t.name for t in (await client.list_tools()).tools}
        result = await client.call_tool(tool, {"sku": "widget"})
        assert result.content[0].text == "widget: 42 in stock"
    async with Client(sse_client(f"{gw.url}/sse{path}"), mode="legacy") as legacy:
        assert tool in {t.name for t in (await legacy.list_tools()).tools}


@pytest.mark.parametrize("method", ["GET", "DELETE"])
async def test_the_stateless_revision_has_only_post(gw, http, method):
    """Under 2026-07-28 there is no session to stream or end: GET and DELETE are 405 (Allow: POST), as the SDK's
    server answers them, and a handshake session named alongside is left alone."""
    sid = await session_id(http, gw.mcp)
    headers = {"MCP-Protocol-Version": "2026-07-28", "Accept": "text/event-stream", "Mcp-Session-Id": sid}
    for path in ("", "/inventory"):
        async with http.request(method, gw.mcp + path, headers=headers) as resp:
            assert resp.status == 405 and resp.headers["Allow"] == "POST", await resp.text()
    status, _, body = await post(http, gw.mcp, {"jsonrpc": "2.0", "id": 1, "method": "ping"}, {"Mcp-Session-Id": sid})
    assert status == 200 and body["result"] == {}
