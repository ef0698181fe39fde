"""hand_back decides alike on both stores (store.hand_back): an approval goes back only while it is approved and
claimed by this call (its claim took the call's binding), before its use window ends, and when no other live item
(one an identical call would join: pending and not due, denied, or approved and unused within its window) binds
the call now; otherwise it is used up (`not_executed`), or, when not claimed at all, nothing happens."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from gateway.approvals.model import Approval
from tests.approvals.conftest import Clock, StoreKit, draft

WINDOW_S = 1800.0
WHY = "agent_token_expired"


async def _claimed(kit: StoreKit, clock: Clock) -> tuple[Any, Approval]:
    store = await kit.make()
    item, _ = await store.create_or_join(draft(clock), link_s=WINDOW_S)
    await store.decide(item.id, "alice", "approved", None)
    assert await store.claim_execution(item.id)
    return store, item


async def _prune(kit: StoreKit, store: Any, approval_id: str) -> None:
    """The item leaves the store as history trimming drops it (its binding, if any, is left behind)."""
    if kit.redis is None:
        store._items.pop(approval_id)  # what MemoryApprovalStore._trim does to the oldest decided items
        return
    import redis.asyncio as aioredis
    client = aioredis.from_url(kit.redis.url)
    try:
        await client.delete(f"t:approvals:item:{approval_id}")
    finally:
        await client.aclose()


async def _newer(store: Any, clock: Clock, *, ttl: float = 900) -> Approval:
    newer, created = await store.create_or_join(draft(clock, ttl=ttl), link_s=WINDOW_S)
    assert created  # the claim freed the call's binding: an identical call is held anew
    return newer


Setup = Callable[[StoreKit, Any, Clock], Awaitable[None]]


async def _nothing(kit: StoreKit, store: Any, clock: Clock) -> None:
    pass


async def _newer_expired(kit: StoreKit, store: Any, clock: Clock) -> None:
    await _newer(store, clock, ttl=1)
    clock.advance(2)  # due, not yet swept: an identical call would not join it


async def _newer_expired_and_swept(kit: StoreKit, store: Any, clock: Clock) -> None:
    newer = await _newer(store, clock, ttl=1)
    clock.advance(2)
    assert (await store.get(newer.id)).state == "expired"


async def _newer_cancelled(kit: StoreKit, store: Any, clock: Clock) -> None:
    await store.cancel((await _newer(store, clock)).id)


async def _newer_pruned(kit: StoreKit, store: Any, clock: Clock) -> None:
    newer = await _newer(store, clock, ttl=1)
    clock.advance(2)
    await store.expire_due()
    await _prune(kit, store, newer.id)


@pytest.mark.parametrize("setup", [_nothing, _newer_expired, _newer_expired_and_swept, _newer_cancelled,
                                   _newer_pruned], ids=lambda f: f.__name__.strip("_"))
async def test_handed_back_when_no_live_item_binds_the_call(kit: StoreKit, clock: Clock, setup: Setup) -> None:
    store, item = await _claimed(kit, clock)
    await setup(kit, store, clock)
    assert await store.hand_back(item.id, WHY)
    back = await store.get(item.id)
    assert back.claimable and back.not_executed is None
    joined, created = await store.create_or_join(draft(clock), link_s=WINDOW_S)
    assert not created and joined.id == item.id  # the identical retry finds it
    assert await store.claim_execution(item.id)


async def _newer_pending(kit: StoreKit, store: Any, clock: Clock) -> None:
    await _newer(store, clock)


async def _newer_denied(kit: StoreKit, store: Any, clock: Clock) -> None:
    await store.decide((await _newer(store, clock)).id, "bob", "denied", "no")


async def _newer_approved(kit: StoreKit, store: Any, clock: Clock) -> None:
    await store.decide((await _newer(store, clock)).id, "bob", "approved", None)


async def _window_over(kit: StoreKit, store: Any, clock: Clock) -> None:
    clock.advance(WINDOW_S + 1)


@pytest.mark.parametrize("setup", [_newer_pending, _newer_denied, _newer_approved, _window_over],
                         ids=lambda f: f.__name__.strip("_"))
async def test_used_up_when_a_live_item_binds_the_call_or_the_window_is_over(kit: StoreKit, clock: Clock,
                                                                             setup: Setup) -> None:
    store, item = await _claimed(kit, clock)
    await setup(kit, store, clock)
    assert not await store.hand_back(item.id, WHY)
    used = await store.get(item.id)
    assert not used.claimable and used.not_executed == WHY
    assert not await store.claim_execution(item.id)


async def test_not_handed_back_when_its_claim_took_no_binding(kit: StoreKit, clock: Clock) -> None:
    """The call's binding was dropped before the claim (forget): this claim bound no call, so nothing is given
    back to one; the approval is used up."""
    store = await kit.make()
    item, _ = await store.create_or_join(draft(clock), link_s=WINDOW_S)
    await store.decide(item.id, "alice", "approved", None)
    await store.forget(item.id)
    assert await store.claim_execution(item.id)
    assert not await store.hand_back(item.id, WHY)
    assert (await store.get(item.id)).not_executed == WHY


async def test_nothing_to_hand_back_twice_or_when_not_claimed(kit: StoreKit, clock: Clock) -> None:
    store, item = await _claimed(kit, clock)
    assert await store.hand_back(item.id, WHY)
    assert not await store.hand_back(item.id, WHY)  # no longer claimed: nothing happens
    back = await store.get(item.id)
    assert back.claimable and back.not_executed is None
    pending, _ = await store.create_or_join(draft(clock, {"other": 1}), link_s=WINDOW_S)
    assert not await store.hand_back(pending.id, WHY)
    assert (await store.get(pending.id)).pending
