"""Connection pools: one slow upstream holding 100+ calls must not starve the calls to another upstream.

The gateway's upstream HTTP client used aiohttp's default pool of 100 connections for all upstreams together,
so with 100 calls waiting on one slow tool, a call to a different (healthy) upstream waited for a free
connection and failed `upstream_timeout`. Each upstream (host and port) now has its own 100 connections."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.hardening.conftest import RawClient, poll
from tests.support.servers import run_aiohttp

pytestmark = pytest.mark.asyncio


@asynccontextmanager
async def _upstream(release: asyncio.Event | None, running: list[int]) -> AsyncIterator[str]:
    """A streamable HTTP upstream with one tool `work`; with `release`, each call waits for it."""
    async def handle(request: web.Request) -> web.Response:
        message = json.loads(await request.read())
        if "id" not in message:
            return web.Response(status=202)
        if message["method"] == "initialize":
            result: Any = {"protocolVersion": "2025-11-25", "capabilities": {"tools": {}},
                           "serverInfo": {"name": "u", "version": "1"}}
        elif message["method"] == "tools/list":
            result = {"tools": [{"name": "work", "inputSchema": {"type": "object"}}]}
        else:
            running.append(1)
            if release is not None:
                await release.wait()
            result = {"content": [{"type": "text", "text": "done"}], "isError": False}
        return web.json_response({"jsonrpc": "2.0", "id": message["id"], "result": result})

    app = web.Application()
    app.router.add_post("/mcp", handle)
    async with run_aiohttp(app) as base:
        yield f"{base}/mcp"


async def test_a_slow_upstream_holding_a_hundred_calls_does_not_starve_another(
        start_gateway: Any, permissive_policies: Path) -> None:
    release, slow_running, fast_running = asyncio.Event(), [], []
    async with _upstream(release, slow_running) as slow, _upstream(None, fast_running) as fast:
        gw = await start_gateway({"upstreams": [{"name": "slow", "url": slow, "timeout_s": 60},
                                                {"name": "fast", "url": fast, "timeout_s": 5}],
                                  "identity": {"mode": "anonymous"},
                                  "policies": {"dir": str(permissive_policies), "watch": False}})
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            client = RawClient(http, f"{gw.url}/mcp")
            await client.initialize()
            held = [asyncio.create_task(client.call("slow__work", {}, request_id=i)) for i in range(110)]
            try:
                await poll(lambda: len(slow_running) >= 100, timeout=30, what="100 calls held by the slow upstream")
                status, _, body = await asyncio.wait_for(client.call("fast__work", {}, request_id="f"), 30)
                assert status == 200 and body["result"]["content"][0]["text"] == "done", body
            finally:
                release.set()
            answers = await asyncio.gather(*held)
    assert all(status == 200 and "result" in body for status, _, body in answers)
    assert len(slow_running) == 110
