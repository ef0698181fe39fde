"""Several replicas on one real Redis: cross-replica release, exactly-once claims, outages, abandoned items."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import textwrap
from collections.abc import Callable
from dataclasses import fields, replace
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from gateway.approvals.model import Approval
from gateway.approvals.redis import RedisApprovalStore
from gateway.approvals.stage import ApproveStage
from gateway.config.model import ApprovalsConfig
from gateway.errors import GatewayError
from tests.approvals.conftest import Clock, Sink, call_context, draft, eventually
from tests.support.redis import RedisServer

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
async def replicas(redis_factory: Callable[..., RedisServer], clock: Clock):  # type: ignore[no-untyped-def]
    server = redis_factory(appendonly=True)
    stores = [RedisApprovalStore.from_url(server.url, "t:", clock=clock, heartbeat_s=0.2) for _ in range(2)]
    for store in stores:
        await store.start()
    yield server, stores[0], stores[1]
    for store in stores:
        await store.close()


async def test_claim_exactly_once_across_replicas(replicas, clock: Clock) -> None:  # type: ignore[no-untyped-def]
    _, a, b = replicas
    for n in range(5):
        item, _ = await a.create_or_join(draft(clock, {"n": n}), link_s=1800)
        await b.decide(item.id, "alice", "approved", None)
        claims = await asyncio.gather(*(s.claim_execution(item.id) for s in (a, b, a, b, a, b)))
        assert claims.count(True) == 1


async def test_wait_on_a_is_woken_by_decision_through_b(replicas, clock: Clock) -> None:  # type: ignore[no-untyped-def]
    _, a, b = replicas
    item, _ = await a.create_or_join(draft(clock), link_s=1800)
    joined, created = await b.create_or_join(draft(clock), link_s=1800)
    assert joined.id == item.id and not created
    waiter = asyncio.create_task(a.wait(item.id, 60))
    await asyncio.sleep(0)  # let the waiter register before the decision
    await b.decide(item.id, "alice", "approved", "via b")
    woke = await asyncio.wait_for(waiter, 10)  # far below the 60 s wait: the pub/sub woke it
    assert woke.state == "approved" and woke.comment == "via b"


async def test_held_stage_call_on_a_released_through_b(replicas, clock: Clock) -> None:  # type: ignore[no-untyped-def]
    _, a, b = replicas
    stage = ApproveStage(a, ApprovalsConfig(keepalive_s=30))
    ctx = call_context(notify=Sink())
    held = asyncio.create_task(stage(ctx))
    await eventually(lambda: _has_pending(b))
    [item] = await b.list(["pending"])
    await b.decide(item.id, "alice", "approved", None)
    await asyncio.wait_for(held, 10)
    assert ctx.approval is not None and ctx.approval.id == item.id and ctx.approval.outcome == "approved"
    assert not await b.claim_execution(item.id)


async def _has_pending(store: RedisApprovalStore) -> bool:
    return bool(await store.list(["pending"]))


async def test_redis_down_fails_closed_and_keeps_items(replicas, clock: Clock) -> None:  # type: ignore[no-untyped-def]
    server, a, b = replicas
    item, _ = await a.create_or_join(draft(clock), link_s=1800)
    server.kill()
    for attempt in (a.create_or_join(draft(clock, {"n": 2}), link_s=1800), a.get(item.id),
                    b.decide(item.id, "alice", "approved", None), a.claim_execution(item.id), a.list()):
        with pytest.raises(GatewayError) as info:
            await attempt
        assert info.value.reason == "approval_unavailable"
    stage = ApproveStage(a, ApprovalsConfig())
    with pytest.raises(GatewayError) as info:
        await stage(call_context({"n": 3}))
    assert info.value.reason == "approval_unavailable"
    server.restart()
    back = await b.get(item.id)
    assert back.pending  # not lost
    await b.decide(item.id, "alice", "approved", None)
    claims = await asyncio.gather(a.claim_execution(item.id), b.claim_execution(item.id), a.claim_execution(item.id))
    assert claims.count(True) == 1  # not executed twice


async def test_held_call_survives_an_outage(replicas, clock: Clock) -> None:  # type: ignore[no-untyped-def]
    server, a, b = replicas
    stage = ApproveStage(a, ApprovalsConfig(keepalive_s=0.1))
    sink = Sink()
    ctx = call_context(notify=sink, progress_token="tok")
    held = asyncio.create_task(stage(ctx))
    await sink.wait_for(1)
    server.kill()
    await sink.wait_for(4)  # keep-alives continue while Redis is down; the call stays held
    assert not held.done()
    server.restart()
    [item] = await b.list(["pending"])
    await b.decide(item.id, "alice", "approved", None)
    await asyncio.wait_for(held, 15)
    assert ctx.approval is not None and ctx.approval.id == item.id
    assert not await a.claim_execution(item.id)


HOLDER = textwrap.dedent("""
    import asyncio, sys
    sys.path.insert(0, {repo!r})
    from gateway.approvals.redis import RedisApprovalStore
    from tests.approvals.conftest import Clock, draft

    async def main():
        store = RedisApprovalStore.from_url({url!r}, "t:", heartbeat_s=0.2)
        await store.start()
        item, _ = await store.create_or_join(draft(Clock()), link_s=1800)
        async with store.hold(item.id):
            print(item.id, flush=True)
            await asyncio.Event().wait()

    asyncio.run(main())
""")


async def test_items_held_by_a_dead_replica_are_abandoned(replicas, clock: Clock) -> None:  # type: ignore[no-untyped-def]
    server, a, b = replicas
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", HOLDER.format(repo=str(REPO), url=server.url),
                                                stdout=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        held_id = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().strip()
        assert held_id.startswith("apr_")
        unheld, _ = await a.create_or_join(draft(clock, {"retry": "later"}), link_s=1800)  # nobody waits
        live, _ = await a.create_or_join(draft(clock, {"live": True}), link_s=1800)
        async with a.hold(live.id):
            assert not await b.sweep_abandoned()  # the holder process is alive
            proc.kill()
            await proc.wait()

            async def abandoned() -> bool:
                await b.sweep_abandoned()
                return (await b.get(held_id)).state == "abandoned"

            await eventually(abandoned)
            assert (await b.get(live.id)).pending  # held by a live replica
        assert (await b.get(unheld.id)).pending  # an agent that retries later is not 'gone'
        history = await b.list(["abandoned"])
        assert [i.id for i in history] == [held_id]
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_stored_record_leaves_out_empty_owners_for_older_replicas(replicas, clock: Clock) -> None:  # type: ignore[no-untyped-def]
    # Replicas from before `owners` (95bc116) rebuild an item with `Approval(**record)`: an unknown key fails there.
    server, a, b = replicas
    previous_fields = {f.name for f in fields(Approval)} - {"owners"}
    plain, _ = await a.create_or_join(draft(clock, {"n": 1}), link_s=1800)
    owned, _ = await a.create_or_join(replace(draft(clock, {"n": 2}), owners=("bob",)), link_s=1800)
    client = aioredis.from_url(server.url)
    try:
        plain_record = json.loads(await client.hget(f"t:approvals:item:{plain.id}", "rec"))
        owned_record = json.loads(await client.hget(f"t:approvals:item:{owned.id}", "rec"))
    finally:
        await client.aclose()
    assert set(plain_record) <= previous_fields and "owners" not in plain_record
    assert owned_record["owners"] == ["bob"]
    assert (await b.get(plain.id)).owners == () and (await b.get(owned.id)).owners == ("bob",)


async def test_every_key_of_a_decided_item_ages_out(replicas, clock: Clock) -> None:  # type: ignore[no-untyped-def]
    """Decided items are kept `keep_s` (7 days), then gone: no key of theirs may live forever in Redis."""
    server, a, b = replicas
    approved, _ = await a.create_or_join(draft(clock, {"amount": 1}), link_s=1800)
    await b.decide(approved.id, "alice", "approved", "ok")
    assert await a.claim_execution(approved.id)
    denied, _ = await a.create_or_join(draft(clock, {"amount": 2}), link_s=1800)
    await b.decide(denied.id, "alice", "denied", "no")
    quorum, _ = await a.create_or_join(draft(clock, {"amount": 3}, quorum=2), link_s=1800)
    await a.decide(quorum.id, "alice", "approved", None)
    await b.decide(quorum.id, "bob", "approved", None)
    client = aioredis.Redis.from_url(server.url)
    try:
        for item in (approved, denied, quorum):
            for key in (f"t:approvals:item:{item.id}", f"t:approvals:voters:{item.id}"):
                assert await client.exists(key), key
                assert await client.pttl(key) > 0, f"{key} never expires"
    finally:
        await client.aclose()


async def test_history_index_forgets_items_that_aged_out(redis_factory: Callable[..., RedisServer],
                                                         clock: Clock) -> None:
    """The `all` index must not keep ids of items gone from Redis: listings read the newest first and never
    reach the old ones, so housekeeping prunes them."""
    server = redis_factory()
    store = RedisApprovalStore.from_url(server.url, "t:", clock=clock, heartbeat_s=0.1, keep_s=0.3)
    await store.start()
    client = aioredis.Redis.from_url(server.url)
    try:
        item, _ = await store.create_or_join(draft(clock), link_s=1800)
        await store.decide(item.id, "alice", "denied", "no")
        clock.advance(1.0)  # past keep_s: the item's hash expires in Redis's own time too (0.3 s)

        async def pruned() -> bool:
            return not await client.exists(f"t:approvals:item:{item.id}") and \
                await client.zscore("t:approvals:all", item.id) is None

        await eventually(pruned)
    finally:
        await client.aclose()
        await store.close()


async def test_an_approval_shortens_its_binding_link_to_the_use_window(replicas, clock: Clock) -> None:  # type: ignore[no-untyped-def]
    """Links live as long as their items (a late retry learns a denial), but an approved item's link lapses when
    the approval may no longer be used, so replicas that do not read `use_until` keep that window too."""
    _, a, _ = replicas
    item, _ = await a.create_or_join(draft(clock), link_s=1.0)
    link = "t:approvals:key:" + item.key
    assert await a._client.pttl(link) > 3600_000  # pending: as long as the item may be kept
    await a.decide(item.id, "alice", "approved", None)
    assert 0 < await a._client.pttl(link) <= 1000


class _Paused:
    """Holds back the answer of the store's HOLD script once Redis has run it: a cancellation then lands
    while the reply is on its way, as when a client goes away at that moment."""

    def __init__(self, store: RedisApprovalStore, step: int) -> None:
        self.reached, self.go = asyncio.Event(), asyncio.Event()
        self._run, self._step, self._seen = store._script, step, 0

        async def script(name: str, *args: object) -> object:
            result = await self._run(name, *args)
            if name == "HOLD" and args[-1] == self._step:
                self.reached.set()
                await self.go.wait()
            return result
        store._script = script  # type: ignore[method-assign]


@pytest.mark.parametrize("step", [1, -1], ids=["taking", "releasing"])
async def test_a_hold_cancelled_while_redis_answers_is_still_released(replicas, clock: Clock, step: int) -> None:  # type: ignore[no-untyped-def]
    _, a, b = replicas
    item, _ = await a.create_or_join(draft(clock), link_s=1800)
    paused, entered = _Paused(a, step), asyncio.Event()

    async def holder() -> None:
        async with a.hold(item.id):
            entered.set()
            await asyncio.Event().wait() if step == 1 else None

    task = asyncio.create_task(holder())
    await asyncio.wait_for(paused.reached.wait(), 10)
    task.cancel()
    await asyncio.sleep(0)  # the cancellation is delivered before Redis's answer is let through
    task.cancel()  # twice: aiohttp, then the session's end, may both cancel a gone client's call
    for _ in range(5):
        await asyncio.sleep(0)
    assert not task.done()  # the call ends once its hold is counted and released, not before
    paused.go.set()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(task, 10)
    assert (await b.withdraw(item.id, actor="agent-1")).state == "cancelled"  # no hold was left behind
