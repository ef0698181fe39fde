"""A Redis that hangs (the redis-server process stopped with SIGSTOP: connections accepted, nothing answered).

docs/security.md "Faults: fail closed, recover by itself, never run a call twice": a shared-state part that fails
refuses calls rather than waving them through, every call gets an answer with a documented reason (never a hang past
its timeout), and the gateway recovers by itself once the part is back. The kill tests prove it for a Redis that is
gone (connection refused); a Redis that hangs is the other half: each command meets the client's socket timeout
instead, and the replies the stopped server owes arrive late, once it runs again, on connections the pool may reuse.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest

from gateway.demo.servers import payments_server
from tests.hardening.conftest import ANON, REPO, RawClient, poll, reason
from tests.hardening.test_hard_faults import client_for, readyz
from tests.support.redis import RedisServer
from tests.support.servers import run_http_server
from tests.transport.conftest import frozen

pytestmark = pytest.mark.asyncio
FAIL_CLOSED = {"rate_limited", "policy_unavailable", "approval_unavailable"}
PAY = {"account": "acme-1", "amount": 50}


async def _call(client: RawClient, name: str, args: dict[str, Any], rid: int) -> Any:
    async with asyncio.timeout(20):  # the socket timeout is 5 s: a call still unanswered at 20 s hangs
        return (await client.call(name, args, request_id=rid))[2]


async def test_a_hanging_redis_fails_calls_closed_within_a_bound_and_the_gateway_recovers_uncrossed(
        start_gateway: Any, redis_server: RedisServer, http: aiohttp.ClientSession) -> None:
    """While Redis is stopped: reads and a write needing approval, sent concurrently, are each refused with a
    fail-closed reason within the bound, nothing reaches the upstream, /readyz is 503. Once it runs again: /readyz
    turns green by itself and every later call gets its own answer (late replies to the timed-out commands are never
    read as the answers to new ones), the approval asked then is a new pending item and nothing ran twice."""
    async with run_http_server(payments_server()) as url:
        gw = await start_gateway({
            "upstreams": [{"name": "payments", "url": url}], "identity": ANON,
            "policies": {"dir": str(REPO / "policies"), "watch": False},
            "store": {"redis": {"url": redis_server.url}}, "approvals": {"wait_s": 0},
            "limits": {"per_principal": {"rate_per_s": 1000, "burst": 1000}},
        })
        client = await client_for(http, gw)
        assert "result" in await _call(client, "payments__balance", {"account": "a"}, 1)
        assert redis_server.proc is not None
        async with frozen(redis_server.proc.pid):
            answers = await asyncio.gather(
                *(_call(client, "payments__balance", {"account": f"a{n}"}, 10 + n) for n in range(6)),
                _call(client, "payments__pay", PAY, 20))
            assert all(reason(body) in FAIL_CLOSED for body in answers), answers
            async with asyncio.timeout(10):
                status, ready = await readyz(http, gw)
            assert status == 503 and ready["checks"]["store"]["ready"] is False, ready
        await poll(lambda: _ready(http, gw), timeout=20, what="readyz after Redis runs again")
        for n in range(20):
            body = await _call(client, "payments__balance", {"account": f"b{n}"}, 100 + n)
            assert "result" in body and f"b{n}" in json.dumps(body["result"]), body
        body = await _call(client, "payments__pay", PAY, 200)
        assert reason(body) == "approval_pending", body
        item = await gw.gateway.parts.approvals.get(body["error"]["data"]["approval_id"])
        assert item.pending and item.tool == "pay", item
        executed = await _call(client, "payments__executed_calls", {}, 300)
        assert executed["result"]["content"] == [], executed  # no payment ran, during or after


async def _ready(http: aiohttp.ClientSession, gw: Any) -> bool:
    return (await readyz(http, gw))[0] == 200
