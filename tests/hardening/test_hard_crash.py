"""kill -9 of a replica holding calls for approval (real gateway processes, real redis-server): nothing is lost
for an agent that comes back, and nothing runs twice.

A SIGKILLed replica cannot answer its held calls `approval_pending` as SIGTERM does: their streams just break.
An agent that retries on another replica joins its pending item; the item must then stay pending for the
approver (it used to be marked abandoned once the dead replica's heartbeat went stale, under the agent that had
just been told it was pending), while an item whose agent never came back is still abandoned.
"""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from gateway.approvals.redis import RedisApprovalStore
from tests.e2e.test_approvals_shutdown import AUDIENCE, SHOPPER, Agent, first_progress, setup  # noqa: F401
from tests.hardening.conftest import poll
from tests.support.mcp_client import sdk_client
from tests.support.redis import RedisServer, redis_factory, redis_server  # noqa: F401

pytestmark = pytest.mark.asyncio
P = "customs:approvals:"
DEAD_AFTER_S = 0.15  # the test's own sweeper: a holder silent this long is gone (the replicas use 15 s)


async def redis_ms(client: Any) -> int:
    seconds, micros = await client.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def test_an_item_held_by_a_killed_replica_stays_pending_once_its_agent_retries_elsewhere(
        spawn_gateway: Any, setup: Any, redis_server: RedisServer) -> None:  # noqa: F811
    config, issuer, upstream = setup
    token = issuer.mint(SHOPPER, aud=AUDIENCE, tenant="acme")
    comes_back, gone = {"account": "acme-1", "amount": 11}, {"account": "acme-2", "amount": 22}
    a = await spawn_gateway(config, name="a")
    b = await spawn_gateway(config, name="b")
    client = aioredis.from_url(redis_server.url)
    sweeper = RedisApprovalStore(client, heartbeat_s=DEAD_AFTER_S / 3)
    try:
        async with aiohttp.ClientSession() as http:
            agent = Agent(http, a.mcp, token)
            await agent.start(wait=True)
            streams = [await agent.pay(args, request_id=n) for n, args in enumerate([comes_back, gone], start=2)]
            for resp in streams:
                await asyncio.wait_for(first_progress(resp), 10)
            held = {item.args["account"]: item.id for item in await sweeper.list(["pending"])}
            (holder,) = (await client.hgetall(P + "held:" + held["acme-1"])).keys()
            a.proc.send_signal(signal.SIGKILL)
            a.proc.wait()
            for resp in streams:
                resp.release()

            retry = Agent(http, b.mcp, token)
            await retry.start(wait=False)
            async with retry.pay(comes_back) as resp:
                answer = await resp.json()
            assert answer["error"]["data"]["approval_id"] == held["acme-1"], answer

            async def a_is_gone() -> bool:
                beat = int(await client.hget(P + "holders", holder))
                return await redis_ms(client) - beat > DEAD_AFTER_S * 1000
            await poll(a_is_gone, timeout=10, what="replica A's last heartbeat to go stale")
            abandoned = {item.id for item in await sweeper.sweep_abandoned()}
            assert abandoned == {held["acme-2"]}  # the agent that never came back: abandoned, as before
            assert (await sweeper.get(held["acme-1"])).state == "pending"

            alice = {"Authorization": f"Bearer {issuer.mint('alice', aud=AUDIENCE, groups=['finance'])}"}
            async with http.post(f"{b.url}/api/approvals/{held['acme-1']}/approve", json={"comment": "ok"},
                                 headers=alice) as resp:
                assert resp.status == 200, await resp.text()
            async with retry.pay(comes_back) as resp:
                assert (await resp.json())["result"]["content"][0]["text"] == "paid 11.0 to acme-1"
            async with retry.pay(comes_back) as resp:  # approved once, runs once: the next is a new request
                assert (await resp.json())["error"]["data"]["approval_id"] != held["acme-1"]
    finally:
        await client.aclose()
    async with sdk_client(upstream) as direct:
        executed = (await direct.call_tool("executed_calls", {})).structured_content or {}
    assert [c["account"] for c in executed.get("result") or []] == ["acme-1"]
