"""Tasks: resolution, idle windows, the sweeper, shutdown revocation, decision-log events."""

from __future__ import annotations

import asyncio

import pytest

from gateway.context import CallContext
from gateway.credentials import CredentialService
from gateway.credentials.tasks import session_task_id
from gateway.errors import GatewayError
from tests.credentials.helpers import agent, call, make_config

UPSTREAMS = [{"name": "pay", "url": "http://127.0.0.1:9002/mcp", "credentials": {"mode": "minted"}}]


@pytest.fixture
async def world(tmp_path, clock):
    events: list[dict] = []
    svc = CredentialService(make_config(tmp_path, UPSTREAMS, tasks={"idle_s": 30}), on_event=events.append,
                            clock=clock)
    await svc.start()
    yield svc, events
    await svc.close()


async def minted(svc: CredentialService, **kw) -> tuple[str, str]:
    ctx = call("pay", "pay", **kw)
    await svc.stage(ctx)
    assert ctx.task_id is not None
    return ctx.task_id, ctx.upstream_headers["Authorization"].removeprefix("Bearer ")


async def active(svc: CredentialService, token: str) -> bool:
    return bool((await svc.introspector.introspect(token))["active"])


async def test_idle_window_per_principal(world, clock) -> None:
    svc, events = world
    first, token = await minted(svc, session_id=None)
    clock.advance(29)
    assert (await minted(svc, session_id=None))[0] == first
    assert (await minted(svc, session_id=None, principal=agent(sub="b")))[0] != first
    clock.advance(30)  # idle for the whole window; the token (ttl 60) is still unexpired
    assert await svc.tasks.sweep() != []
    assert not await active(svc, token)
    assert {e["task_id"] for e in events} >= {first}
    event = next(e for e in events if e["task_id"] == first)
    assert event["event"] == "credentials_revoked" and event["reason"] == "idle_timeout" and event["count"] == 1
    assert token not in str(events)  # jtis, never tokens
    assert (await minted(svc, session_id=None))[0] != first  # a fresh window after the old one ended


async def test_sweeper_spares_session_tasks_and_session_end_revokes(world, clock) -> None:
    svc, events = world
    task, token = await minted(svc, session_id="sess-9")
    assert task == session_task_id("sess-9")
    clock.advance(3600)
    await svc.tasks.sweep()
    assert await active(svc, token) is False  # expired by now anyway (ttl 60)
    clock.now -= 3600
    assert await active(svc, token) is True  # but not revoked: the session is alive
    await svc.session_ended("sess-9")
    assert not await active(svc, token)
    assert events[-1]["reason"] == "session_end"
    with pytest.raises(GatewayError):
        await minted(svc, session_id="sess-9")


async def test_explicit_end_and_shutdown_revoke(tmp_path, clock) -> None:
    events: list[dict] = []
    svc = CredentialService(make_config(tmp_path, UPSTREAMS), on_event=events.append, clock=clock)
    await svc.start()
    task, token = await minted(svc, meta={"customs/task": "job-1"})
    _, other = await minted(svc, session_id="s2")
    assert await svc.end_task(task) != []
    assert not await active(svc, token) and await active(svc, other)
    await svc.close()
    assert not await active(svc, other)
    assert events[-1]["reason"] == "shutdown"


async def test_background_sweeper_ends_idle_tasks(tmp_path, clock) -> None:
    events: list[dict] = []
    ended = asyncio.Event()

    def sink(event: dict) -> None:
        events.append(event)
        ended.set()

    svc = CredentialService(make_config(tmp_path, UPSTREAMS, tasks={"idle_s": 0.2}), on_event=sink, clock=clock)
    await svc.start()
    try:
        task, _ = await minted(svc, session_id=None)
        clock.advance(1)
        await asyncio.wait_for(ended.wait(), 5)
        assert events[0]["task_id"] == task and events[0]["reason"] == "idle_timeout"
    finally:
        await svc.close()


async def test_failing_event_sink_does_not_break_revocation(tmp_path, clock) -> None:
    def broken(event: dict) -> None:
        raise RuntimeError("sink down")

    svc = CredentialService(make_config(tmp_path, UPSTREAMS), on_event=broken, clock=clock)
    await svc.start()
    task, token = await minted(svc)
    assert len(await svc.end_task(task)) == 1
    assert not await active(svc, token)
    await svc.close()


async def test_explicit_tasks_in_a_shared_store_outlive_one_replica(request, clock) -> None:
    """Two replicas on one real Redis serve one agent's explicit task: the replica that went idle on it, or
    that stops (a rolling restart), only forgets it; it ends for everyone once unused on every replica."""
    import redis.asyncio as aioredis

    from gateway.credentials.revocation import RedisRevocations
    from gateway.credentials.tasks import TaskTracker

    client = aioredis.from_url(request.getfixturevalue("redis_server").url)
    events: list[dict] = []
    a, b, c = (TaskTracker(RedisRevocations(client, prefix="t:", clock=clock), idle_s=30, clock=clock,
                           on_event=events.append) for _ in range(3))
    def ctx() -> CallContext:  # a call's context, gone once resolved (one kept would be a call still running)
        return call("pay", "pay", meta={"customs/task": "job-1"})

    try:
        task = a.resolve(ctx())
        for replica in (a, b, c):
            assert replica.resolve(ctx()) == task
            await replica.ensure_live(task)
        clock.advance(31)  # idle on A's clock; B used it within idle_s as Redis sees it
        assert await a.sweep() == [] and a.task(task) is None
        await c.close()  # C stops
        await b.ensure_live(task)  # still live for B: no credential_unavailable
        assert events == []
        await client.delete(f"t:cred:used:{task}")  # unused on every replica for idle_s
        assert await b.sweep() == [task]
        assert events[-1]["task_id"] == task and events[-1]["reason"] == "idle_timeout"
        # Its credentials are revoked; the agent naming it again after the pause goes on (an idle end refused it
        # for good: a retry after a person's approval failed task_ended and used up the approval).
        assert a.resolve(ctx()) == task
        await a.ensure_live(task)
    finally:
        await client.aclose()
