"""CORS: a browser agent on an allowed origin can call the gateway and read its answers; nobody else can.

`listen.allowed_origins` let a browser page's requests through the Origin guard, but the gateway sent no CORS
headers and answered no preflight (`OPTIONS` → 405), so a browser agent (the MCP Inspector's direct mode, a web
app) could neither send its `Authorization` / `Mcp-Session-Id` headers nor read an answer. Agent paths now
answer an allowed origin's preflight and name it in every answer, streamed ones too; a refused origin gets the
guard's 403 and no CORS header; the approvers' page and API are never shared with another origin.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.demo.servers import inventory_server
from tests.support.feature_server import feature_server
from tests.support.servers import run_http_server

AGENT_ORIGIN = "http://agent.example:3000"
INIT = {"jsonrpc": "2.0", "id": 0, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "web", "version": "1"}}}
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json",
               "Origin": AGENT_ORIGIN}


@pytest.fixture
async def gw(start_gateway: Any, permissive_policies: Path) -> Any:
    async with run_http_server(inventory_server()) as inventory, run_http_server(feature_server()[0]) as features:
        yield await start_gateway({
            "listen": {"allowed_origins": [AGENT_ORIGIN]},
            "upstreams": [{"name": "inventory", "url": inventory}, {"name": "features", "url": features}],
            "identity": {"mode": "anonymous", "anonymous_attributes": {"tenant": "acme"}},
            "policies": {"dir": str(permissive_policies), "watch": False}})


def preflight(origin: str, method: str = "POST", headers: str = "authorization,content-type,mcp-session-id"
              ) -> dict[str, str]:
    return {"Origin": origin, "Access-Control-Request-Method": method, "Access-Control-Request-Headers": headers}


async def test_an_allowed_origin_gets_its_preflight_answered_and_reads_every_answer(gw: Any) -> None:
    async with aiohttp.ClientSession() as http:
        for path in ("/mcp", "/mcp/inventory", "/.well-known/oauth-protected-resource/mcp"):
            async with http.options(f"{gw.url}{path}", headers=preflight(AGENT_ORIGIN)) as resp:
                assert resp.status == 204, (path, await resp.text())  # (on the old code: 405)
                assert resp.headers["Access-Control-Allow-Origin"] == AGENT_ORIGIN
                assert "POST" in resp.headers["Access-Control-Allow-Methods"]
                assert resp.headers["Access-Control-Allow-Headers"] == "authorization,content-type,mcp-session-id"
        async with http.post(gw.mcp, json=INIT, headers=MCP_HEADERS) as resp:
            assert resp.status == 200
            assert resp.headers["Access-Control-Allow-Origin"] == AGENT_ORIGIN
            assert "Mcp-Session-Id" in resp.headers["Access-Control-Expose-Headers"]
            assert "Origin" in resp.headers.getall("Vary")
            session = resp.headers["Mcp-Session-Id"]
        headers = {**MCP_HEADERS, "Mcp-Session-Id": session, "MCP-Protocol-Version": "2025-06-18"}
        # A streamed answer (SSE) is prepared by the handler itself: it carries the headers too.
        call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                "params": {"name": "inventory__get_stock", "arguments": {"sku": "widget"}}}
        async with http.post(gw.mcp, json=call, headers={**headers, "Accept": "text/event-stream, application/json"}
                             ) as resp:
            body = await resp.text()
            assert resp.status == 200 and resp.headers["Access-Control-Allow-Origin"] == AGENT_ORIGIN, body
            assert "widget: 42 in stock" in body
        # An error answer is readable too (the agent must see its reason).
        async with http.post(gw.mcp, json=call, headers={**MCP_HEADERS, "Mcp-Session-Id": "nope"}) as resp:
            assert resp.status == 404 and resp.headers["Access-Control-Allow-Origin"] == AGENT_ORIGIN
            assert json.loads(await resp.text())["error"]["data"]["reason"] == "session_not_found"


async def test_another_origin_gets_no_preflight_and_no_cors_header(gw: Any) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.options(gw.mcp, headers=preflight("http://evil.example")) as resp:
            assert resp.status == 403 and "Access-Control-Allow-Origin" not in resp.headers
        async with http.post(gw.mcp, json=INIT, headers={**MCP_HEADERS, "Origin": "http://evil.example"}) as resp:
            assert resp.status == 403 and "Access-Control-Allow-Origin" not in resp.headers
        async with http.post(gw.mcp, json=INIT, headers={k: v for k, v in MCP_HEADERS.items() if k != "Origin"}
                             ) as resp:  # no Origin (not a browser): nothing to share, nothing added
            assert resp.status == 200 and "Access-Control-Allow-Origin" not in resp.headers


async def test_the_approvers_page_and_api_are_not_shared_with_an_agents_origin(gw: Any) -> None:
    async with aiohttp.ClientSession() as http:
        for path in ("/api/approvals", "/approvals"):
            async with http.options(f"{gw.url}{path}", headers=preflight(AGENT_ORIGIN, "GET", "authorization")
                                    ) as resp:
                assert resp.status != 204 and "Access-Control-Allow-Origin" not in resp.headers, path
            async with http.get(f"{gw.url}{path}", headers={"Origin": AGENT_ORIGIN}) as resp:
                assert "Access-Control-Allow-Origin" not in resp.headers, path


async def test_every_stream_and_aiohttp_s_own_errors_carry_the_headers(gw: Any) -> None:
    """The guard names the origin on the answers it returns; streams are opened inside the handler and must name it
    themselves (the session's GET stream, legacy SSE's), and aiohttp's own errors (405, 404) are raised past it."""
    async with aiohttp.ClientSession() as http:
        async with http.post(gw.mcp, json=INIT, headers=MCP_HEADERS) as resp:
            session = resp.headers["Mcp-Session-Id"]
        stream_headers = {"Origin": AGENT_ORIGIN, "Accept": "text/event-stream", "Mcp-Session-Id": session,
                          "MCP-Protocol-Version": "2025-06-18"}
        legacy = {"Origin": AGENT_ORIGIN, "Accept": "text/event-stream"}
        for path, headers in (("/mcp", stream_headers), ("/sse", legacy)):
            async with http.get(f"{gw.url}{path}", headers=headers) as resp:
                assert resp.status == 200 and resp.content_type == "text/event-stream", path
                assert resp.headers.get("Access-Control-Allow-Origin") == AGENT_ORIGIN, path
                assert "Mcp-Session-Id" in resp.headers["Access-Control-Expose-Headers"], path
        # A call that reports progress is answered on a stream the call's channel opens.
        call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                "params": {"name": "features__progress", "arguments": {"steps": 2}, "_meta": {"progressToken": "p"}}}
        async with http.post(gw.mcp, json=call, headers={**stream_headers, "Content-Type": "application/json",
                                                          "Accept": "application/json, text/event-stream"}) as resp:
            body = await resp.text()
            assert resp.content_type == "text/event-stream" and "notifications/progress" in body, body
            assert resp.headers.get("Access-Control-Allow-Origin") == AGENT_ORIGIN
        async with http.put(gw.mcp, json=INIT, headers=MCP_HEADERS) as resp:
            assert resp.status == 405 and resp.headers.get("Access-Control-Allow-Origin") == AGENT_ORIGIN
        async with http.post(f"{gw.url}/mcp/nosuch/extra", json=INIT, headers=MCP_HEADERS) as resp:
            assert resp.status == 404 and resp.headers.get("Access-Control-Allow-Origin") == AGENT_ORIGIN


async def test_answers_made_before_any_handler_name_an_allowed_origin(gw: Any) -> None:
    """A body over `listen.max_body_bytes` (413) is refused by /mcp, behind the guard; a header longer than the
    gateway reads is refused by aiohttp's parser before any route (a text/plain 400, on a request of its own with
    none of the real one's headers): it named no origin, so a browser agent could not read either reason."""
    async with aiohttp.ClientSession() as http:
        too_large = b"x" * (gw.config.listen.max_body_bytes + 1)
        async with http.post(gw.mcp, data=too_large, headers=MCP_HEADERS) as resp:
            assert resp.status == 413 and resp.headers.get("Access-Control-Allow-Origin") == AGENT_ORIGIN
        long_header = {"X-Padding": "x" * (20 * 1024)}
        for origin in (AGENT_ORIGIN, "http://evil.example"):
            async with http.post(gw.mcp, json=INIT, headers={**MCP_HEADERS, **long_header, "Origin": origin}) as resp:
                assert resp.status == 400, await resp.text()
                named = resp.headers.get("Access-Control-Allow-Origin")
                assert named == (AGENT_ORIGIN if origin == AGENT_ORIGIN else None), (origin, resp.headers)
        async with http.post(f"{gw.url}/api/approvals/x/approve", json={},  # the approvers' API: never shared
                             headers={**MCP_HEADERS, **long_header}) as resp:
            assert resp.status == 400 and "Access-Control-Allow-Origin" not in resp.headers
