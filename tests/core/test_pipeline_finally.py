"""The pipeline's `finally`: the decision record is written for every call, even when a cancellation lands while a
claimed approval is being settled (the client going away, then the session's end, can both cancel a call)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.context import ApprovalState, CallContext, Decision
from gateway.pipeline import APPROVAL_SETTLE, Pipeline
from tests.approvals.conftest import call_context


async def test_the_record_is_written_when_a_cancellation_lands_while_the_approval_is_settled() -> None:
    recorded: list[CallContext] = []
    settling, settled = asyncio.Event(), asyncio.Event()

    async def authorize(ctx: CallContext) -> None:
        ctx.decision = Decision("allow", ("p",), policy_version="v1")

    async def approve(ctx: CallContext) -> None:  # a claimed approval, as the approve stage leaves it
        async def settle(ctx: CallContext) -> None:
            settling.set()
            try:
                await asyncio.Event().wait()  # the store's write, in flight when the cancellation lands
            finally:
                settled.set()
        ctx.approval = ApprovalState("apr_1", "approved", ("alice",))
        ctx.extra[APPROVAL_SETTLE] = settle

    async def credential(ctx: CallContext) -> None:
        return None

    async def forward(ctx: CallContext) -> dict[str, Any]:
        ctx.extra["forwarded"] = True
        return {"content": []}

    async def record(ctx: CallContext) -> None:
        recorded.append(ctx)

    pipeline = Pipeline(authorize=authorize, approve=approve, credential=credential, forward=forward, record=record)
    ctx = call_context()
    task = asyncio.create_task(pipeline.run(ctx))
    await asyncio.wait_for(settling.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert settled.is_set()
    assert recorded == [ctx]  # (was []: the record step after the settle was skipped)
