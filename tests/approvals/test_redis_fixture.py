"""The redis-server fixture: starts on a free port, kill() drops clients, restart() keeps AOF data."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from tests.support.redis import RedisServer


async def test_kill_and_restart_keeps_aof_data(redis_factory: Callable[..., RedisServer]) -> None:
    server = redis_factory(appendonly=True)
    assert server.port != 6379
    client = aioredis.from_url(server.url)
    try:
        await client.set("k", "v")
        server.kill()
        with pytest.raises(RedisConnectionError):
            await client.get("k")
        server.restart()
        assert await client.get("k") == b"v"
    finally:
        await client.aclose()


async def test_without_aof_restart_is_empty(redis_server: RedisServer) -> None:
    client = aioredis.from_url(redis_server.url)
    try:
        await client.set("k", "v")
        port = redis_server.port
        redis_server.restart()
        assert redis_server.port == port
        fresh = aioredis.from_url(redis_server.url)
        assert await fresh.get("k") is None
        await fresh.aclose()
    finally:
        await client.aclose()
