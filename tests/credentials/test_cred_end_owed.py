"""A task that ends while the revocation store (Redis) cannot be reached is ended in the store once it answers.

The end used to be lost: the session's DELETE (or expiry) failed to reach Redis, its tokens' records stayed,
and once Redis was back every replica's introspection answered the ended task's token `active: true` until it
expired (up to `ttl_s`, 3600 s at most), with no `credentials_revoked` record in the decision log. Now the
replica that ended it refuses the token at once and the end is made (and logged) as soon as Redis answers.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.exceptions import RedisError

from gateway.credentials import CredentialService
from gateway.store import RedisConnection
from tests.credentials.helpers import call, make_config
from tests.support.redis import RedisServer


async def _settled(a: CredentialService, b: CredentialService, token: str, within_s: float = 10.0) -> None:
    """Poll (bounded) until A has no end left to make and B's introspection answers the token inactive."""
    async with asyncio.timeout(within_s):
        while a.tasks._owed or (await b.introspector.introspect(token))["active"]:
            await asyncio.sleep(0.05)  # polling a background retry, bounded by the timeout


async def test_a_session_ended_during_a_redis_outage_is_revoked_on_every_replica_once_redis_is_back(
        tmp_path, redis_factory) -> None:
    server: RedisServer = redis_factory(appendonly=True)  # the records survive the outage, as in production
    config = make_config(tmp_path, [{"name": "payments", "url": "http://127.0.0.1:9/mcp",
                                     "credentials": {"mode": "minted", "ttl_s": 600}}],
                         store={"redis": {"url": server.url}})
    events: list[dict[str, Any]] = []
    conns = [RedisConnection(config.store.redis), RedisConnection(config.store.redis)]  # type: ignore[union-attr]
    a = CredentialService(config, redis=conns[0], on_event=events.append)
    b = CredentialService(config, redis=conns[1])
    await a.start()
    await b.start()
    try:
        ctx = call("payments", "pay", {"account": "acme-1"})
        await a.stage(ctx)
        token = ctx.upstream_headers["Authorization"].removeprefix("Bearer ")
        assert (await b.introspector.introspect(token))["active"]
        server.kill()
        with pytest.raises(RedisError):  # the store's own error: the session manager logs it
            await a.session_ended("sess-1", "p")
        server.start()
        assert not (await a.introspector.introspect(token))["active"]  # the replica that ended it: at once
        await _settled(a, b, token)  # every other replica: once the end reached Redis
        [event] = [e for e in events if e["event"] == "credentials_revoked"]
        assert event["reason"] == "session_end" and event["jtis"] == [ctx.extra["credential"]["jti"]]
    finally:
        for service in (a, b):
            await service.close()
        for conn in conns:
            await conn.close()
