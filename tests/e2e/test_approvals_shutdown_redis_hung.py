"""SIGTERM while calls are held and Redis hangs (a real gateway process, a real redis-server stopped with SIGSTOP).

docs/security.md "Faults", SIGTERM row: held calls are answered `approval_pending` with their id at once, their items
stay pending in the store for another replica, and the gateway exits 0 within `listen.drain_timeout_s`. The shutdown
test proves it with Redis answering; here every Redis command meets the client's 5 s socket timeout instead. The held
calls used to hear nothing until the drain deadline withdrew them (`shutting_down`, no approval id: the agent could not
join its item elsewhere): the answer waited on the hold's release and on giving the task facts back, both in Redis.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest

from gateway.approvals.redis import RedisApprovalStore
from tests.e2e.test_approvals_shutdown import AUDIENCE, SHOPPER, Agent, first_progress, last_message, setup  # noqa: F401
from tests.support.processes import seconds_to_exit_after_sigterm
from tests.support.redis import RedisServer, redis_factory, redis_server  # noqa: F401
from tests.support.tokens import TestIssuer
from tests.transport.conftest import frozen

pytestmark = pytest.mark.asyncio
DRAIN_S = 8.0
AT_ONCE_S = 3.0  # under the Redis client's 5 s socket timeout: the answer waited on no Redis command


@asynccontextmanager
async def held_calls(spawn_gateway: Any, config: dict[str, Any], issuer: TestIssuer,
                     count: int) -> AsyncIterator[tuple[Any, list[aiohttp.ClientResponse]]]:
    """A gateway process with `count` payments held on open SSE requests (each has sent its first progress)."""
    gw = await spawn_gateway({**config, "listen": {"drain_timeout_s": DRAIN_S}}, name="hung")
    async with aiohttp.ClientSession() as http:
        agent = Agent(http, gw.mcp, issuer.mint(SHOPPER, aud=AUDIENCE, tenant="acme"))
        await agent.start(wait=True)
        streams = [await agent.pay({"account": f"acme-{n}", "amount": n}, request_id=n) for n in range(2, 2 + count)]
        try:
            for resp in streams:
                await asyncio.wait_for(first_progress(resp), 10)
            yield gw, streams
        finally:
            for resp in streams:
                resp.release()


async def test_sigterm_with_redis_hung_answers_held_calls_pending_at_once_and_keeps_their_items(
        spawn_gateway: Any, setup: tuple[dict[str, Any], TestIssuer, str], redis_server: RedisServer) -> None:  # noqa: F811
    """Three calls held; Redis stopped; SIGTERM: each agent hears `approval_pending` with its id within 3 s (not at
    the drain deadline), the process exits 0, and once Redis runs again the items are still pending."""
    config, issuer, _ = setup
    assert redis_server.proc is not None
    async with held_calls(spawn_gateway, config, issuer, 3) as (gw, streams), frozen(redis_server.proc.pid):
        signalled = time.monotonic()
        gw.proc.send_signal(signal.SIGTERM)
        answers = [last_message(await asyncio.wait_for(resp.text(), DRAIN_S + 2)) for resp in streams]
        answered_after = time.monotonic() - signalled
        await asyncio.wait_for(asyncio.to_thread(gw.proc.wait), 30)
    assert gw.proc.returncode == 0, gw.log()
    assert [a.get("error", {}).get("data", {}).get("reason") for a in answers] == ["approval_pending"] * 3, answers
    assert answered_after < AT_ONCE_S, f"held calls answered {answered_after:.1f} s after SIGTERM"
    ids = [answer["error"]["data"]["approval_id"] for answer in answers]
    store = RedisApprovalStore.from_url(redis_server.url)
    try:
        assert [(await store.get(i)).state for i in ids] == ["pending"] * 3
    finally:
        await store.close()


async def test_sigterm_with_redis_hung_exits_within_the_drain_deadline(
        spawn_gateway: Any, setup: tuple[dict[str, Any], TestIssuer, str], redis_server: RedisServer) -> None:  # noqa: F811
    """docs/security.md, SIGTERM row: "exit 0 within the deadline", also when Redis hangs. Shutdown's own Redis work
    (the session's end revoking its credentials, the approval store's last write) each waited the client's 5 s socket
    timeout after the drain, and the exit came seconds past the deadline; it is now cut off at the deadline."""
    config, issuer, _ = setup
    assert redis_server.proc is not None
    async with held_calls(spawn_gateway, config, issuer, 1) as (gw, _), frozen(redis_server.proc.pid):
        exited_after = await seconds_to_exit_after_sigterm(gw.proc, 30)
    assert gw.proc.returncode == 0, gw.log()
    assert exited_after < DRAIN_S + 0.5, f"exited {exited_after:.1f} s after SIGTERM, drain_timeout_s is {DRAIN_S}"
