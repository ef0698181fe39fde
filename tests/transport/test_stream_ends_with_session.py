"""A session's open stream ends when the session does: the Streamable HTTP GET stream on DELETE, a legacy SSE stream
on idle expiry (real gateway and SDK server, raw HTTP). Both used to stay open until their next keep-alive (15 s)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.app import GATEWAY
from tests.support.feature_server import feature_server
from tests.support.servers import run_http_server
from tests.transport.conftest import eventually

pytestmark = pytest.mark.asyncio
ANON = {"mode": "anonymous", "anonymous_attributes": {"tenant": "acme"}}
JSON = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
PROMPT_S = 5.0  # well under the 15 s keep-alive the streams used to wait for


@pytest.fixture
async def upstream() -> AsyncIterator[str]:
    async with run_http_server(feature_server()[0]) as url:
        yield url


async def test_delete_ends_the_sessions_get_stream(start_gateway: Any, permissive_policies: Path,
                                                   upstream: str) -> None:
    gw = await start_gateway({"upstreams": [{"name": "feat", "url": upstream}], "identity": ANON,
                              "policies": {"dir": str(permissive_policies)}})
    async with aiohttp.ClientSession() as http:
        async with http.post(gw.mcp, json=INIT, headers=JSON) as resp:
            headers = {"Mcp-Session-Id": resp.headers["Mcp-Session-Id"], "MCP-Protocol-Version": "2025-11-25"}
        session = next(iter(gw.app[GATEWAY].sessions._sessions.values()))
        async with http.get(gw.mcp, headers={**headers, "Accept": "text/event-stream"}) as stream:
            await eventually(lambda: session.get_stream_open)
            async with http.delete(gw.mcp, headers=headers) as resp:
                assert resp.status == 200
            await asyncio.wait_for(stream.content.read(), PROMPT_S)  # the stream's end


async def test_idle_expiry_ends_a_legacy_sse_stream(start_gateway: Any, permissive_policies: Path,
                                                    upstream: str) -> None:
    gw = await start_gateway({"upstreams": [{"name": "feat", "url": upstream}], "identity": ANON,
                              "policies": {"dir": str(permissive_policies)}, "tasks": {"idle_s": 1}})
    sessions = gw.app[GATEWAY].sessions
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{gw.url}/sse", headers={"Accept": "text/event-stream"}) as stream:
            async for line in stream.content:
                if line.startswith(b"data: "):
                    break  # the endpoint event: the session is open
            await eventually(lambda: len(sessions) == 0)  # expired
            await asyncio.wait_for(stream.content.read(), PROMPT_S)
