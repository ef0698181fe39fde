"""A held call whose wait begins just as Redis goes away waits through the outage, as one begun before it does.

The item was created (approvers may already see it) and the call was registering its hold when Redis went down:
the registration failed and the call was answered approval_unavailable while the item stayed pending, so an
approval later released nothing (seen under CI load in test_redis_outage_replicas). The hold is now owed, made once
Redis answers, and released at the end as any other. Real redis-server, killed and restarted.
"""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.approvals.stage import ApproveStage
from gateway.config.model import ApprovalsConfig
from tests.approvals.conftest import Clock, Sink, call_context, eventually
from tests.approvals.test_stage_cancel_points import _store


async def test_a_wait_that_begins_as_redis_goes_away_waits_through_the_outage(redis_factory: Any, clock: Clock) -> None:
    server, store = await _store(redis_factory, clock)
    try:
        reached, go, run = asyncio.Event(), asyncio.Event(), store._script

        async def script(name: str, *args: object) -> object:
            if name == "HOLD" and args[-1] == 1 and not reached.is_set():
                reached.set()  # the item exists; the call is about to count its hold
                await go.wait()
            return await run(name, *args)
        store._script = script  # type: ignore[method-assign]
        sink = Sink()
        ctx = call_context(notify=sink)
        held = asyncio.create_task(ApproveStage(store, ApprovalsConfig(keepalive_s=0.2))(ctx))
        await asyncio.wait_for(reached.wait(), 10)
        server.kill()
        go.set()
        await sink.wait_for(2)  # still held: keep-alives through the outage, no answer
        assert not held.done()
        server.restart()
        approval_id = str(ctx.extra["approval_id"])
        await eventually(lambda: _counted(store, approval_id, "1"))  # the owed hold, made once Redis answers
        await store.decide(approval_id, "alice", "approved", None)
        await asyncio.wait_for(held, 15)
        assert ctx.approval is not None and ctx.approval.outcome == "approved"
        await eventually(lambda: _counted(store, approval_id, None))  # and released at the end
    finally:
        await store.close()


async def _counted(store: Any, approval_id: str, count: str | None) -> bool:
    """This replica's hold count on the item (None: no hold)."""
    holds = await store._client.hgetall("t:approvals:held:" + approval_id)
    return (next(iter(holds.values())).decode() if holds else None) == count
