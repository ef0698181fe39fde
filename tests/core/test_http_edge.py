"""Hostile and malformed HTTP at the edge: each gets a clear error and nothing reaches an upstream."""

from __future__ import annotations

import asyncio
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


@pytest.fixture
async def gw(start_gateway, permissive_policies) -> AsyncIterator[Any]:
    async with run_http_server(inventory_server()) as url:
        yield await start_gateway({"upstreams": [{"name": "inventory", "url": url}],
                                   "policies": {"dir": str(permissive_policies)},
                                   "listen": {"max_body_bytes": 4096, "allowed_origins": ["https://ok.example"]}})


async def post(http: aiohttp.ClientSession, url: str, body: Any, headers: dict[str, str] | None = None,
               raw: bytes | None = None) -> tuple[int, dict[str, Any], Any]:
    data = raw if raw is not None else json.dumps(body).encode()
    async with http.post(url, data=data, headers={**ACCEPT, **(headers or {})}) as resp:
        text = await resp.text()
        try:
            payload = json.loads(text)
        except ValueError:
            payload = text
        return resp.status, dict(resp.headers), payload


async def session_id(http: aiohttp.ClientSession, url: str) -> str:
    status, headers, body = await post(http, url, INIT)
    assert status == 200, body
    return headers["Mcp-Session-Id"]


def reason(body: Any) -> str:
    return str(body["error"]["data"]["reason"])


async def test_initialize_gives_a_long_random_session_id(gw, http):
    ids = {await session_id(http, gw.mcp) for _ in range(3)}
    assert len(ids) == 3
    assert all(len(bytes.fromhex(i)) * 8 >= 128 for i in ids)


async def test_wrong_content_type_is_415(gw, http):
    status, _, body = await post(http, gw.mcp, INIT, headers={"Content-Type": "text/plain"})
    assert status == 415 and reason(body) == "unsupported_media_type"


async def test_oversized_body_is_413(gw, http):
    big = {**INIT, "params": {**INIT["params"], "pad": "x" * 10_000}}
    status, _, body = await post(http, gw.mcp, big)
    assert status == 413 and reason(body) == "body_too_large"


@pytest.mark.parametrize(("raw", "status", "code", "why"), [
    (b"{oops", 400, -32700, "parse_error"),
    (b"\xc3\x28", 400, -32700, "parse_error"),
    (b'[{"jsonrpc":"2.0","id":1,"method":"ping"}]', 400, -32600, "batch_not_supported"),
    (b'{"jsonrpc":"2.0","id":1}', 400, -32600, "invalid_request"),
    (b'{"jsonrpc":"2.0","id":1,"method":"x","params":' + b'{"a":' * 80 + b"1" + b"}" * 80 + b"}", 400, -32600,
     "invalid_request"),
])
async def test_malformed_json_rpc(gw, http, raw, status, code, why):
    got, _, body = await post(http, gw.mcp, None, raw=raw)
    assert got == status
    assert body["error"]["code"] == code and reason(body) == why


async def test_missing_and_unknown_sessions(gw, http):
    ping = {"jsonrpc": "2.0", "id": 2, "method": "ping"}
    status, _, body = await post(http, gw.mcp, ping)
    assert status == 400 and reason(body) == "session_required"
    status, _, body = await post(http, gw.mcp, ping, headers={"Mcp-Session-Id": "00" * 32})
    assert status == 404 and reason(body) == "session_not_found"
    sid = await session_id(http, gw.mcp)
    status, _, body = await post(http, gw.mcp, ping, headers={"Mcp-Session-Id": sid})
    assert status == 200 and body == {"jsonrpc": "2.0", "id": 2, "result": {}}
    # A session of the aggregated view is not a session of a pass-through view.
    status, _, body = await post(http, f"{gw.mcp}/inventory", ping, headers={"Mcp-Session-Id": sid})
    assert status == 404
    async with http.delete(gw.mcp, headers={"Mcp-Session-Id": sid}) as resp:
        assert resp.status == 200
    status, _, body = await post(http, gw.mcp, ping, headers={"Mcp-Session-Id": sid})
    assert status == 404 and reason(body) == "session_not_found"


async def test_origin_and_host_checks(gw, http):
    status, _, body = await post(http, gw.mcp, INIT, headers={"Origin": "https://evil.example"})
    assert status == 403 and reason(body) == "origin_forbidden"
    status, _, _ = await post(http, gw.mcp, INIT, headers={"Origin": "https://ok.example"})
    assert status == 200
    status, _, body = await post(http, gw.mcp, INIT, headers={"Host": "attacker.example:8700"})
    assert status == 403 and reason(body) == "host_forbidden"


@pytest.mark.parametrize("host", ["127.0.0.1:8700@attacker.example", "127.0.0.1:8700, attacker.example",
                                  "localhost:http", "[::1]:8700@attacker.example", "[::1]x"])
async def test_a_host_header_that_is_no_host_and_port_is_refused(gw, http, host):
    """Only the text before the last colon was compared, whatever followed it: a listed host with any tail was
    served (RFC 9110 §7.2: a Host that is not uri-host [":" port] is refused)."""
    status, _, body = await post(http, gw.mcp, INIT, headers={"Host": host})
    assert status == 403 and reason(body) == "host_forbidden", host


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.1:8700", "LOCALHOST:1", "[::1]", "[::1]:8700"])
async def test_a_listed_host_with_or_without_a_port_is_served(gw, http, host):
    status, _, body = await post(http, gw.mcp, INIT, headers={"Host": host})
    assert status == 200, (host, body)


async def test_protocol_version_header(gw, http):
    sid = await session_id(http, gw.mcp)
    ping = {"jsonrpc": "2.0", "id": 2, "method": "ping"}
    status, _, body = await post(http, gw.mcp, ping, headers={"Mcp-Session-Id": sid,
                                                               "MCP-Protocol-Version": "1999-01-01"})
    assert status == 400 and reason(body) == "unsupported_protocol_version"


async def test_stateless_revision_header_mismatch(gw, http):
    meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {}}
    call = {"jsonrpc": "2.0", "id": 5, "method": "tools/call",
            "params": {"name": "inventory__get_stock", "arguments": {"sku": "widget"}, "_meta": meta}}
    headers = {"MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/call", "Mcp-Name": "inventory__get_stock"}
    status, _, body = await post(http, gw.mcp, call, headers=headers)
    assert status == 200, body
    assert body["result"]["content"][0]["text"] == "widget: 42 in stock"
    status, _, body = await post(http, gw.mcp, call, headers={**headers, "Mcp-Name": "inventory__set_stock"})
    assert status == 400 and body["error"]["code"] == -32020
    status, _, body = await post(http, gw.mcp, call, headers={**headers, "Mcp-Method": "tools/list"})
    assert status == 400 and body["error"]["code"] == -32020


async def test_get_stream_and_notifications(gw, http):
    sid = await session_id(http, gw.mcp)
    status, _, _ = await post(http, gw.mcp, {"jsonrpc": "2.0", "method": "notifications/initialized"},
                              headers={"Mcp-Session-Id": sid})
    assert status == 202
    async with http.get(gw.mcp, headers={"Accept": "application/json"}) as resp:
        assert resp.status == 406
    async with http.get(gw.mcp, headers={"Accept": "text/event-stream", "Mcp-Session-Id": sid}) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")


@pytest.mark.parametrize("request_id", [[1], {"a": 1}, None, 1.5, True])
async def test_cancellation_naming_no_possible_id_is_accepted_and_ignored(gw, http, request_id):
    # An unhashable requestId used to raise TypeError looking up the calls in flight: a 500.
    sid = await session_id(http, gw.mcp)
    cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": request_id}}
    status, _, body = await post(http, gw.mcp, cancel, headers={"Mcp-Session-Id": sid})
    assert status == 202, body


async def test_unknown_upstream_path_is_404(gw, http):
    status, _, body = await post(http, f"{gw.mcp}/nope", INIT)
    assert status == 404 and reason(body) == "unknown_upstream"


async def test_healthz_and_readyz(gw, http):
    async with http.get(f"{gw.url}/healthz") as resp:
        assert resp.status == 200
    async with http.get(f"{gw.url}/readyz") as resp:
        body = await resp.json()
        assert resp.status == 200, body
        assert body["upstreams"]["inventory"]["ready"] is True


async def _events(resp: aiohttp.ClientResponse, count: int) -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    event_id = ""
    while len(out) < count:
        line = (await asyncio.wait_for(resp.content.readline(), 10)).decode().rstrip("\n")
        if line.startswith("id: "):
            event_id = line[4:]
        elif line.startswith("data: "):
            out.append((event_id, json.loads(line[6:])))
    return out


async def test_session_stream_resumes_with_last_event_id(gw, http):
    sid = await session_id(http, gw.mcp)
    principal = await gw.gateway.parts.identifier.identify({}, None)
    session = gw.gateway.sessions.get(sid, principal, None)
    note = {"jsonrpc": "2.0", "method": "notifications/message"}
    session.stream_event({**note, "params": {"n": 1}})  # sent while no stream is open
    headers = {"Accept": "text/event-stream", "Mcp-Session-Id": sid}
    async with http.get(gw.mcp, headers={**headers, "Last-Event-ID": "0-0"}) as resp:  # GET stream, from the start
        [(first_id, first)] = await _events(resp, 1)
        assert first["params"] == {"n": 1}
    deadline = asyncio.get_running_loop().time() + 10
    while session.get_stream_open:  # the server notices the closed stream on its next write or keep-alive
        session.stream_event({**note, "params": {"n": "probe"}})
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.01)
    session.stream_event({**note, "params": {"n": 2}})
    session.stream_event({**note, "params": {"n": 3}})
    async with http.get(gw.mcp, headers={**headers, "Last-Event-ID": first_id}) as resp:
        received = [m["params"]["n"] for _, m in await _events(resp, len(session.replay) - 1)]
    assert received[-2:] == [2, 3] and 1 not in received


@pytest.mark.parametrize(("method", "path", "allow"), [
    ("PUT", "/mcp", "DELETE,GET,POST"), ("PATCH", "/mcp/inventory", "DELETE,GET,POST"),
    ("OPTIONS", "/mcp/", "DELETE,GET,POST"), ("POST", "/sse", "GET"), ("GET", "/messages", "POST"),
])
async def test_an_http_method_an_agent_path_does_not_take_is_a_json_rpc_error(gw, http, method, path, allow):
    """The MCP paths answered a method they do not take with aiohttp's text/plain `405: Method Not Allowed`, the
    one refusal there that was no JSON-RPC error with a `data.reason` (issue 2: every failure is one); as the SDK's
    own server answers it: 405, `Allow`, a JSON-RPC error."""
    async with http.request(method, f"{gw.url}{path}", json=INIT, headers=ACCEPT) as resp:
        assert resp.status == 405 and resp.content_type == "application/json", await resp.text()
        assert resp.headers["Allow"] == allow
        body = await resp.json()
    assert body["id"] is None and body["error"]["code"] == -32600 and reason(body) == "method_not_allowed", body


async def test_operator_paths_keep_aiohttps_405(gw, http):
    async with http.post(f"{gw.url}/healthz") as resp:
        assert resp.status == 405 and resp.content_type == "text/plain" and "GET" in resp.headers["Allow"]
