"""Concurrency slots shared through Redis come back after faults: a lost release costs a slot for its lease only.

The slots used to be one counter per key whose expiry every new call renewed. A release that never came (a
replica killed mid-call, Redis down or restarting when the call ended) was never given back while calls kept
coming: with `concurrency: 1` the tool answered rate_limited for good. Each slot now has a lease of its own,
and a release Redis could not take is tried again until it is taken."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from gateway.limits import RedisLimits
from tests.hardening.conftest import ANON, RawClient, Recorder, one_shape_policies, poll, reason
from tests.support.redis import RedisServer

pytestmark = pytest.mark.asyncio


async def test_a_slot_never_released_lapses_while_calls_keep_coming(redis_server: RedisServer) -> None:
    client = aioredis.from_url(redis_server.url)
    limits = RedisLimits(client, "t:", lease_s=1)
    try:
        assert await limits.acquire("tool", 1) is not None  # its holder is gone: no release will come
        refused = 0

        async def admitted() -> bool:
            nonlocal refused
            slot = await limits.acquire("tool", 1)  # a steady stream of callers, each refused while it is held
            if slot is None:
                refused += 1
                return False
            await limits.release("tool", slot)
            return True

        await poll(admitted, timeout=10, what="the lost slot's lease to end")
        assert refused > 0
        first, second = await limits.acquire("tool", 2), await limits.acquire("tool", 2)
        assert first and second and first != second and await limits.acquire("tool", 2) is None
    finally:
        await limits.close()
        await client.aclose()


async def test_a_slot_whose_call_ended_while_redis_was_down_is_free_soon_after_redis_is_back(
        start_gateway: Any, redis_factory: Any, upstream: tuple[Recorder, str], http: aiohttp.ClientSession,
        tmp_path: Path) -> None:
    redis: RedisServer = redis_factory(appendonly=True)  # the slot taken survives the restart
    recorder, url = upstream
    assert recorder.release is not None
    gw = await start_gateway({"upstreams": [{"name": "rec", "url": url}], "identity": ANON,
                              "policies": {"dir": str(one_shape_policies(tmp_path / "policies")), "watch": False},
                              "store": {"redis": {"url": redis.url}},
                              "limits": {"per_tool": {"concurrency": 1}}})
    client = RawClient(http, gw.mcp)
    await client.initialize()
    held = asyncio.create_task(client.call("rec__slow", {}, request_id=1))
    await asyncio.wait_for(recorder.slow_started.wait(), 10)
    redis.kill()
    recorder.release.set()  # the call ends while Redis is down: its slot cannot be given back now
    status, _, body = await asyncio.wait_for(held, 20)
    assert status == 200, body
    redis.start()
    calls = iter(range(2, 1000))

    async def served() -> bool:
        status, _, body = await client.call("rec__slow", {}, request_id=next(calls))
        if reason(body) in {"rate_limited", "policy_unavailable"}:
            return False
        assert status == 200 and "result" in body, body
        return True

    # The lease is 300 s: only the retried release can free the slot this soon.
    await poll(served, timeout=15, what="the slot held across the outage to be given back")
