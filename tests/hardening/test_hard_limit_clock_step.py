"""A rate-limit bucket in Redis does not punish a step back of Redis' clock (a failover to a replica whose clock is
behind, an NTP correction): the bucket's stamp was then in the future, and the refill `(now - stamp) * rate` came
out negative, so a principal with an empty bucket was refused for as long as the clock had stepped back (an hour
behind: an hour of rate_limited, with a Retry-After of an hour), though its rate allowed a call a second."""

from __future__ import annotations

import redis.asyncio as aioredis

from gateway.limits import RedisLimits
from tests.support.redis import RedisServer


async def test_a_stamp_from_a_clock_ahead_costs_no_more_than_the_rate(redis_server: RedisServer) -> None:
    client = aioredis.from_url(redis_server.url)
    try:
        limits = RedisLimits(client, "customs:")
        assert await limits.take("p:agent", 1.0, 1) == 0  # the bucket is now empty
        seconds, _ = await client.time()
        # As the bucket reads after Redis' clock stepped back an hour: its stamp an hour ahead of now.
        await client.hset("customs:limit:rate:p:agent", mapping={"tokens": 0, "stamp": seconds + 3600})
        wait = await limits.take("p:agent", 1.0, 1)
        assert 0 < wait <= 1.0, wait
    finally:
        await client.aclose()
