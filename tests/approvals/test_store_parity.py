"""The memory and the Redis store behave the same: one seeded random sequence of operations applied to both, on one
clock, must give the same answers, the same items and the same decision-log records at every step.

(Three differences it found: an approver's decision on an item past its expiry expired it without a record, a
withdrawal or cancel of one marked it cancelled, and settling a never-claimed call recorded `executed`: all Redis.)
"""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

import pytest

from gateway.approvals.memory import MemoryApprovalStore
from gateway.approvals.model import AlreadyDecided, Approval, ApprovalNotFound, new_id
from gateway.approvals.redis import RedisApprovalStore
from tests.approvals.conftest import Clock, draft

OPS = ("create", "create", "decide", "decide", "cancel", "withdraw", "claim", "settle", "forget", "get", "tick",
       "expire", "list", "hold", "unhold")


def _shape(value: Any) -> Any:
    """What to compare: an item's wire JSON (without vote times), lists of ids, booleans, refusals."""
    if isinstance(value, Approval):
        data = value.to_json()
        for vote in data["votes"]:
            vote.pop("at")
        return data
    if isinstance(value, tuple):
        return tuple(_shape(v) for v in value)
    if isinstance(value, list):
        return sorted(v.id if isinstance(v, Approval) else v for v in value)
    return value


def _record(event: dict[str, Any]) -> str:
    return repr(tuple(event.get(k) for k in ("transition", "approval_id", "state", "actor", "comment", "decided_by",
                                              "detail")))


class Plan:
    """The random choices of one step, made once and applied to both stores."""

    def __init__(self, rnd: random.Random, clock: Clock, made: list[str], holds: int) -> None:
        self.op = rnd.choice(OPS)
        self.target = rnd.choice(made) if made else None
        self.who = rnd.choice(["alice", "bob", "carol"])
        self.outcome = rnd.choice(["approved", "approved", "denied"])
        self.why = rnd.choice([None, "cancelled"])
        self.states = rnd.choice([None, ["pending"], ["approved", "denied"], ["expired", "cancelled"]])
        self.limit = rnd.choice([1, 2, 100])
        self.unhold = rnd.randrange(holds) if holds else None
        self.tick = rnd.choice([1, 20, 150])
        clock.advance(0.001)  # items are made at distinct moments, as on a real clock
        self.draft = replace(draft(clock, rnd.choice([{"a": 1}, {"a": 2}]), ttl=rnd.choice([10, 100]),
                                   quorum=rnd.choice([1, 1, 2])), id=new_id())


async def _apply(store: Any, plan: Plan, holds: list[Any]) -> Any:
    op, target = plan.op, plan.target
    if op == "create":
        return await store.create_or_join(plan.draft, link_s=2 * (plan.draft.expires_at - plan.draft.created_at))
    if op in ("expire", "list", "unhold", "tick"):
        if op == "expire":
            return await store.expire_due()
        if op == "list":
            return tuple(i.id for i in await store.list(plan.states, plan.limit))  # in order: newest first
        if op == "unhold" and plan.unhold is not None:
            await holds.pop(plan.unhold).__aexit__(None, None, None)
        return None
    if target is None:
        return None
    if op == "hold":
        holds.append(store.hold(target))
        return await holds[-1].__aenter__()
    calls = {"decide": lambda: store.decide(target, plan.who, plan.outcome, f"by {plan.who}"),
             "cancel": lambda: store.cancel(target, actor="agent-1"),
             "withdraw": lambda: store.withdraw(target, actor="agent-1"),
             "claim": lambda: store.claim_execution(target), "settle": lambda: store.settle(target, plan.why),
             "forget": lambda: store.forget(target), "get": lambda: store.get(target)}
    return await calls[op]()


@pytest.mark.parametrize("seed", range(12))
async def test_both_stores_answer_every_step_alike(seed: int, redis_factory: Any) -> None:
    rnd, clock = random.Random(seed), Clock()
    memory_log: list[dict[str, Any]] = []
    redis_log: list[dict[str, Any]] = []
    memory = MemoryApprovalStore(clock=clock, on_event=memory_log.append)  # not started: no sweeps of its own
    redis = RedisApprovalStore.from_url(redis_factory().url, "p:", clock=clock, heartbeat_s=3600,
                                        on_event=redis_log.append)
    await redis.start()  # one housekeeping pass now, then none during the test
    made: list[str] = []
    holds: dict[Any, list[Any]] = {memory: [], redis: []}
    try:
        for step in range(80):
            plan = Plan(rnd, clock, made, len(holds[memory]))
            answers = []
            for store in (memory, redis):
                try:
                    answers.append(_shape(await _apply(store, plan, holds[store])))
                except (AlreadyDecided, ApprovalNotFound) as exc:
                    answers.append((type(exc).__name__, getattr(exc, "reason", None),
                                    _shape(getattr(exc, "approval", None))))
            if plan.op == "tick":
                clock.advance(plan.tick)
            if plan.op == "create" and answers[0][1]:
                made.append(plan.draft.id)
            assert answers[0] == answers[1], (seed, step, plan.op)
            assert sorted(map(_record, memory_log)) == sorted(map(_record, redis_log)), (seed, step, plan.op)
    finally:
        await redis.close()
