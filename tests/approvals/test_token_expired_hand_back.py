"""An approved call that fails on the agent's expired token hands its approval back.

In the credential modes that need the agent's token (`minted`, `token_exchange`), a call held long enough for that
token to expire is refused `credential_unavailable` with `data.agent_token_expired` once approved: it never reached
the upstream. The approval used to be used up all the same, so the agent's retry with a refreshed token was held
for a new approval. Now the item returns to `approved` (not executed) and the identical retry runs on it, once;
every other way of never running still uses the approval up."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.approvals.stage import ApproveStage
from gateway.config.model import ApprovalsConfig
from gateway.context import Principal
from gateway.errors import GatewayError
from gateway.pipeline import Pipeline
from tests.approvals.conftest import PRINCIPAL, Clock, StoreKit, call_context, draft
from tests.approvals.test_stage_cancel_points import _cut_off, _Paused
from tests.approvals.test_unexecuted_approval import Calls, _transitions

EXPIRED = {"agent_token_expired": True}
WINDOW_S = 2 * 900  # an approval is usable by a retry for 2 x ttl_s after the call was held


def _pipeline(store: Any, calls: Calls) -> Pipeline:
    return Pipeline(authorize=calls.authorize, approve=ApproveStage(store, ApprovalsConfig(wait_s=0)),
                    credential=calls.credential, forward=calls.forward, record=calls.record)


async def _run(pipeline: Pipeline, principal: Principal = PRINCIPAL, args: dict[str, Any] | None = None) -> Any:
    """The call's result, or the GatewayError it was answered with."""
    try:
        return await pipeline.run(call_context(args, principal=principal))
    except GatewayError as exc:
        return exc


async def _approved_then_refused(kit: StoreKit, calls: Calls) -> tuple[Any, str]:
    """Held (a client that cannot wait), approved, and the retry refused on the agent's expired token."""
    store = await kit.make()
    pending = await _run(_pipeline(store, calls))
    assert isinstance(pending, GatewayError) and pending.reason == "approval_pending"
    approval_id = pending.data["approval_id"]
    await store.decide(approval_id, "alice", "approved", "ok")
    refused = await _run(_pipeline(store, calls))
    assert isinstance(refused, GatewayError) and refused.reason == "credential_unavailable"
    assert refused.data == EXPIRED and calls.forwarded == 0
    return store, approval_id


async def test_the_retry_with_a_refreshed_token_runs_on_the_same_approval(kit: StoreKit) -> None:
    calls = Calls(credential="credential_unavailable", credential_data=EXPIRED)
    store, approval_id = await _approved_then_refused(kit, calls)
    item = await store.get(approval_id)
    assert item.state == "approved" and item.claimable  # handed back: approved, not executed
    assert item.to_json()["executed"] is False and item.to_json()["not_executed"] is None
    assert _transitions(kit, approval_id)[-1] == ("handed_back", "agent_token_expired")
    assert "not_executed" not in [t for t, _ in _transitions(kit, approval_id)]

    calls.credential_error = None  # the agent refreshed its token
    assert await _run(_pipeline(await kit.make(), calls)) == {"content": []}
    assert calls.forwarded == 1
    ran = await store.get(approval_id)
    assert ran.to_json()["executed"] is True and not ran.claimable
    assert _transitions(kit, approval_id)[-1] == ("executed", None)
    again = await _run(_pipeline(store, calls))  # still one approval, one execution
    assert isinstance(again, GatewayError) and again.reason == "approval_pending"
    assert again.data["approval_id"] != approval_id and calls.forwarded == 1


async def test_another_principal_or_other_arguments_do_not_reuse_a_handed_back_approval(kit: StoreKit) -> None:
    calls = Calls(credential="credential_unavailable", credential_data=EXPIRED)
    store, approval_id = await _approved_then_refused(kit, calls)
    calls.credential_error = None
    other = Principal(id="agent-2", issuer=PRINCIPAL.issuer, subject="agent-2", attributes={"tenant": "acme"},
                      chain=PRINCIPAL.chain)
    for answer in (await _run(_pipeline(store, calls), principal=other),
                   await _run(_pipeline(store, calls), args={"amount": 11, "account": "A-1"})):
        assert isinstance(answer, GatewayError) and answer.reason == "approval_pending"
        assert answer.data["approval_id"] != approval_id
    assert calls.forwarded == 0 and (await store.get(approval_id)).claimable


async def test_two_concurrent_retries_run_once(kit: StoreKit) -> None:
    calls = Calls(credential="credential_unavailable", credential_data=EXPIRED)
    store, approval_id = await _approved_then_refused(kit, calls)
    calls.credential_error = None
    answers = await asyncio.gather(_run(_pipeline(await kit.make(), calls)), _run(_pipeline(await kit.make(), calls)))
    assert calls.forwarded == 1 and (await store.get(approval_id)).to_json()["executed"] is True
    [held] = [a for a in answers if isinstance(a, GatewayError)]  # the other is held anew, on a new item
    assert held.reason == "approval_pending" and held.data["approval_id"] != approval_id


async def test_two_retries_join_the_handed_back_item_and_one_claim_wins(kit: StoreKit) -> None:
    store, approval_id = await _approved_then_refused(kit, Calls(credential="credential_unavailable",
                                                                 credential_data=EXPIRED))
    a, b = await kit.make(), await kit.make()
    stage = ApproveStage(store, ApprovalsConfig())
    joined = [await s.create_or_join(stage.draft(call_context()), link_s=WINDOW_S) for s in (a, b)]
    assert [(item.id, created, item.claimable) for item, created in joined] == [(approval_id, False, True)] * 2
    claims = await asyncio.gather(a.claim_execution(approval_id), b.claim_execution(approval_id))
    assert sorted(claims) == [False, True]


async def test_a_handed_back_approval_is_usable_for_as_long_as_any_approval(kit: StoreKit, clock: Clock) -> None:
    """Past the held item's `expires_at` (the approvers' deadline) but within the approval's window, as an approval
    not yet used."""
    calls = Calls(credential="credential_unavailable", credential_data=EXPIRED)
    store, approval_id = await _approved_then_refused(kit, calls)
    clock.advance(WINDOW_S - 60)
    calls.credential_error = None
    assert await _run(_pipeline(store, calls)) == {"content": []}
    assert calls.forwarded == 1 and (await store.get(approval_id)).to_json()["executed"] is True


async def test_a_handed_back_approval_is_not_usable_once_its_window_is_over(kit: StoreKit, clock: Clock) -> None:
    calls = Calls(credential="credential_unavailable", credential_data=EXPIRED)
    store, approval_id = await _approved_then_refused(kit, calls)
    clock.advance(WINDOW_S + 1)
    calls.credential_error = None
    late = await _run(_pipeline(store, calls))
    assert isinstance(late, GatewayError) and late.reason == "approval_pending"
    assert late.data["approval_id"] != approval_id and calls.forwarded == 0


async def test_an_approval_whose_window_ended_during_the_call_is_used_up(kit: StoreKit, clock: Clock) -> None:
    """The window ended between the claim and the refusal: there is nothing to hand back to."""
    calls = Calls(credential="credential_unavailable", credential_data=EXPIRED)
    refuse = calls.credential

    async def late_refusal(ctx: Any) -> None:
        clock.advance(WINDOW_S + 1)
        await refuse(ctx)
    calls.credential = late_refusal  # type: ignore[method-assign]
    store, approval_id = await _approved_then_refused(kit, calls)
    item = await store.get(approval_id)
    assert not item.claimable and item.not_executed == "agent_token_expired"
    assert _transitions(kit, approval_id)[-1] == ("not_executed", "agent_token_expired")


async def test_an_approval_is_not_handed_back_over_a_newer_item_for_the_call(kit: StoreKit, clock: Clock) -> None:
    """An identical call held anew between the claim and the refusal (the loser of a claim race) holds the call's
    binding: the approval is used up rather than handed back where no retry can find it."""
    store = await kit.make()
    item, _ = await store.create_or_join(draft(clock), link_s=WINDOW_S)
    await store.decide(item.id, "alice", "approved", None)
    assert await store.claim_execution(item.id)
    newer, created = await store.create_or_join(draft(clock), link_s=WINDOW_S)
    assert created and newer.pending
    assert not await store.hand_back(item.id, "agent_token_expired")
    assert (await store.get(item.id)).not_executed == "agent_token_expired"
    assert (await store.create_or_join(draft(clock), link_s=WINDOW_S))[0].id == newer.id


@pytest.mark.parametrize("data", [{"task_ended": True}, None], ids=["task_ended", "no_credential"])
async def test_other_credential_refusals_still_use_the_approval_up(kit: StoreKit, data: Any) -> None:
    calls = Calls(credential="credential_unavailable", credential_data=data)
    store = await kit.make()
    pending = await _run(_pipeline(store, calls))
    await store.decide(pending.data["approval_id"], "alice", "approved", None)
    assert isinstance(await _run(_pipeline(store, calls)), GatewayError)
    item = await store.get(pending.data["approval_id"])
    assert not item.claimable and item.not_executed == "credential_unavailable"
    assert not await store.hand_back(item.id, "agent_token_expired")  # settled: nothing left to hand back


async def test_a_hand_back_cut_off_by_a_cancellation_is_still_made(redis_factory: Any, clock: Clock) -> None:
    """Settled in the pipeline's `finally`, where a second cancellation can land: the hand-back Redis made must
    still be recorded (and it is made, or the call is used up, never left claimed with no record)."""
    from gateway.approvals.redis import RedisApprovalStore
    events: list[dict[str, Any]] = []
    store = RedisApprovalStore.from_url(redis_factory(appendonly=True).url, "t:", clock=clock, on_event=events.append)
    await store.start()
    try:
        stage = ApproveStage(store, ApprovalsConfig(wait_s=0))
        with pytest.raises(GatewayError) as held:
            await stage(call_context())
        approval_id = held.value.data["approval_id"]
        await store.decide(approval_id, "alice", "approved", None)
        ctx = call_context()
        await stage(ctx)
        ctx.error = GatewayError("credential_unavailable", data=EXPIRED)
        paused = _Paused(store, "HAND_BACK")
        await _cut_off(asyncio.create_task(stage.settle(ctx)), paused)
        assert [e["transition"] for e in events][-1] == "handed_back"
        assert (await store.get(approval_id)).claimable
    finally:
        await store.close()
