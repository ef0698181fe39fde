"""Revocation stores (memory and a real redis-server): record, revoke per task, ended tasks, bounded TTLs."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from gateway.credentials.revocation import MemoryRevocations, RedisRevocations, RevocationStore, TaskEnded
from tests.credentials.helpers import Clock


@pytest.fixture(params=["memory", "redis"])
async def store(request, clock: Clock) -> AsyncIterator[RevocationStore]:
    if request.param == "memory":
        yield MemoryRevocations(ended_ttl_s=100, clock=clock)
        return
    server = request.getfixturevalue("redis_server")
    client = aioredis.from_url(server.url)
    yield RedisRevocations(client, prefix="t:", ended_ttl_s=100, clock=clock)
    await client.aclose()


async def test_revoke_task_revokes_only_its_live_jtis(store: RevocationStore, clock: Clock) -> None:
    now = clock()
    await store.record("task-a", "j1", now + 60)
    await store.record("task-a", "j2", now + 30)
    await store.record("task-a", "old", now - 1)
    await store.record("task-b", "j3", now + 60)
    assert await store.revoke_task("task-a") == ["j1", "j2"]
    assert await store.is_revoked("j1") and await store.is_revoked("j2")
    assert not await store.is_revoked("j3") and not await store.is_revoked("old")
    assert await store.is_ended("task-a") and not await store.is_ended("task-b")
    assert await store.revoke_task("task-a") == []  # idempotent


async def test_record_for_ended_task_is_refused(store: RevocationStore, clock: Clock) -> None:
    await store.revoke_task("task-a")
    with pytest.raises(TaskEnded):
        await store.record("task-a", "late", clock() + 60)


async def test_memory_records_expire(clock: Clock) -> None:
    store = MemoryRevocations(ended_ttl_s=100, clock=clock)
    await store.record("t", "j", clock() + 10)
    await store.revoke_task("t")
    clock.advance(11)
    assert not await store.is_revoked("j")
    clock.advance(100)
    assert not await store.is_ended("t")
    await store.record("t", "j2", clock() + 10)  # the ended marker expired with the tokens


async def test_redis_keys_carry_ttls(redis_server, clock: Clock) -> None:
    client = aioredis.from_url(redis_server.url)
    try:
        store = RedisRevocations(client, prefix="t:", ended_ttl_s=100, clock=clock)
        await store.record("task", "j1", clock() + 60)
        assert 0 < await client.ttl("t:cred:task:task") <= 60
        await store.revoke_task("task")
        assert 0 < await client.ttl("t:cred:revoked:j1") <= 60
        assert 0 < await client.ttl("t:cred:ended:task") <= 100
        assert not await client.exists("t:cred:task:task")
        for key in await client.keys("t:*"):
            assert await client.ttl(key) > 0, key
    finally:
        await client.aclose()
