"""A held call's client going away while a Redis step of the approve stage is in flight: Redis ran the script,
its reply was cut off by the cancellation. What the script did must not be left half-done."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import pytest

from gateway.approvals.model import Approval
from gateway.approvals.redis import RedisApprovalStore
from gateway.approvals.stage import ApproveStage
from gateway.config.model import ApprovalsConfig
from gateway.errors import GatewayError
from tests.approvals.conftest import Clock, Sink, call_context, eventually
from tests.support.redis import RedisServer


@pytest.fixture
async def replicas(redis_factory: Callable[..., RedisServer], clock: Clock):  # type: ignore[no-untyped-def]
    server = redis_factory(appendonly=True)
    events: list[dict[str, Any]] = []
    stores = [RedisApprovalStore.from_url(server.url, "t:", clock=clock, heartbeat_s=0.2, on_event=events.append)
              for _ in range(2)]
    for store in stores:
        await store.start()
    yield stores[0], stores[1], events
    for store in stores:
        await store.close()


class Notified:
    def __init__(self) -> None:
        self.items: list[Approval] = []

    def notify(self, approval: Approval) -> None:
        self.items.append(approval)


class _Paused:
    """Holds back the reply of one of the store's scripts once Redis has run it, the first time it runs (or of
    the first `hgetall` of its client)."""

    def __init__(self, store: RedisApprovalStore, name: str) -> None:
        self.reached, self.go = asyncio.Event(), asyncio.Event()
        if name == "hgetall":
            read = store._client.hgetall

            async def hgetall(*args: object) -> object:
                result = await read(*args)
                await self._hold_back()
                return result
            store._client.hgetall = hgetall
            return
        run = store._script

        async def script(script_name: str, *args: object) -> object:
            result = await run(script_name, *args)
            if script_name == name:
                await self._hold_back()
            return result
        store._script = script  # type: ignore[method-assign]

    async def _hold_back(self) -> None:
        if not self.reached.is_set():
            self.reached.set()
            await self.go.wait()


async def _cut_off(task: asyncio.Task[Any], paused: _Paused) -> None:
    """Cancel `task` while its script's reply is held back (twice, as aiohttp and the session's end may), then let
    the reply through and wait for the task to end."""
    await asyncio.wait_for(paused.reached.wait(), 10)
    task.cancel()
    await asyncio.sleep(0)  # the cancellation is delivered before Redis's answer is let through
    task.cancel()
    paused.go.set()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(task, 10)
    assert task.cancelled()


async def _store(redis_factory: Callable[..., RedisServer], clock: Clock) -> tuple[RedisServer, RedisApprovalStore]:
    """A Redis approval store (started) on a server of its own the test may kill and restart."""
    server = redis_factory(appendonly=True)
    store = RedisApprovalStore.from_url(server.url, "t:", clock=clock, heartbeat_s=0.2)
    await store.start()
    return server, store


async def _held(store: RedisApprovalStore) -> tuple[Any, asyncio.Task[None], str]:
    """A call held on `store` (its context, the stage's task, the approval id), past its first keep-alives."""
    ctx = call_context(notify=Sink())
    held = asyncio.create_task(ApproveStage(store, ApprovalsConfig(keepalive_s=0.2))(ctx))
    await ctx.notify.wait_for(2)
    return ctx, held, str(ctx.extra["approval_id"])


async def _withdrawn(store: Any, approval_id: str) -> bool:
    """The item is `cancelled` (False while Redis is still coming back)."""
    with contextlib.suppress(GatewayError):
        return bool((await store.get(approval_id)).state == "cancelled")
    return False


async def test_a_call_cancelled_while_its_item_is_created_withdraws_it(replicas) -> None:  # type: ignore[no-untyped-def]
    """The item was created but the request never learned of it: nobody waits on it and the approvers were not
    notified. It used to stay pending, so the agent's retry joined it (a join notifies nobody) and waited until it
    expired without any approver being told."""
    a, b, _ = replicas
    notified = Notified()
    stage = ApproveStage(a, ApprovalsConfig(keepalive_s=0.2), notifier=notified)
    paused = _Paused(a, "CREATE_OR_JOIN")
    await _cut_off(asyncio.create_task(stage(call_context(notify=Sink()))), paused)
    assert await b.list(["pending"]) == []
    [gone] = await b.list(["cancelled"])
    with pytest.raises(GatewayError) as retry:  # the retry (a client that cannot wait) asks the approvers anew
        await stage(call_context())
    assert retry.value.reason == "approval_pending" and retry.value.data["approval_id"] != gone.id
    assert [i.id for i in notified.items] == [retry.value.data["approval_id"]]


async def test_a_call_cancelled_while_its_approval_is_claimed_is_recorded_not_executed(  # type: ignore[no-untyped-def]
        replicas) -> None:
    """The claim went through but the call never reached the forward: the item used to read `executed: true` with
    no `executed` or `not_executed` record, as if the call may have run."""
    a, b, events = replicas
    stage = ApproveStage(a, ApprovalsConfig())
    with pytest.raises(GatewayError) as held:  # a client that cannot wait: told the id, it retries
        await stage(call_context())
    approval_id = held.value.data["approval_id"]
    await b.decide(approval_id, "alice", "approved", None)
    paused = _Paused(a, "CLAIM")
    await _cut_off(asyncio.create_task(stage(call_context())), paused)
    settled = await b.get(approval_id)
    assert settled.executed and settled.not_executed == "cancelled" and not settled.to_json()["executed"]
    assert [e["detail"] for e in events if e["transition"] == "not_executed"] == ["cancelled"]
    assert not await b.claim_execution(approval_id)  # the approval is used all the same


@pytest.mark.parametrize("forwarded", [True, False], ids=["executed", "not_executed"])
async def test_a_settle_cut_off_by_a_cancellation_is_still_recorded(replicas, forwarded: bool) -> None:  # type: ignore[no-untyped-def]
    """The pipeline settles a claimed call in its `finally`, where a second cancellation (the session's end after
    the client's) can land: the `executed` / `not_executed` record used to be lost with the reply."""
    a, b, events = replicas
    stage = ApproveStage(a, ApprovalsConfig())
    with pytest.raises(GatewayError) as held:
        await stage(call_context())
    approval_id = held.value.data["approval_id"]
    await b.decide(approval_id, "alice", "approved", None)
    ctx = call_context()
    await stage(ctx)
    assert ctx.approval is not None and ctx.approval.id == approval_id
    if forwarded:
        ctx.extra["forwarded"] = True
    else:
        ctx.error = asyncio.CancelledError()
    paused = _Paused(a, "hgetall" if forwarded else "NOT_EXECUTED")
    await _cut_off(asyncio.create_task(stage.settle(ctx)), paused)
    transition = "executed" if forwarded else "not_executed"
    assert [e["approval_id"] for e in events if e["transition"] == transition] == [approval_id]



async def test_a_held_call_keeps_its_keepalive_pace_while_redis_is_down(redis_factory, clock: Clock) -> None:  # type: ignore[no-untyped-def]
    """docs/approvals.md: during an outage held calls keep waiting, a keep-alive every keepalive_s. Once the first
    wait step failed, each next one failed at once: the call sent progress notifications (and tried Redis) several
    times a second, ~25 in 8 s at keepalive_s 5."""
    server = redis_factory(appendonly=True)
    store = RedisApprovalStore.from_url(server.url, "t:", clock=clock)
    await store.start()
    try:
        sink = Sink()
        ctx = call_context(notify=sink, progress_token="p")
        held = asyncio.create_task(ApproveStage(store, ApprovalsConfig(keepalive_s=1))(ctx))
        await sink.wait_for(2)  # held, and one wait step done
        server.kill()
        seen = len(sink.messages)
        await asyncio.sleep(4)  # a window to count keep-alives in, not synchronisation
        assert len(sink.messages) - seen <= 6
        server.restart()
        [item] = await store.list(["pending"])
        await store.decide(item.id, "alice", "approved", None)
        await asyncio.wait_for(held, 15)  # resumes once Redis is back
        assert ctx.approval is not None and ctx.approval.outcome == "approved"
    finally:
        await store.close()


@pytest.mark.parametrize("how", ["cancelled", "gone"])
async def test_a_call_that_goes_away_during_an_outage_is_withdrawn_once_redis_is_back(  # type: ignore[no-untyped-def]
        redis_factory, clock: Clock, how: str) -> None:
    """Its hold could not be released nor the call withdrawn while Redis was down. The item used to stay pending
    until it expired (and a client whose stream broke was answered approval_unavailable), with a hold nobody had,
    which also kept an identical call that joined it later and went away from withdrawing it."""
    server, store = await _store(redis_factory, clock)
    try:
        ctx, held, approval_id = await _held(store)
        server.kill()
        if how == "gone":  # the stream broke: answered approval_cancelled (kept for a resume), as without an outage
            ctx.cancelled.set()
            with pytest.raises(GatewayError) as answer:
                await asyncio.wait_for(held, 15)
            assert answer.value.reason == "approval_cancelled"
        else:
            held.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(held, 15)
        server.restart()

        await eventually(lambda: _withdrawn(store, approval_id))
        assert await store._client.hgetall("t:approvals:held:" + approval_id) == {}
    finally:
        await store.close()


@pytest.mark.parametrize("change", ["approved", "denied", "vote", "expired"])
async def test_a_change_made_by_a_request_that_goes_away_is_still_recorded(  # type: ignore[no-untyped-def]
        replicas, clock: Clock, change: str) -> None:
    """The gateway cancels a request's handler when its client goes away (app.py: handler_cancellation), e.g. an
    approver's CLI timing out or a page closed as it posts. Redis made the change, but its decision-log record
    came after the reply and was lost with it: an approval nobody could tell the approver of."""
    a, _, events = replicas
    with pytest.raises(GatewayError) as held:
        await ApproveStage(a, ApprovalsConfig(quorum=2 if change == "vote" else 1))(call_context())
    approval_id = held.value.data["approval_id"]
    if change == "expired":  # an approver's read of an item past its expiry expires it
        clock.advance(901)
        paused, step = _Paused(a, "CANCEL"), a.get(approval_id)
    else:
        paused, step = _Paused(a, "DECIDE"), a.decide(approval_id, "alice", "denied" if change == "denied"
                                                       else "approved", "ok")
    await _cut_off(asyncio.ensure_future(step), paused)
    assert [e["transition"] for e in events if e["transition"] != "created"] == [change]


async def test_a_release_that_fails_under_a_second_cancellation_is_still_owed(  # type: ignore[no-untyped-def]
        redis_factory, clock: Clock) -> None:
    """aiohttp, then the session's end, may both cancel a gone client's call: the second landing while the hold's
    release was failing (Redis down) turned the failure into the cancellation, and the release was not owed."""
    server, store = await _store(redis_factory, clock)
    try:
        _, held, approval_id = await _held(store)
        reached, go, run = asyncio.Event(), asyncio.Event(), store._script

        async def script(name: str, *args: object) -> object:
            if name == "HOLD" and args[-1] == -1 and not reached.is_set():
                reached.set()
                await go.wait()
            return await run(name, *args)
        store._script = script  # type: ignore[method-assign]
        server.kill()
        held.cancel()
        await asyncio.wait_for(reached.wait(), 10)
        held.cancel()
        await asyncio.sleep(0)  # the second cancellation is delivered while the release is on its way
        go.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(held, 15)
        server.restart()

        await eventually(lambda: _withdrawn(store, approval_id))
    finally:
        await store.close()
