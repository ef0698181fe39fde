"""An ended task stays ended: across a gateway process killed and started again, and across a Redis that lost its data.

Real gateways (a subprocess for the restart, in-process replicas for the data loss) on a real redis-server.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as aioredis

from tests.credentials.helpers import payments_server
from tests.credentials.test_cred_replicas_live import Agent
from tests.support.redis import RedisServer
from tests.support.servers import run_http_server

ENDED = {"reason": "credential_unavailable", "task_ended": True}


def _call(task: str) -> dict[str, Any]:
    return {"name": "payments__pay", "arguments": {"account": "acme-1", "amount": 3}, "_meta": {"customs/task": task}}


def _config(upstream_url: str, redis_url: str, policies: Path, keys: Path) -> dict[str, Any]:
    return {"listen": {"public_url": "http://customs.test"},
            "upstreams": [{"name": "payments", "url": upstream_url, "credentials": {"mode": "minted"}}],
            "store": {"redis": {"url": redis_url}}, "policies": {"dir": str(policies)},
            "signing": {"key_dir": str(keys)}}


async def _end(agent: Agent, task: str) -> None:
    status, _ = await agent.post({"jsonrpc": "2.0", "method": "notifications/customs/task_end",
                                  "params": {"task": task}})
    assert status == 202


async def test_an_ended_task_stays_ended_after_the_gateway_process_is_killed_and_started_again(
        spawn_gateway: Any, permissive_policies: Path, tmp_path: Path, redis_server: RedisServer) -> None:
    async with run_http_server(payments_server()) as upstream_url:
        config = _config(upstream_url, redis_server.url, permissive_policies, tmp_path / "keys")
        gw = await spawn_gateway(config)
        async with aiohttp.ClientSession() as http:
            agent = Agent(http, gw.mcp)
            await agent.open()
            assert "result" in await agent.request("tools/call", _call("order-42"))
            await _end(agent, "order-42")
            gw.proc.kill()  # no clean shutdown: nothing of the process's own state survives
            gw.proc.wait(10)
            port = int(gw.url.rsplit(":", 1)[1])
            again = await spawn_gateway(config, name="gw-again", port=port)
            agent = Agent(http, again.mcp)
            await agent.open()
            assert (await agent.request("tools/call", _call("order-42")))["error"]["data"] == ENDED
            assert "result" in await agent.request("tools/call", _call("order-43"))  # a new task is served


async def test_a_redis_that_lost_its_data_reopens_no_task_ended_before(
        start_gateway: Any, permissive_policies: Path, tmp_path: Path, redis_server: RedisServer) -> None:
    """FLUSHALL (a Redis restarted without persistence) took the ended markers: the replica that ended the
    task, and one that still had it (and a cached token for it), handed out credentials for it again."""
    async with run_http_server(payments_server()) as upstream_url:
        config = _config(upstream_url, redis_server.url, permissive_policies, tmp_path / "keys")
        a, b = await start_gateway(config), await start_gateway(config)
        async with aiohttp.ClientSession() as http:
            on_a, on_b = Agent(http, a.mcp), Agent(http, b.mcp)
            await on_a.open()
            await on_b.open()
            for agent in (on_a, on_b):
                assert "result" in await agent.request("tools/call", _call("order-42"))
            await _end(on_a, "order-42")
            client = aioredis.from_url(redis_server.url)
            try:
                await client.flushall()
            finally:
                await client.aclose()
            for agent in (on_b, on_a, on_b):
                assert (await agent.request("tools/call", _call("order-42")))["error"]["data"] == ENDED
            for agent in (on_a, on_b):  # tasks begun after the loss are served
                assert "result" in await agent.request("tools/call", _call("order-43"))
