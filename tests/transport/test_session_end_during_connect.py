"""A client session that ends while the gateway is still opening its upstream session (a legacy HTTP+SSE client
whose `initialize` on `/sse/{upstream}` waits for a slow upstream, and which closes its stream meanwhile): the
upstream session opened for it is closed as soon as it is open (DELETE, no GET stream left behind), not kept
for a session that no longer exists (real gateway; a scripted aiohttp upstream that answers initialize late)."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.app import GATEWAY
from tests.support.feature_server import FEATURE_SERVER_PATH
from tests.support.servers import run_aiohttp
from tests.transport.conftest import INIT_RESULT, eventually

pytestmark = pytest.mark.asyncio
ANON = {"mode": "anonymous", "anonymous_attributes": {"tenant": "acme"}}
JSON = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2024-11-05", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}


class SlowUpstream:
    """Answers `initialize` once `release` is set; records every request's method and open GET streams."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.initializing = asyncio.Event()
        self.seen: list[str] = []
        self.open_streams = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.method == "DELETE":
            self.seen.append("DELETE")
            return web.Response(status=200)
        if request.method == "GET":
            self.seen.append("GET")
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            self.open_streams += 1
            try:
                await asyncio.Event().wait()
            finally:
                self.open_streams -= 1
        message = json.loads(await request.read())
        self.seen.append(message.get("method", "answer"))
        if message.get("method") == "initialize":
            self.initializing.set()
            await self.release.wait()
            return web.json_response({"jsonrpc": "2.0", "id": message["id"], "result": INIT_RESULT},
                                     headers={"Mcp-Session-Id": "up-1"})
        return web.Response(status=202)


async def endpoint_of(stream: aiohttp.ClientResponse) -> str:
    async for line in stream.content:
        if line.startswith(b"data: "):
            return line[6:].decode().strip()
    raise AssertionError("no endpoint event")


@pytest.fixture
async def slow() -> AsyncIterator[tuple[SlowUpstream, str]]:
    upstream = SlowUpstream()
    app = web.Application()
    app.router.add_route("*", "/mcp", upstream.handle)
    async with run_aiohttp(app, handler_cancellation=True, shutdown_timeout=1) as url:
        yield upstream, f"{url}/mcp"
    upstream.release.set()


async def test_an_upstream_session_opened_for_an_ended_session_is_closed(start_gateway: Any, permissive_policies: Path,
                                                                       slow: tuple[SlowUpstream, str]) -> None:
    upstream, url = slow
    gw = await start_gateway({"upstreams": [{"name": "slow", "url": url, "timeout_s": 20}], "identity": ANON,
                              "policies": {"dir": str(permissive_policies)}})
    sessions = gw.app[GATEWAY].sessions
    async with aiohttp.ClientSession() as http:
        stream = await http.get(f"{gw.url}/sse/slow", headers={"Accept": "text/event-stream"})
        endpoint = await endpoint_of(stream)
        initialize = asyncio.create_task(http.post(f"{gw.url}{endpoint}", json=INIT, headers=JSON))
        await asyncio.wait_for(upstream.initializing.wait(), 10)
        stream.close()  # the client goes away while its initialize waits for the upstream
        await eventually(lambda: len(sessions) == 0)
        upstream.release.set()
        (await initialize).close()
    # (on the old code the upstream session stayed open, its GET stream held, and was never DELETEd)
    await eventually(lambda: "DELETE" in upstream.seen and upstream.open_streams == 0)


STARTS_ON_FILE = """import os, runpy, sys, time
while not os.path.exists(sys.argv[1]):
    time.sleep(0.02)  # the test releases the start by creating the file
runpy.run_path(sys.argv[2], run_name="__main__")
"""


async def test_a_stdio_view_opened_for_an_ended_session_is_detached(start_gateway: Any, permissive_policies: Path,
                                                                   tmp_path: Path) -> None:
    go = tmp_path / "go"
    gw = await start_gateway({"upstreams": [{"name": "slow", "timeout_s": 20, "command": [
        sys.executable, "-c", STARTS_ON_FILE, str(go), FEATURE_SERVER_PATH]}], "identity": ANON,
        "policies": {"dir": str(permissive_policies)}})
    sessions = gw.app[GATEWAY].sessions
    child = gw.gateway.parts.upstreams["slow"]
    async with aiohttp.ClientSession() as http:
        stream = await http.get(f"{gw.url}/sse/slow", headers={"Accept": "text/event-stream"})
        endpoint = await endpoint_of(stream)
        initialize = asyncio.create_task(http.post(f"{gw.url}{endpoint}", json=INIT, headers=JSON))
        session = next(iter(sessions._sessions.values()))
        await eventually(lambda: "slow" in session.locks and session.locks["slow"].locked())  # connecting
        stream.close()  # the client goes away while its initialize waits for the child to start
        await eventually(lambda: len(sessions) == 0)
        go.touch()
        (await initialize).close()  # answered once the gateway's connect ended
    # (on the old code the ended session's view stayed attached to the child for good: every lone session after it
    # looked shared, so what the child sends outside a call was dropped or refused client_unknown)
    assert child._routes.views == []
