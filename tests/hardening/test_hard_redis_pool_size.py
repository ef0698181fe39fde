"""store.redis.max_connections counts the connections commands use: the gateway's pub/sub listeners come on top.

The approvals store and the tool-pin store each keep one connection subscribed for as long as the gateway runs.
They drew from the same pool, so with `max_connections: 1` or `2` no connection was left for commands: every call
waited the pool's 5 s and was refused (`policy_unavailable`), while `config check` said OK.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.credentials.helpers import payments_server
from tests.credentials.test_cred_replicas_live import Agent
from tests.support.redis import RedisServer
from tests.support.servers import run_http_server


@pytest.mark.parametrize("connections", [1, 2])
async def test_a_small_pool_still_serves_calls(start_gateway: Any, permissive_policies: Path, tmp_path: Path,
                                               redis_server: RedisServer, connections: int) -> None:
    async with run_http_server(payments_server()) as upstream_url:
        gateway = await start_gateway({
            "upstreams": [{"name": "payments", "url": upstream_url, "credentials": {"mode": "minted"}}],
            "store": {"redis": {"url": redis_server.url, "max_connections": connections}},
            "policies": {"dir": str(permissive_policies)}, "signing": {"key_dir": str(tmp_path / "keys")}})
        async with aiohttp.ClientSession() as http:
            agent = Agent(http, gateway.mcp)
            await agent.open()
            for _ in range(3):  # the subscribers are connected by now: they hold their connections for good
                started = time.monotonic()
                answer = await agent.request("tools/call", {"name": "payments__pay",
                                                            "arguments": {"account": "acme-1", "amount": 1}})
                assert "result" in answer, answer
                assert time.monotonic() - started < 4  # not the pool's 5 s wait
