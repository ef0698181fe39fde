"""An HTTP upstream that takes an agent's notification (or an answer to its own request) and never answers
the POST: the gateway passed it on without a limit, so the agent's POST (`notifications/roots/list_changed`
here, or `notifications/cancelled`) never got its 202 and the agent's SDK waited for good. What the
gateway sends upstream on its own is now bounded by the upstream's `timeout_s` (streamable HTTP and legacy
SSE upstreams; real gateway, hand-written upstreams)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.support.servers import run_aiohttp
from tests.transport.mute_upstreams import agent_session, mute_upstream, streamable_app

pytestmark = pytest.mark.asyncio
ANON = {"mode": "anonymous", "anonymous_attributes": {"tenant": "acme"}}
INIT = {"protocolVersion": "2025-06-18", "capabilities": {"tools": {}}, "serverInfo": {"name": "mute", "version": "1"}}
HANG_ON = "notifications/roots/list_changed"
# The mute upstream's timeout_s: waited out whole for the agent's 202, so short; 2 s over the other upstream's deadline,
# which the old code (the copy sent only after it) still misses.
MUTE_TIMEOUT_S = 6


def answer(message: dict[str, Any]) -> dict[str, Any]:
    result = INIT if message["method"] == "initialize" else {"tools": []}
    return {"jsonrpc": "2.0", "id": message["id"], "result": result}


@pytest.fixture(params=["streamable_http", "sse"])
async def gw(request: pytest.FixtureRequest, start_gateway: Any, permissive_policies: Path) -> AsyncIterator[Any]:
    kind = request.param
    async with mute_upstream(kind, answer, hang_on={HANG_ON}) as url:
        yield await start_gateway({"upstreams": [{"name": "mute", "url": url, "transport": kind, "timeout_s": 1}],
                                   "identity": ANON, "policies": {"dir": str(permissive_policies), "watch": False}})


async def test_an_agent_notification_is_acknowledged_though_the_upstream_never_answers_it(gw: Any) -> None:
    async with aiohttp.ClientSession() as http:
        headers = await agent_session(http, gw.mcp)
        async with http.post(gw.mcp, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, headers=headers) as resp:
            assert (await resp.json())["result"]["tools"] == []  # the upstream session is open
        began = asyncio.get_running_loop().time()
        # (on the old code: no answer ever; wait_for only keeps the test from hanging)
        async with asyncio.timeout(15), http.post(gw.mcp, json={"jsonrpc": "2.0", "method": HANG_ON},
                                                  headers=headers) as resp:
            assert resp.status == 202
        assert asyncio.get_running_loop().time() - began < 5


async def test_a_mute_upstream_does_not_hold_back_the_others_copy(start_gateway: Any,
                                                                  permissive_policies: Path) -> None:
    heard: list[str] = []

    async def ear(request: web.Request) -> web.StreamResponse:
        if request.method != "POST":
            return web.Response(status=405)
        message = json.loads(await request.read())
        if "id" not in message:
            heard.append(message["method"])
            return web.Response(status=202)
        return web.json_response(answer(message), headers={"Mcp-Session-Id": "s-2"})

    listening = web.Application()
    listening.router.add_route("*", "/mcp", ear)
    async with run_aiohttp(streamable_app(answer, {HANG_ON}), shutdown_timeout=0.1) as mute, \
            run_aiohttp(listening, shutdown_timeout=1) as other:
        # The agent's 202 waits for the mute upstream's timeout_s; the other upstream must hear it well before then.
        gw = await start_gateway({"upstreams": [{"name": "mute", "url": f"{mute}/mcp", "timeout_s": MUTE_TIMEOUT_S},
                                                {"name": "ear", "url": f"{other}/mcp"}],
                                  "identity": ANON, "policies": {"dir": str(permissive_policies), "watch": False}})
        async with aiohttp.ClientSession() as http:
            headers = await agent_session(http, gw.mcp)
            async with http.post(gw.mcp, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                                 headers=headers) as resp:
                assert resp.status == 200  # both upstream sessions are open
            notified = asyncio.create_task(http.post(gw.mcp, json={"jsonrpc": "2.0", "method": HANG_ON},
                                                     headers=headers))
            loop = asyncio.get_running_loop()
            deadline = loop.time() + MUTE_TIMEOUT_S - 2
            while HANG_ON not in heard:  # (on the old code: only after the mute upstream's timeout_s)
                assert loop.time() < deadline, "the other upstream did not get the notification"
                await asyncio.sleep(0.02)  # polling what the other upstream recorded, bounded
            async with asyncio.timeout(20):
                assert (await notified).status == 202
