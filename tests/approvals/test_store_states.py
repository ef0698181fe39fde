"""Both approval stores (memory, real Redis): create/join, exact-args binding, atomic decisions, claims."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest

from gateway.approvals.model import AlreadyDecided, ApprovalNotFound
from tests.approvals.conftest import Clock, StoreKit, draft


async def test_create_then_join_same_call(store: Any, clock: Clock) -> None:
    first, created = await store.create_or_join(draft(clock), link_s=1800)
    again, created_again = await store.create_or_join(draft(clock), link_s=1800)
    assert created and not created_again
    assert again.id == first.id and again.state == "pending"
    assert (await store.get(first.id)).to_json()["args"] == {"amount": 10, "account": "A-1"}


async def test_changed_argument_needs_new_approval(store: Any, clock: Clock) -> None:
    first, _ = await store.create_or_join(draft(clock, {"amount": 10, "account": "A-1"}), link_s=1800)
    other, created = await store.create_or_join(draft(clock, {"amount": 11, "account": "A-1"}), link_s=1800)
    assert created and other.id != first.id and other.args_digest != first.args_digest
    await store.decide(first.id, "alice", "approved", "ok")
    third, created3 = await store.create_or_join(draft(clock, {"amount": 11, "account": "A-1"}), link_s=1800)
    assert not created3 and third.id == other.id and third.pending


async def test_double_approve_is_already_decided(store: Any, clock: Clock) -> None:
    item, _ = await store.create_or_join(draft(clock), link_s=1800)
    approved = await store.decide(item.id, "alice", "approved", "fine")
    assert approved.state == "approved" and approved.decided_by == ("alice",) and approved.comment == "fine"
    with pytest.raises(AlreadyDecided) as info:
        await store.decide(item.id, "bob", "approved", None)
    assert info.value.approval.state == "approved" and info.value.reason == "already_decided"


async def test_approve_racing_deny_has_one_winner(store: Any, clock: Clock) -> None:
    for _ in range(5):
        item, _ = await store.create_or_join(draft(clock, {"n": _}), link_s=1800)
        results = await asyncio.gather(store.decide(item.id, "alice", "approved", "yes"),
                                       store.decide(item.id, "bob", "denied", "no"), return_exceptions=True)
        winners = [r for r in results if not isinstance(r, BaseException)]
        losers = [r for r in results if isinstance(r, AlreadyDecided)]
        assert len(winners) == 1 and len(losers) == 1
        final = await store.get(item.id)
        assert final.state == winners[0].state and losers[0].approval.state == final.state


async def test_approve_after_expiry_is_rejected(store: Any, clock: Clock) -> None:
    item, _ = await store.create_or_join(draft(clock, ttl=60), link_s=1800)
    clock.advance(61)
    with pytest.raises(AlreadyDecided) as info:
        await store.decide(item.id, "alice", "approved", None)
    assert info.value.approval.state == "expired"
    assert (await store.get(item.id)).state == "expired"
    assert not await store.claim_execution(item.id)


async def test_approve_racing_expiry_has_one_terminal_state(store: Any, clock: Clock) -> None:
    item, _ = await store.create_or_join(draft(clock, ttl=60), link_s=1800)
    results = await asyncio.gather(store.decide(item.id, "alice", "approved", None),
                                   store.cancel(item.id, "expired"), return_exceptions=True)
    final = await store.get(item.id)
    assert final.state in ("approved", "expired")
    if final.state == "approved":
        assert results[1].state == "approved"  # the expiry was a no-op
    else:
        assert isinstance(results[0], AlreadyDecided)


async def test_claim_execution_exactly_once(store: Any, clock: Clock) -> None:
    item, _ = await store.create_or_join(draft(clock), link_s=1800)
    assert not await store.claim_execution(item.id)  # pending: nothing to claim
    await store.decide(item.id, "alice", "approved", None)
    claims = await asyncio.gather(*(store.claim_execution(item.id) for _ in range(10)))
    assert claims.count(True) == 1
    fresh, created = await store.create_or_join(draft(clock), link_s=1800)
    assert created and fresh.id != item.id  # the approval was used: the same call needs a new one


async def test_denied_item_is_reported_to_retries(store: Any, clock: Clock) -> None:
    item, _ = await store.create_or_join(draft(clock), link_s=1800)
    await store.decide(item.id, "alice", "denied", "too much")
    again, created = await store.create_or_join(draft(clock), link_s=1800)
    assert not created and again.state == "denied" and again.comment == "too much"
    assert not await store.claim_execution(item.id)


async def test_cancelled_or_expired_item_is_replaced(store: Any, clock: Clock) -> None:
    item, _ = await store.create_or_join(draft(clock), link_s=1800)
    assert (await store.cancel(item.id, "cancelled", actor="agent-1")).state == "cancelled"
    assert (await store.cancel(item.id, "abandoned")).state == "cancelled"  # terminal: no-op
    again, created = await store.create_or_join(draft(clock), link_s=1800)
    assert created and again.id != item.id
    clock.advance(901)
    # The first retry after expiry learns it (approval_expired, as a denial is reported); the next asks anew.
    told, created3 = await store.create_or_join(draft(clock), link_s=1800)
    assert not created3 and told.id == again.id and told.state == "expired"
    third, created4 = await store.create_or_join(draft(clock), link_s=1800)
    assert created4 and third.id != again.id and third.pending
    assert (await store.get(again.id)).state == "expired"


async def test_quorum_needs_distinct_approvers(store: Any, clock: Clock) -> None:
    item, _ = await store.create_or_join(draft(clock, quorum=2), link_s=1800)
    first = await store.decide(item.id, "alice", "approved", "one")
    assert first.state == "pending" and len(first.votes) == 1
    with pytest.raises(AlreadyDecided) as info:
        await store.decide(item.id, "alice", "approved", "again")
    assert info.value.reason == "already_voted"
    second = await store.decide(item.id, "bob", "approved", "two")
    assert second.state == "approved" and set(second.decided_by) == {"alice", "bob"}


async def test_list_get_and_unknown(store: Any, clock: Clock) -> None:
    a, _ = await store.create_or_join(draft(clock, {"n": 1}), link_s=1800)
    clock.advance(1)
    b, _ = await store.create_or_join(draft(clock, {"n": 2}), link_s=1800)
    await store.decide(a.id, "alice", "denied", None)
    assert [i.id for i in await store.list(["pending"])] == [b.id]
    assert [i.id for i in await store.list()] == [b.id, a.id]
    assert [i.id for i in await store.list(["denied"])] == [a.id]
    assert [i.id for i in await store.list(limit=1)] == [b.id]
    with pytest.raises(ApprovalNotFound):
        await store.get("apr_missing")
    with pytest.raises(ApprovalNotFound):
        await store.decide("apr_missing", "alice", "approved", None)
    with pytest.raises(ValueError):
        await store.decide(b.id, "alice", "maybe", None)


async def test_wait_returns_on_decision(store: Any, clock: Clock) -> None:
    item, _ = await store.create_or_join(draft(clock), link_s=1800)
    waiter = asyncio.create_task(store.wait(item.id, 30))
    await asyncio.sleep(0)
    assert (await store.wait(item.id, 0)).pending
    await store.decide(item.id, "alice", "approved", None)
    assert (await asyncio.wait_for(waiter, 10)).state == "approved"
    timed_out = await store.create_or_join(draft(clock, {"n": 9}), link_s=1800)
    assert (await store.wait(timed_out[0].id, 0.05)).pending


async def test_every_change_is_an_event(kit: StoreKit, clock: Clock) -> None:
    store = await kit.make()
    item, _ = await store.create_or_join(draft(clock), link_s=1800)
    await store.decide(item.id, "alice", "approved", "looks right")
    await store.claim_execution(item.id)
    await store.settle(item.id, None)  # the claimed call was forwarded
    transitions = [(e["transition"], e["actor"], e["comment"]) for e in kit.events if e["approval_id"] == item.id]
    assert transitions == [("created", "agent-1", None), ("approved", "alice", "looks right"),
                           ("executed", None, None)]


async def test_count_pending_is_store_wide_and_leaves_out_due_items(kit: StoreKit, clock: Clock) -> None:
    # two replicas sharing the store; no housekeeping pass may expire the due item during the test
    a, b = await kit.make(heartbeat_s=3600), await kit.make(heartbeat_s=3600)
    assert await a.count_pending() == 0
    first, _ = await a.create_or_join(draft(clock, {"n": 1}), link_s=1800)
    await a.create_or_join(draft(clock, {"n": 2}, ttl=10), link_s=1800)
    await b.create_or_join(draft(clock, {"n": 3}, quorum=2), link_s=1800)
    assert await a.count_pending() == await b.count_pending() == 3
    await b.decide(first.id, "alice", "denied", None)  # held on a, decided on b
    assert await a.count_pending() == await b.count_pending() == 2
    clock.advance(11)  # the ttl=10 item is due; nothing has marked it expired yet
    assert await a.count_pending() == await b.count_pending() == 1
    assert [e["transition"] for e in kit.events].count("expired") == 0  # counting has no side effects


async def test_an_item_keeps_the_policy_version_that_held_it(store: Any, clock: Clock) -> None:
    # Policies may reload while the call waits: the item says which set held it, in both stores.
    item, _ = await store.create_or_join(dataclasses.replace(draft(clock), policy_version="sha256:abc"), link_s=1800)
    assert (await store.get(item.id)).to_json()["policy_version"] == "sha256:abc"


async def test_a_due_item_reads_expired_whatever_touches_it_first(kit: StoreKit, clock: Clock) -> None:
    """An item past its expiry that the sweep has not marked yet is expired by whatever comes first, in both stores
    alike, and the decision log gets that `expired`: with Redis an approver's decision expired it without a record,
    and a withdrawing client or a cancel marked it `cancelled` (the memory store: `expired`)."""
    store = await kit.make(heartbeat_s=3600)  # no housekeeping pass during the test
    voted, _ = await store.create_or_join(draft(clock, {"n": 1}, ttl=10), link_s=1800)
    withdrawn, _ = await store.create_or_join(draft(clock, {"n": 2}, ttl=10), link_s=1800)
    cancelled, _ = await store.create_or_join(draft(clock, {"n": 3}, ttl=10), link_s=1800)
    clock.advance(11)
    with pytest.raises(AlreadyDecided) as late:
        await store.decide(voted.id, "alice", "approved", "too late")
    assert late.value.reason == "already_decided" and late.value.approval.state == "expired"
    assert (await store.withdraw(withdrawn.id, actor="agent-1")).state == "expired"
    assert (await store.cancel(cancelled.id, actor="agent-1")).state == "expired"
    changes = [(e["approval_id"], e["transition"], e["actor"]) for e in kit.events if e["transition"] != "created"]
    assert sorted(changes) == sorted((i.id, "expired", None) for i in (voted, withdrawn, cancelled))
    assert await store.expire_due() == []  # nothing left to expire, nothing recorded twice


async def test_settling_a_call_that_was_never_claimed_records_nothing(kit: StoreKit, clock: Clock) -> None:
    store = await kit.make(heartbeat_s=3600)
    item, _ = await store.create_or_join(draft(clock), link_s=1800)
    await store.decide(item.id, "alice", "approved", None)
    await store.settle(item.id, None)  # not claimed: it cannot have run (Redis used to record `executed`)
    assert [e["transition"] for e in kit.events] == ["created", "approved"]
    assert not (await store.get(item.id)).to_json()["executed"]
