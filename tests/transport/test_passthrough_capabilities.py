"""`/mcp/{upstream}` answers `initialize` with the upstream's own result, capabilities included, but the
gateway answers `tasks/*` (the 2025-11-25 task methods) `method_not_found` on every endpoint: an upstream
advertising `tasks` made the client believe it could augment a call with a task and poll it, and then every
poll failed. The pass-through result now leaves out `tasks`; everything else is the upstream's (real gateway,
hand-written upstream)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.support.servers import run_aiohttp

pytestmark = pytest.mark.asyncio
ANON = {"mode": "anonymous", "anonymous_attributes": {"tenant": "acme"}}
CAPABILITIES = {"tools": {"listChanged": True}, "logging": {}, "experimental": {"x": {}},
                "tasks": {"list": {}, "cancel": {}, "requests": {"tools": {"call": {}}}}}


def tasking_app() -> web.Application:
    async def mcp(request: web.Request) -> web.StreamResponse:
        if request.method != "POST":
            return web.Response(status=405)
        message = json.loads(await request.read())
        if "id" not in message:
            return web.Response(status=202)
        result = {"protocolVersion": "2025-11-25", "capabilities": CAPABILITIES,
                  "serverInfo": {"name": "tasking", "version": "1"}} if message["method"] == "initialize" else {}
        return web.json_response({"jsonrpc": "2.0", "id": message["id"], "result": result},
                                 headers={"Mcp-Session-Id": "s-1"})

    app = web.Application()
    app.router.add_route("*", "/mcp", mcp)
    return app


async def test_pass_through_initialize_does_not_promise_tasks(start_gateway: Any, permissive_policies: Path) -> None:
    async with run_aiohttp(tasking_app(), shutdown_timeout=1) as base:
        gw = await start_gateway({"upstreams": [{"name": "up", "url": f"{base}/mcp"}], "identity": ANON,
                                  "policies": {"dir": str(permissive_policies), "watch": False}})
        headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
        init = {"jsonrpc": "2.0", "id": 0, "method": "initialize",
                "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                           "clientInfo": {"name": "t", "version": "1"}}}
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{gw.mcp}/up", json=init, headers=headers) as resp:
                result = (await resp.json())["result"]
                headers |= {"Mcp-Session-Id": resp.headers["Mcp-Session-Id"], "MCP-Protocol-Version": "2025-11-25"}
            # (on the old code: the upstream's tasks capability, promised to the client)
            assert "tasks" not in result["capabilities"]
            assert result["capabilities"] == {k: v for k, v in CAPABILITIES.items() if k != "tasks"}
            assert result["serverInfo"] == {"name": "tasking", "version": "1"}
            poll = {"jsonrpc": "2.0", "id": 1, "method": "tasks/get", "params": {"taskId": "t-1"}}
            async with http.post(f"{gw.mcp}/up", json=poll, headers=headers) as resp:
                assert (await resp.json())["error"]["data"]["reason"] == "method_not_found"
