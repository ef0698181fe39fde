"""Redis dies between an approval and the run of the call it approved (two real gateway processes).

Replica A holds an agent's call; it is frozen (SIGSTOP) so the approval made through replica B cannot reach it before
Redis goes: the approval is in Redis, A has not yet claimed it. docs/security.md ("Faults: fail closed, recover by
itself, never run a call twice") promises that the call then runs once (Redis restarted with its data) or never (Redis
restarted empty: the approval is lost and has to be requested again), and that the agent is answered either way.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.demo.servers import payments_server
from tests.e2e.test_redis_outage_replicas import Replicas, _pending, _ready, reason, replicas_config, until
from tests.support.mcp_client import sdk_client
from tests.support.redis import RedisServer, redis_factory  # noqa: F401
from tests.support.servers import run_http_server
from tests.support.tokens import TestIssuer
from tests.transport.conftest import frozen

pytestmark = pytest.mark.asyncio
PAY = {"account": "acme-9", "amount": 90}


async def _executed(url: str) -> list[Any]:
    """The payments the upstream itself ran (asked directly, past the gateways)."""
    async with sdk_client(url) as client:
        result = await client.call_tool("executed_calls", {})
    return [item.text for item in result.content]  # type: ignore[union-attr]


async def _held_and_approved(spawn_gateway: Any, redis: RedisServer, url: str, tmp_path: Path,
                             http: aiohttp.ClientSession) -> tuple[Replicas, Any, asyncio.Task[dict[str, Any]]]:
    issuer = TestIssuer(tmp_path)
    config = replicas_config(issuer, url, redis.url)
    a, b = await spawn_gateway(config, name="a"), await spawn_gateway(config, name="b")
    r = Replicas([a, b], issuer, http)
    waiting = asyncio.create_task(r.call(a, "payments__pay", PAY, stream=True))
    (item,) = await until(lambda: _pending(r, b), "the held item")
    return r, (a, b, item["id"]), waiting


@pytest.mark.parametrize("appendonly", [True, False], ids=["redis-kept-its-data", "redis-came-back-empty"])
async def test_an_approval_redis_loses_before_the_holder_claims_it_runs_the_call_once_or_never(
        spawn_gateway: Any, redis_factory: Callable[..., RedisServer],  # noqa: F811
        tmp_path: Path, appendonly: bool) -> None:
    """Approved through B while A (holding the call) is frozen; Redis killed before A resumes. With its data back the
    call runs exactly once; restarted empty, it never runs and the agent is told so; both replicas turn ready again."""
    redis = redis_factory(appendonly=appendonly)
    async with run_http_server(payments_server()) as url, aiohttp.ClientSession() as http:
        r, (a, b, approval_id), waiting = await _held_and_approved(spawn_gateway, redis, url, tmp_path, http)
        async with frozen(a.proc.pid):
            status, body = await r.api(b, "POST", f"/api/approvals/{approval_id}/approve", {"comment": "ok"})
            assert status == 200, body
            redis.kill()
            if not appendonly:
                redis.start()  # the same port, no data: the approval is gone
        if appendonly:
            # A runs again (its /readyz answers, naming the dead store) while Redis is still down
            await until(lambda: _not_ready(r, a), "A's readyz naming the dead store")
            assert not waiting.done() or "result" not in waiting.result(), waiting.result()
            assert await _executed(url) == []
            redis.start()
        answer = await asyncio.wait_for(waiting, 30)
        for gw in (a, b):
            await until(functools.partial(_ready, r, gw), "readyz after the restart")
        ran = await _executed(url)
        if appendonly:
            assert answer.get("result", {}).get("content", [{}])[0].get("text") == "paid 90.0 to acme-9", answer
            assert len(ran) == 1, ran
        else:
            assert "result" not in answer and reason(answer), answer
            assert ran == [], ran


async def _not_ready(r: Replicas, gw: Any) -> bool:
    return (await r.readyz(gw))[0] == 503
