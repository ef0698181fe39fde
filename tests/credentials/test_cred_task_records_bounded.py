"""A task's revocation record keeps its live tokens, not every token ever minted for it.

Every minted token's jti is recorded under its task until the task ends. A task that lives long and mints often
(a busy stateless client's implicit session, kept alive by use; `narrow_to_args`, where each call's values get a
token of their own) kept every jti, expired ones too: in memory the store pruned only by its count of tasks, and
in Redis nothing removed a member while the task went on, so one such task grew without bound.
"""

from __future__ import annotations

import redis.asyncio as aioredis

from gateway.credentials.revocation import MemoryRevocations, RedisRevocations
from tests.credentials.helpers import Clock
from tests.support.redis import RedisServer

TOKENS = 2_000


async def test_a_long_task_keeps_only_its_live_tokens_in_memory() -> None:
    clock = Clock()
    store = MemoryRevocations(clock=clock)
    for i in range(TOKENS):
        await store.record("s-busy", f"jti-{i}", clock.now + 60)
        clock.advance(1)  # one token a second, each valid 60 s
    assert len(store._tasks["s-busy"]) <= 200
    assert await store.is_active("s-busy", f"jti-{TOKENS - 1}")
    live = sorted(f"jti-{i}" for i in range(TOKENS - 59, TOKENS))  # exp > now
    assert sorted(await store.revoke_task("s-busy")) == live


async def test_a_long_task_keeps_only_its_live_tokens_in_redis(redis_server: RedisServer) -> None:
    clock = Clock()
    client = aioredis.from_url(redis_server.url)
    try:
        store = RedisRevocations(client, prefix="t:", clock=clock)
        for i in range(TOKENS):
            await store.record("s-busy", f"jti-{i}", clock.now + 60)
            clock.advance(1)
        assert await client.zcard("t:cred:task:s-busy") <= 61
        assert len(await store.revoke_task("s-busy")) == 59
    finally:
        await client.aclose()
