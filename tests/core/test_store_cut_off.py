"""RedisConnection.cut_off (gateway/store.py): shutdown's commands on the shared client end by the drain deadline
(a real redis-server, stopped with SIGSTOP: it accepts connections and answers nothing, each command meeting the
client's 5 s socket timeout)."""

from __future__ import annotations

import asyncio

import pytest
from redis.exceptions import TimeoutError as RedisTimeout

from gateway.config.model import RedisConfig
from gateway.store import RedisConnection
from tests.support.redis import RedisServer
from tests.transport.conftest import frozen

pytestmark = pytest.mark.asyncio
CUT_S = 0.5


async def test_commands_and_pipelines_end_at_the_cut_off_as_a_redis_timeout(redis_server: RedisServer) -> None:
    """Before the cut-off, commands run as ever; after it, a command, a script and a pipeline against a hung Redis
    each fail as the socket timeout would (redis TimeoutError, which every caller handles), at the cut-off and not
    5 s later; a Redis that answers still answers until then."""
    redis = RedisConnection(RedisConfig(url=redis_server.url))
    try:
        assert await redis.client.set("k", "v")
        loop = asyncio.get_running_loop()
        redis.cut_off(loop.time() + 2.0)
        assert await redis.client.get("k") == b"v"  # Redis answering: the cut-off changes nothing before it
        assert redis_server.proc is not None
        async with frozen(redis_server.proc.pid):
            cut = loop.time() + CUT_S
            redis.cut_off(cut)
            script = redis.client.register_script("return redis.call('GET', KEYS[1])")
            pipe = redis.client.pipeline(transaction=False)
            pipe.get("k")
            outcomes = await asyncio.gather(redis.client.get("k"), script(keys=["k"]), pipe.execute(),
                                            return_exceptions=True)
            ended = loop.time()
        assert [type(o) for o in outcomes] == [RedisTimeout] * 3, outcomes
        assert ended - cut < 2.0, f"ended {ended - cut:.1f} s after the cut-off"  # the socket timeout is 5 s
    finally:
        await redis.close()
