"""Rate/concurrency limits and task facts over both backends (memory, a real redis-server)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from gateway.config.model import LimitsConfig, UpstreamConfig
from gateway.context import CallContext, Principal, ToolInfo
from gateway.errors import GatewayError
from gateway.limits import Limiter, MemoryLimits, RedisLimits
from gateway.taskstate import MemoryFacts, RedisFacts, TaskStage
from gateway.transport.common import Unsent
from tests.conftest import free_port

pytestmark = pytest.mark.asyncio


@pytest.fixture(params=["memory", "redis"])
async def backends(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Any, Any, Any]]:
    if request.param == "memory":
        yield MemoryLimits(), MemoryFacts(), None
        return
    server = request.getfixturevalue("redis_server")
    client = aioredis.from_url(server.url)
    try:
        yield RedisLimits(client, "t:"), RedisFacts(client, "t:"), (server, client)
    finally:
        await client.aclose()


def ctx(principal: str = "agent-a", tool: str = "pay", args: dict[str, Any] | None = None) -> CallContext:
    return CallContext(method="tools/call", request_id=1, params={"name": tool, "arguments": args or {}},
                       principal=Principal(id=principal, issuer="i", subject=principal), upstream="payments",
                       tool=ToolInfo(upstream="payments", name=tool))


async def test_rate_limit_per_principal(backends):
    limits, _, _ = backends
    limiter = Limiter(LimitsConfig.model_validate({"per_principal": {"rate_per_s": 0.001, "burst": 3}}), limits)
    for _ in range(3):
        await limiter.rate(ctx())
    with pytest.raises(GatewayError) as info:
        await limiter.rate(ctx())
    assert info.value.reason == "rate_limited"
    assert info.value.data["retry_after_s"] >= 1
    assert info.value.headers["Retry-After"]
    await limiter.rate(ctx(principal="agent-b"))  # another principal has its own bucket


async def test_concurrency_limit_releases_slots(backends):
    limits, _, _ = backends
    limiter = Limiter(LimitsConfig.model_validate({"per_tool": {"concurrency": 2}}), limits)
    entered = asyncio.Event()
    release = asyncio.Event()

    async def hold() -> None:
        async with limiter.concurrency(ctx()):
            entered.set()
            await release.wait()

    tasks = [asyncio.create_task(hold()) for _ in range(2)]
    await asyncio.wait_for(entered.wait(), 5)
    while True:  # both slots taken (each task acquires before it waits)
        try:
            async with limiter.concurrency(ctx()):
                pass
        except GatewayError as exc:
            assert exc.reason == "rate_limited"
            break
        await asyncio.sleep(0)
    release.set()
    await asyncio.gather(*tasks)
    async with limiter.concurrency(ctx()):
        pass


async def test_limits_fail_closed_when_redis_is_down(redis_server):
    client = aioredis.from_url(redis_server.url)
    limiter = Limiter(LimitsConfig.model_validate({"per_principal": {"rate_per_s": 10}}), RedisLimits(client, "t:"))
    await limiter.rate(ctx())
    redis_server.kill()
    with pytest.raises(GatewayError) as info:
        await limiter.rate(ctx())
    assert info.value.reason == "rate_limited"
    await client.aclose()


async def test_task_facts_accumulate_and_release(backends):
    _, facts, _ = backends
    upstream = UpstreamConfig.model_validate({"name": "payments", "url": "http://127.0.0.1:1/mcp",
                                              "tools": {"pay": {"sum_args": ["amount"]}}})
    stage = TaskStage(facts, {"payments": upstream}, lambda c: "task-1")
    first = ctx(args={"amount": 6000})
    await stage(first)
    assert first.extra["task"] == {"calls": 0, "totals": {"amount": 6000.0}, "seen_tools": []}
    first.extra["forwarded"] = True
    await stage.release(first)  # forwarded: kept
    held = ctx(args={"amount": 3000})
    await stage(held)
    assert held.extra["task"]["totals"] == {"amount": 9000.0}
    assert held.extra["task"]["calls"] == 1 and held.extra["task"]["seen_tools"] == ["payments/pay"]
    await stage.release(held)  # never forwarded: given back
    again = ctx(args={"amount": 1.5})
    await stage(again)
    assert again.extra["task"]["totals"] == {"amount": 6001.5}
    assert again.extra["task"]["calls"] == 1



async def _refused_connection() -> GatewayError:
    """What the transport raises when no connection to the upstream could be made: nothing was sent."""
    try:
        async with aiohttp.ClientSession() as http:
            await http.post(f"http://127.0.0.1:{free_port()}/mcp")
    except aiohttp.ClientConnectorError as exc:
        error = GatewayError("upstream_unavailable", data={"upstream": "payments"})
        error.__cause__ = exc
        return error
    raise AssertionError("a free port answered")


@pytest.mark.parametrize("failure", ["refused", "circuit_open", "session_expired", "broke"])
async def test_a_forward_that_never_left_the_gateway_gives_its_share_back(backends, failure):
    """Refused, behind an open circuit or refused for a session the upstream forgot (404), the call never ran
    there: its share is given back (a payment that never went out must not count toward the task's cap). A
    connection that broke may have carried it, so that one keeps its share."""
    _, facts, _ = backends
    upstream = UpstreamConfig.model_validate({"name": "payments", "url": "http://127.0.0.1:1/mcp",
                                              "tools": {"pay": {"sum_args": ["amount"]}}})
    stage = TaskStage(facts, {"payments": upstream}, lambda c: f"task-{failure}")
    first = ctx(args={"amount": 6000})
    await stage(first)
    first.extra["forwarded"] = True
    first.error = {"refused": await _refused_connection(),
                   "circuit_open": Unsent(data={"circuit": "open"}),  # as CircuitBreaker raises it
                   "session_expired": Unsent(data={"session": "expired"}),  # the 404 of the call's POST
                   "broke": GatewayError("upstream_unavailable", data={"upstream": "payments"})}[failure]
    await stage.release(first)
    again = ctx(args={"amount": 1})
    await stage(again)
    assert again.extra["task"]["totals"] == {"amount": 6001.0 if failure == "broke" else 1.0}

async def test_concurrent_reservations_see_each_other(backends):
    _, facts, _ = backends
    upstream = UpstreamConfig.model_validate({"name": "payments", "url": "http://127.0.0.1:1/mcp",
                                              "tools": {"pay": {"sum_args": ["amount"]}}})
    stage = TaskStage(facts, {"payments": upstream}, lambda c: "task-2")
    calls = [ctx(args={"amount": 1000}) for _ in range(10)]
    await asyncio.gather(*(stage(c) for c in calls))
    totals = sorted(c.extra["task"]["totals"]["amount"] for c in calls)
    assert totals == [1000.0 * i for i in range(1, 11)]


async def test_task_facts_fail_closed_when_redis_is_down(redis_server):
    client = aioredis.from_url(redis_server.url)
    stage = TaskStage(RedisFacts(client, "t:"), {}, lambda c: "t")
    redis_server.kill()
    with pytest.raises(GatewayError) as info:
        await stage(ctx())
    assert info.value.reason == "policy_unavailable"
    await client.aclose()


async def test_a_slot_released_after_its_lease_lapsed_gives_no_extra_slot(redis_server) -> None:
    """A call outliving the concurrency lease (or a crashed replica's slot) is released after Redis already
    dropped the counter: the release must not count below zero, or the next callers get limit + 1 slots."""
    client = aioredis.from_url(redis_server.url)
    try:
        limits = RedisLimits(client, "t:")
        slot = await limits.acquire("tool", 1)
        assert slot is not None
        await client.delete("t:limit:slots:tool")  # the lease lapsed while the call ran
        await limits.release("tool", slot)
        assert await limits.acquire("tool", 1)
        assert not await limits.acquire("tool", 1)  # exactly the limit, not one more
    finally:
        await client.aclose()


async def test_refilled_buckets_are_swept_so_minted_principals_cannot_grow_memory() -> None:
    """Every distinct principal (a SPIFFE id, an anonymous variant) and every tool key (a resource URI read)
    got an in-memory bucket that was never dropped: 20k minted principals left 20k buckets. A bucket that has
    refilled to its burst is the same as none, so the sweep drops it and the dict stays bounded by the keys
    used within a refill plus a sweep interval. Time is the backend's injected clock, advanced by the test."""
    now = [0.0]
    limits = MemoryLimits(clock=lambda: now[0])
    limiter = Limiter(LimitsConfig.model_validate({"per_principal": {"rate_per_s": 10, "burst": 20}}), limits)
    peak = 0
    for i in range(20_000):
        await limiter.rate(ctx(principal=f"spiffe://acme/agent-{i}"))
        now[0] += 0.001  # a thousand new principals per second; each refills its one token in 0.1 s
        if i % 1000 == 999:  # the sweeper's pass, once a (fake) second
            limits.sweep()
        peak = max(peak, len(limits.buckets))
    assert peak <= 2_200, peak  # a sweep interval's worth plus the ones still refilling, never 20k
    now[0] += 0.2
    limits.sweep()
    assert limits.buckets == {}


async def test_the_sweep_keeps_buckets_that_have_not_refilled() -> None:
    """Dropping a bucket that is still short of its burst would hand its principal a fresh burst: the sweep
    keeps it, and the principal stays refused."""
    now = [0.0]
    limits = MemoryLimits(clock=lambda: now[0])
    limiter = Limiter(LimitsConfig.model_validate({"per_principal": {"rate_per_s": 1, "burst": 2}}), limits)
    await limiter.rate(ctx())
    await limiter.rate(ctx())
    await limiter.rate(ctx(principal="agent-b"))
    now[0] += 1.5  # agent-a: 1.5 of 2 tokens back; agent-b: full again
    assert limits.sweep() == 1 and list(limits.buckets) == ["p:i|agent-a"]
    await limiter.rate(ctx())
    with pytest.raises(GatewayError) as info:
        await limiter.rate(ctx())
    assert info.value.data["limit"] == "per_principal"


async def test_calls_still_in_flight_count_in_calls_and_seen_tools(backends):
    """docs/policies.md: a call counts from its admission (its reservation, before the decision), so calls still
    in flight are in `calls` and `seen_tools` of the calls after them (the safe side of a rate-like policy);
    one that did not execute is given back and no longer counts."""
    _, facts, _ = backends
    stage = TaskStage(facts, {}, lambda c: "task-3")
    in_flight = ctx(tool="read_secrets")
    await stage(in_flight)  # admitted, not finished: neither kept (forwarded) nor given back yet
    same, other = ctx(tool="read_secrets"), ctx(tool="send_mail")
    await stage(same)
    await stage(other)
    assert same.extra["task"]["calls"] == 1 and same.extra["task"]["seen_tools"] == ["payments/read_secrets"]
    assert other.extra["task"]["calls"] == 0 and other.extra["task"]["seen_tools"] == ["payments/read_secrets"]
    for call in (in_flight, same):
        await stage.release(call)  # never forwarded: given back
    after = ctx(tool="send_mail")
    await stage(after)
    assert after.extra["task"]["calls"] == 1 and after.extra["task"]["seen_tools"] == ["payments/send_mail"]


async def test_a_reservation_given_back_leaves_nothing_of_its_tool_in_the_store(backends):
    """A tools/call of a missing name reserves the task's facts and gives them back (Pipeline.refuse_missing), the
    tool being whatever name the agent made up: kept as a zero count until the task's TTL, each name would stay in
    the store (every later reservation of the task walks them all), so an agent could grow it at will."""
    _, facts, redis = backends
    stage = TaskStage(facts, {}, lambda c: "task-junk")
    kept = ctx(tool="real")
    await stage(kept)
    for i in range(3):
        junk = ctx(tool=f"made-up-{i}")
        await stage(junk)
        await stage.release(junk)
    if redis is None:
        stored = set(facts.tasks["task-junk"].calls)
    else:
        stored = {k.decode() for k in await redis[1].hkeys("t:task:task-junk:calls")}
    assert stored == {"payments/real"}, stored
