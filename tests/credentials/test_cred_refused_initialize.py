"""An upstream that refuses the gateway's `initialize` quoting the key it was sent ("invalid API key sk-…", a common
answer) does not hand that key to the agent: the gateway's upstream_error names the upstream's refusal (its message
and, in `data.upstream_error`, its error) with the secrets the gateway holds taken out, as from any answer of the
upstream. Real gateway, a raw aiohttp upstream, real SDK agent.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.support.servers import run_aiohttp
from tests.transport.conftest import eventually

KEY = "sk-static-Qw3rTy-9f8e7d6c"


async def refuse(request: web.Request) -> web.Response:
    """Refuse every initialize, quoting the Authorization header it got."""
    message = json.loads(await request.read())
    if "id" not in message:
        return web.Response(status=202)
    given = request.headers.get("Authorization", "")
    return web.json_response({"jsonrpc": "2.0", "id": message["id"],
                              "error": {"code": -32001, "message": f"invalid API key {given}",
                                        "data": {"authorization": given, "hint": f"{KEY} is revoked"}}})


INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                   "clientInfo": {"name": "agent", "version": "1"}}}
ACCEPT = {"Accept": "application/json, text/event-stream"}


async def test_a_refused_initialize_does_not_quote_the_key_to_the_agent(
        start_gateway: Any, permissive_policies: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REFUSED_KEY", KEY)
    app = web.Application()
    app.router.add_post("/mcp", refuse)
    async with run_aiohttp(app) as base:
        gw = await start_gateway({
            "upstreams": [{"name": "refusing", "url": f"{base}/mcp",
                           "credentials": {"mode": "static", "value_env": "REFUSED_KEY", "value_prefix": "Bearer "}}],
            "identity": {"mode": "anonymous"}, "policies": {"dir": str(permissive_policies)}})
        async with aiohttp.ClientSession() as http:
            # /mcp/{upstream} opens the upstream's session at the agent's initialize and answers its refusal.
            async with http.post(f"{gw.mcp}/refusing", json=INIT, headers=ACCEPT) as response:
                answer = await response.json()
    error = answer["error"]
    # (on the old code: "upstream rejected initialize: invalid API key Bearer sk-static-…", the same in data)
    assert KEY not in json.dumps(answer), answer
    assert error["data"]["reason"] == "upstream_error", error
    assert error["message"] == "upstream rejected initialize: invalid API key Bearer [REDACTED]", error
    assert error["data"]["upstream_error"]["data"] == {"authorization": "Bearer [REDACTED]",
                                                       "hint": "[REDACTED] is revoked"}, error


REFUSING_CHILD = """
import json, os, sys
for line in sys.stdin:
    message = json.loads(line)
    if "id" in message:
        error = {"code": -32001, "message": "invalid API key " + os.environ["SERVICE_API_KEY"]}
        print(json.dumps({"jsonrpc": "2.0", "id": message["id"], "error": error}), flush=True)
"""


async def test_a_stdio_child_refusing_initialize_does_not_quote_its_key_in_readyz_or_to_the_agent(
        start_gateway: Any, permissive_policies: Path, tmp_path: Path) -> None:
    # Its env key is the gateway's secret (test_cred_configured_secrets.py); its refusal used to be the child's
    # health detail, which /readyz shows anyone who can reach it, and the agent's upstream_unavailable quoted it.
    child = tmp_path / "refusing_child.py"
    child.write_text(REFUSING_CHILD)
    gw = await start_gateway({
        "upstreams": [{"name": "refusing", "command": [sys.executable, str(child)], "timeout_s": 1,
                       "env": {"SERVICE_API_KEY": KEY}}],
        "identity": {"mode": "anonymous"}, "policies": {"dir": str(permissive_policies)}})
    upstream = gw.gateway.parts.upstreams["refusing"]
    await eventually(lambda: "initialize failed" in upstream.health().detail)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{gw.url}/readyz") as response:
            ready = await response.text()
        async with http.post(f"{gw.mcp}/refusing", json=INIT, headers=ACCEPT) as response:
            answer = await response.text()
    assert "initialize failed" in ready and "-32001" in ready, ready
    # (on the old code both quoted "invalid API key k…")
    assert KEY not in ready and "invalid API key" not in ready, ready
    assert KEY not in answer, answer


class Forgetful:
    """A raw streamable HTTP upstream that forgets its session after listing its tools (404), then refuses a new
    initialize quoting the Authorization header it got, as one whose key was revoked meanwhile would."""

    def __init__(self) -> None:
        self.opened = 0

    async def handle(self, request: web.Request) -> web.Response:
        message = json.loads(await request.read())
        if "id" not in message:
            return web.Response(status=202)
        if message["method"] == "initialize":
            self.opened += 1
            if self.opened > 1:
                return await refuse_with(request, message)
            result = {"protocolVersion": "2025-11-25", "capabilities": {"tools": {}},
                      "serverInfo": {"name": "forgetful", "version": "1"}}
            return web.json_response({"jsonrpc": "2.0", "id": message["id"], "result": result},
                                     headers={"Mcp-Session-Id": "s-1"})
        if message["method"] == "tools/list":
            tools = [{"name": "work", "inputSchema": {"type": "object"}}]
            return web.json_response({"jsonrpc": "2.0", "id": message["id"], "result": {"tools": tools}})
        return web.Response(status=404)  # the session is gone


async def refuse_with(request: web.Request, message: dict[str, Any]) -> web.Response:
    given = request.headers.get("Authorization", "")
    return web.json_response({"jsonrpc": "2.0", "id": message["id"],
                              "error": {"code": -32001, "message": f"invalid API key {given}"}})


# A streamable HTTP session re-opened inside a request (the upstream forgot the old one) raises its refusal from that
# request: here the tools/list Router.fetch makes again (the forget dropped the catalog), in ForwardStage for a call
# (on the old code both passed it on unscrubbed).
async def test_a_session_re_opened_inside_a_call_does_not_quote_the_key(
        start_gateway: Any, permissive_policies: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REFUSED_KEY", KEY)
    upstream = Forgetful()
    app = web.Application()
    app.router.add_post("/mcp", upstream.handle)
    async with run_aiohttp(app) as base:
        gw = await start_gateway({
            "upstreams": [{"name": "forgetful", "url": f"{base}/mcp",
                           "credentials": {"mode": "static", "value_env": "REFUSED_KEY", "value_prefix": "Bearer "}}],
            "identity": {"mode": "anonymous"}, "policies": {"dir": str(permissive_policies)}})
        answers = []
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{gw.mcp}/forgetful", json=INIT, headers=ACCEPT) as response:
                session = {**ACCEPT, "Mcp-Session-Id": response.headers["Mcp-Session-Id"],
                           "MCP-Protocol-Version": "2025-11-25"}
            for n in (2, 3):  # the first finds the session gone, the second re-opens it
                call = {"jsonrpc": "2.0", "id": n, "method": "tools/call", "params": {"name": "work", "arguments": {}}}
                async with http.post(f"{gw.mcp}/forgetful", json=call, headers=session) as response:
                    answers.append(await response.text())
    assert upstream.opened == 2, answers
    assert all(KEY not in answer for answer in answers), answers
