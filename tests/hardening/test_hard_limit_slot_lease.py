"""A Redis concurrency slot is leased for longer than the longest call a configured timeout allows.

The lease was a fixed 300 s: a call allowed to run longer (`timeout_s: 900`, a tool's own `timeout_s`) lost its
slot while still running, and the next call took it, so `concurrency: 1` let two run at once."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as aioredis
from mcp.server.mcpserver import MCPServer

from gateway.config import parse_config
from gateway.limits import slot_lease_s
from tests.credentials.test_cred_replicas_live import Agent
from tests.support.redis import RedisServer
from tests.support.servers import run_http_server

UPSTREAM = {"name": "a", "url": "http://127.0.0.1:9/mcp"}


def test_the_lease_outlasts_every_configured_timeout() -> None:
    assert slot_lease_s(parse_config({"upstreams": [UPSTREAM]})) == 300
    assert slot_lease_s(parse_config({"upstreams": [{**UPSTREAM, "timeout_s": 900}]})) == 960
    assert slot_lease_s(parse_config({"upstreams": [{**UPSTREAM, "tools": {"slow": {"timeout_s": 1200}}}]})) == 1260
    # a timeout of years (`.inf` is a config error): still a lease Redis can keep (an endless one made every call
    # rate_limited)
    assert slot_lease_s(parse_config({"upstreams": [{**UPSTREAM, "timeout_s": 1e9}]})) == 7 * 86400


def _slow_server(started: asyncio.Event, release: asyncio.Event) -> MCPServer[Any]:
    server: MCPServer[Any] = MCPServer("slow")

    @server.tool()
    async def work() -> str:
        """Runs until released."""
        started.set()
        await release.wait()
        return "done"

    return server


async def test_a_long_call_holds_its_slot_for_its_whole_timeout(start_gateway: Any, permissive_policies: Path,
                                                                redis_server: RedisServer) -> None:
    started, release = asyncio.Event(), asyncio.Event()
    async with run_http_server(_slow_server(started, release)) as upstream_url:
        gateway = await start_gateway({
            "upstreams": [{"name": "slow", "url": upstream_url, "timeout_s": 900}],
            "store": {"redis": {"url": redis_server.url}}, "policies": {"dir": str(permissive_policies)},
            "limits": {"per_tool": {"concurrency": 1}}})
        client = aioredis.from_url(redis_server.url)
        async with aiohttp.ClientSession() as http:
            agent = Agent(http, gateway.mcp)
            await agent.open()
            call = asyncio.create_task(agent.request("tools/call", {"name": "slow__work", "arguments": {}}))
            try:
                await asyncio.wait_for(started.wait(), 10)
                [(_, lease_end_ms)] = await client.zrange("customs:limit:slots:t:slow/work", 0, -1, withscores=True)
                assert lease_end_ms / 1000 - time.time() > 900  # held past the call's own timeout
            finally:
                release.set()
                assert "result" in await asyncio.wait_for(call, 10)
                await client.aclose()
