"""A listing with a state filter looks through the newest 1,000 items (docs/approvals.md), on either store: the
memory store used to look through all of them and the Redis store through 20 times the limit (2,000 by default), so
the same `GET /api/approvals?state=denied` answered differently by store. `state=pending` alone looks through
every pending call, so a call still waiting is never hidden behind newer decided ones."""

from __future__ import annotations

from typing import Any

from gateway.approvals.store import LIST_WINDOW
from tests.approvals.conftest import Clock, draft


async def _make(store: Any, clock: Clock, n: int, tag: str) -> list[str]:
    ids = []
    for i in range(n):
        clock.advance(0.001)  # distinct creation moments, as on a real clock
        item = draft(clock, {"n": f"{tag}-{i}"})
        made = await store.create_or_join(item, link_s=1800)
        ids.append(made[0].id)
    return ids


async def test_a_state_filter_looks_through_the_newest_window_on_both_stores(store: Any, clock: Clock) -> None:
    assert LIST_WINDOW == 1000
    (old_denied,) = await _make(store, clock, 1, "old")
    await store.decide(old_denied, "alice", "denied", "no")
    (old_pending,) = await _make(store, clock, 1, "waiting")
    (edge_denied,) = await _make(store, clock, 1, "edge")
    await store.decide(edge_denied, "alice", "denied", "no")
    newer = await _make(store, clock, LIST_WINDOW - 1, "new")
    for approval_id in newer:
        await store.decide(approval_id, "bob", "approved", None)
    # The newest 1,000: the 999 newer approved ones and edge_denied; old_pending and old_denied are behind them.
    assert [i.id for i in await store.list(["denied"], 100)] == [edge_denied]
    assert [i.id for i in await store.list(["denied", "approved"], 1000)][-1] == edge_denied
    assert [i.id for i in await store.list(["pending"], 100)] == [old_pending]  # pending: never out of reach
    assert len(await store.list(None, 1000)) == 1000
