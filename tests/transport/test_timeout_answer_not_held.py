"""A call that times out on an upstream that answers nothing, not even the POST of the gateway's
`notifications/cancelled`: the agent's `upstream_timeout` waited for that cancellation to be given up
(up to 5 s more), so a tool's `timeout_s: 0.5` answered after 5.5 s. The cancellation now goes in the
background and the error comes at the call's timeout (streamable HTTP and legacy SSE; real gateway,
hand-written mute upstreams)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.transport.mute_upstreams import agent_session, mute_upstream

pytestmark = pytest.mark.asyncio
ANON = {"mode": "anonymous", "anonymous_attributes": {"tenant": "acme"}}
INIT = {"protocolVersion": "2025-06-18", "capabilities": {"tools": {}}, "serverInfo": {"name": "mute", "version": "1"}}
TOOLS = {"tools": [{"name": "work", "inputSchema": {"type": "object"}}]}


def answer(message: dict[str, Any]) -> dict[str, Any] | None:
    """initialize and tools/list are answered; a call or a cancellation never is."""
    results = {"initialize": INIT, "tools/list": TOOLS}
    result = results.get(message.get("method", ""))
    return None if result is None else {"jsonrpc": "2.0", "id": message["id"], "result": result}


@pytest.fixture(params=["streamable_http", "sse"])
async def gw(request: pytest.FixtureRequest, start_gateway: Any, permissive_policies: Path) -> AsyncIterator[Any]:
    kind = request.param
    async with mute_upstream(kind, answer, hang_on={"notifications/cancelled"}) as url:
        yield await start_gateway({"upstreams": [{"name": "mute", "url": url, "transport": kind, "timeout_s": 5,
                                                  "tools": {"work": {"timeout_s": 0.5}}}],
                                   "identity": ANON, "policies": {"dir": str(permissive_policies), "watch": False}})


async def test_the_timeout_error_comes_at_the_call_s_timeout(gw: Any) -> None:
    async with aiohttp.ClientSession() as http:
        headers = await agent_session(http, gw.mcp)
        call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "mute__work", "arguments": {}}}
        loop = asyncio.get_running_loop()
        began = loop.time()
        async with asyncio.timeout(20), http.post(gw.mcp, json=call, headers=headers) as resp:
            reply = json.loads(await resp.text())
        assert reply["error"]["data"]["reason"] == "upstream_timeout"
        assert reply["error"]["data"]["timeout_s"] == 0.5
        assert loop.time() - began < 3  # (on the old code: 0.5 s + the 5 s given to the cancellation)
