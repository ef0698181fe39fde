"""The page's history is the latest decisions, also of a call held long before the calls decided since.

It was read from the newest 200 calls by creation and then sorted by decision: a call held before 200 newer ones
that were all decided meanwhile (withdrawn by agents that went away, expired, denied), then decided itself, was
missing from the history of "the 50 latest decided calls", and the page's `Recorded: apr_…` pointed at no row."""

from __future__ import annotations

import re

import pytest
import redis.asyncio as aioredis

from tests.approvals.conftest import Clock, StoreKit, WebKit, draft  # the store's clock: decisions are timed by it

NEWER = 4 * 50 + 5  # past what the history looked through


async def test_a_long_held_call_decided_last_heads_the_history(web_kit: WebKit, clock: Clock) -> None:
    store = web_kit.store
    old, _ = await store.create_or_join(draft(clock, {"n": "old"}), link_s=1800)
    for n in range(NEWER):
        clock.advance(0.001)
        item, _ = await store.create_or_join(draft(clock, {"n": n}), link_s=1800)
        await store.cancel(item.id, "cancelled", "agent")
    clock.advance(1)
    decided = await store.decide(old.id, "bob", "approved", "at last")
    assert decided.state == "approved"
    async with web_kit.http.get(f"{web_kit.url}/approvals/fragment", headers=web_kit.bearer("alice")) as resp:
        assert resp.status == 200
        html = await resp.text()
    rows = re.findall(r'<tr id="(apr_[0-9a-f]+)">', html)
    assert len(rows) == 50
    assert rows[0] == old.id, "the latest decision is not at the head of the history"


@pytest.mark.parametrize("kit", ["redis"], indirect=True)
async def test_the_decided_index_and_its_fallback_for_older_replicas(kit: StoreKit, clock: Clock) -> None:
    """Every terminal change enters `<prefix>approvals:decided` (score decided_at); an item decided by a replica
    from before it (not in that index) is still in the history, found by creation as before; housekeeping drops
    entries decided longer ago than items are kept."""
    assert kit.redis is not None
    store = await kit.make()
    first, _ = await store.create_or_join(draft(clock, {"n": 1}), link_s=1800)
    clock.advance(0.01)
    second, _ = await store.create_or_join(draft(clock, {"n": 2}), link_s=1800)
    clock.advance(0.01)
    await store.decide(second.id, "bob", "denied", None)
    clock.advance(0.01)
    await store.decide(first.id, "bob", "approved", None)
    client = aioredis.from_url(kit.redis.url)
    try:
        assert [m.decode() for m in await client.zrevrange("t:approvals:decided", 0, -1)] == [first.id, second.id]
        await client.zrem("t:approvals:decided", second.id)  # as decided by an older replica
        assert [i.id for i in await store.decided(10)] == [first.id, second.id]
        clock.advance(8 * 86400)  # past keep_s (7 days) after both decisions
        await store.prune_history()
        assert await client.zcard("t:approvals:decided") == 0
    finally:
        await client.aclose()
