"""Connection pools: one slow upstream holding 100+ calls must not starve the calls to another upstream.

The gateway's upstream HTTP client used aiohttp's default pool of 100 connections for all upstreams together,
so with 100 calls waiting on one slow tool, a call to a different (healthy) upstream waited for a free
connection and failed `upstream_timeout`. Each upstream (host and port) now has its own 100 connections."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.hardening.conftest import RawClient, poll, raw_upstream

pytestmark = pytest.mark.asyncio


TOOLS = b'[{"name":"work","inputSchema":{"type":"object"}}]'
DONE = b'{"content":[{"type":"text","text":"done"}],"isError":false}'


def _tool(release: asyncio.Event | None, running: list[int]) -> Callable[[dict[str, Any]], Awaitable[bytes]]:
    """The tool `work`: counted as it starts; with `release`, it waits for it."""
    async def work(message: dict[str, Any]) -> bytes:
        running.append(1)
        if release is not None:
            await release.wait()
        return DONE
    return work


async def test_a_slow_upstream_holding_a_hundred_calls_does_not_starve_another(
        start_gateway: Any, permissive_policies: Path) -> None:
    release, slow_running, fast_running = asyncio.Event(), [], []
    async with raw_upstream(TOOLS, _tool(release, slow_running)) as slow, \
            raw_upstream(TOOLS, _tool(None, fast_running)) as fast:
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
