"""A rate limit's bucket refills within a year (`burst / rate_per_s`): longer ones cannot be kept in Redis.

With `store: {redis: …}` a bucket's key lives its refill time; past about 10^14 s (`burst: 100000000000000`,
or a rate of one call in millions of years) Redis refused that expiry, so every limited call was refused
`rate_limited` ("Rate limiter unavailable") though Redis was up, after `config check` said OK.
"""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio as aioredis

from gateway.config import ConfigError, parse_config
from gateway.limits import RedisLimits, burst
from tests.support.redis import RedisServer

UPSTREAMS = [{"name": "a", "url": "http://127.0.0.1:9/mcp"}]
YEAR_S = 31_536_000


@pytest.mark.parametrize(("rule", "refill"), [({"rate_per_s": 1, "burst": 10**14}, "100000000000000"),
                                              ({"rate_per_s": 1e-13}, "10000000000000"),  # burst 1
                                              ({"rate_per_s": "${RATE}", "burst": YEAR_S + 1}, "31536001")])
def test_a_bucket_refilling_in_more_than_a_year_is_a_config_error(rule: dict[str, Any], refill: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"upstreams": UPSTREAMS, "limits": {"per_tool": rule}}, env={"RATE": "1"})
    assert info.value.problems == [f"limits.per_tool: refills in {refill} s (burst / rate_per_s), more than a year "
                                   "(31536000 s)"], info.value.problems


async def test_the_longest_refill_is_kept_in_redis(redis_server: RedisServer) -> None:
    rule = parse_config({"upstreams": UPSTREAMS, "limits": {"per_tool": {"rate_per_s": 1, "burst": YEAR_S}}}
                        ).limits.per_tool
    client = aioredis.from_url(redis_server.url)
    try:
        limits = RedisLimits(client, "customs:")
        assert rule.rate_per_s is not None
        assert await limits.take("t:a/x", rule.rate_per_s, burst(rule)) == 0
    finally:
        await client.aclose()
