"""An approval item keeps the held call's trace and span ids, and every record of its changes carries them,
on both stores and across replicas; items of replicas that stored none (or fields this one does not know) read fine."""

from __future__ import annotations

import json
from dataclasses import fields

import redis.asyncio as aioredis

from gateway.approvals.model import Approval
from gateway.approvals.stage import ApproveStage
from gateway.config.model import ApprovalsConfig
from tests.approvals.conftest import Clock, StoreKit, call_context, draft

TRACE, SPAN = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"


async def test_every_change_of_a_held_call_carries_its_trace(kit: StoreKit, clock: Clock) -> None:
    a, b = await kit.make(), await kit.make()
    stage = ApproveStage(a, ApprovalsConfig(), clock=clock, current_ids=lambda: (TRACE, SPAN))
    approved, _ = await a.create_or_join(stage.draft(call_context({"n": 1})), link_s=1800)
    denied, _ = await a.create_or_join(stage.draft(call_context({"n": 2})), link_s=1800)
    due, _ = await a.create_or_join(stage.draft(call_context({"n": 3})), link_s=1800)
    gone, _ = await a.create_or_join(stage.draft(call_context({"n": 4})), link_s=1800)
    read = await b.get(approved.id)  # another replica reads what this one stored
    assert (read.trace_id, read.span_id) == (TRACE, SPAN)
    await b.decide(approved.id, "alice", "approved", None)
    assert await b.claim_execution(approved.id)
    await b.settle(approved.id, None)
    await b.decide(denied.id, "alice", "denied", "no")
    await b.cancel(gone.id, "abandoned")
    clock.advance(1000)
    await b.expire_due()
    transitions = {(e["approval_id"], e["transition"]) for e in kit.events}
    assert transitions >= {(approved.id, "approved"), (approved.id, "executed"), (denied.id, "denied"),
                           (due.id, "expired"), (gone.id, "abandoned")}, transitions
    for event in kit.events:
        assert (event["trace_id"], event["span_id"]) == (TRACE, SPAN), event


async def test_an_untraced_call_stores_and_records_no_trace(kit: StoreKit, clock: Clock) -> None:
    store = await kit.make()
    stage = ApproveStage(store, ApprovalsConfig(), clock=clock, current_ids=lambda: (None, None))
    item, _ = await store.create_or_join(stage.draft(call_context()), link_s=1800)
    assert item.extra == {} and item.trace_id is None
    await store.decide(item.id, "alice", "approved", None)
    assert kit.events and not [e for e in kit.events if "trace_id" in e or "span_id" in e]


async def test_trace_ids_need_no_field_an_older_replica_lacks(redis_factory, clock: Clock) -> None:  # type: ignore[no-untyped-def]
    """The ids ride in `extra`, which every version stores and reads (some rebuild an item from every stored
    field): the stored record has no field beyond Approval's; an older replica's record without them reads fine."""
    from gateway.approvals.redis import RedisApprovalStore

    server = redis_factory()
    store = RedisApprovalStore.from_url(server.url, "t:", clock=clock)
    client = aioredis.from_url(server.url)
    try:
        stage = ApproveStage(store, ApprovalsConfig(), clock=clock, current_ids=lambda: (TRACE, SPAN))
        traced, _ = await store.create_or_join(stage.draft(call_context({"n": 1})), link_s=1800)
        record = json.loads(await client.hget(f"t:approvals:item:{traced.id}", "rec"))
        assert set(record) <= {f.name for f in fields(Approval)} and "trace_id" not in record
        assert record["extra"] == {"trace_id": TRACE, "span_id": SPAN}
        plain, _ = await store.create_or_join(draft(clock, {"n": 2}), link_s=1800)
        other = plain.to_record()
        del other["extra"]  # the record as another version might have written it: no `extra`, a field unknown here
        other["from_a_newer_replica"] = 1
        await client.hset(f"t:approvals:item:{plain.id}", "rec", json.dumps(other))
        read = await store.get(plain.id)
        assert (read.id, read.trace_id, read.span_id) == (plain.id, None, None)
    finally:
        await client.aclose()
        await store.close()
