"""Stateful context through real gateways: a task may pay at most 10,000 in total without approval.

`context.task.totals.amount` is the task's running sum of `pay` amounts (this call included);
the shipped policy `task-payments-under-limit` permits payments while it stays <= 10,000. Calls
that are denied or held do not count. With a shared Redis the cap holds across replicas, also
for payments racing on two replicas at once.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from tests.lifecycle.conftest import Upstreams, eventually, executed_payments, gateway_config, reason_of, token
from tests.support.mcp_client import sdk_client
from tests.support.redis import RedisServer
from tests.support.tokens import TestIssuer

TASK = {"customs/task": "order-42"}


def pay(amount: int, **extra: Any) -> dict[str, Any]:
    return {"account": "acme-1", "amount": amount, **extra}


async def test_payments_in_one_session_task_pass_until_the_total_exceeds_the_cap(
        start_gateway: Any, upstreams: Upstreams, issuer: TestIssuer, policies: Path, tmp_path: Path) -> None:
    log_path = tmp_path / "decisions.jsonl"
    gw = await start_gateway(gateway_config(upstreams, issuer, policies, decision_log={"path": str(log_path)}))
    async with sdk_client(gw.mcp, token(issuer, gw)) as client:
        assert not (await client.call_tool("payments__pay", pay(4000))).is_error  # total 4,000
        # Denied outright (escape keys make the arguments "truncated": writes with them are forbidden).
        reason, _ = await reason_of(client.call_tool("payments__pay", pay(5000, __expr="x")))
        assert reason == "unknown_tool"
        # Would make 11,000: held for a person, answered at once (approvals.wait_s: 0).
        reason, data = await reason_of(client.call_tool("payments__pay", pay(7000)))
        assert reason == "approval_pending" and data["approval_id"]
        # 4,000 + 6,000 = 10,000: passes, so neither the denied 5,000 nor the held 7,000 counted.
        assert not (await client.call_tool("payments__pay", pay(6000))).is_error
        reason, _ = await reason_of(client.call_tool("payments__pay", pay(1)))
        assert reason == "approval_pending"
    assert [p["amount"] for p in await executed_payments(upstreams)] == [4000, 6000]
    await gw.gateway.parts.observability.log.close()
    records = [json.loads(line) for line in log_path.read_text().splitlines()]
    pays = [r for r in records if r.get("type") == "decision" and r.get("tool") == "pay"]
    assert [(r["decision"], r["authz_input"]["task"]["totals"]["amount"]) for r in pays] == [
        ("allow", 4000), ("deny", 9000), ("approval_required", 11000), ("allow", 10000),
        ("approval_required", 10001)]
    allowed = [r for r in pays if r["decision"] == "allow"]
    assert all(r["policy_ids"] == ["task-payments-under-limit"] for r in allowed)
    assert len({r["task_id"] for r in pays}) == 1  # one session, one task


async def test_each_session_is_its_own_task(start_gateway: Any, upstreams: Upstreams, issuer: TestIssuer,
                                            policies: Path) -> None:
    gw = await start_gateway(gateway_config(upstreams, issuer, policies))
    agent = token(issuer, gw)
    async with sdk_client(gw.mcp, agent) as first:
        assert not (await first.call_tool("payments__pay", pay(9000))).is_error
        async with sdk_client(gw.mcp, agent) as second:
            assert not (await second.call_tool("payments__pay", pay(9000))).is_error
        reason, _ = await reason_of(first.call_tool("payments__pay", pay(2000)))
        assert reason == "approval_pending"
    assert [p["amount"] for p in await executed_payments(upstreams)] == [9000, 9000]


async def two_replicas(start_gateway: Any, upstreams: Upstreams, issuer: TestIssuer, policies: Path,
                       redis: RedisServer) -> tuple[Any, Any]:
    store = {"redis": {"url": redis.url, "key_prefix": "life:"}}
    a = await start_gateway(gateway_config(upstreams, issuer, policies, store=store))
    b = await start_gateway(gateway_config(upstreams, issuer, policies, store=store))
    return a, b


async def test_explicit_task_cap_holds_across_two_replicas(start_gateway: Any, upstreams: Upstreams,
                                                           issuer: TestIssuer, policies: Path,
                                                           redis_server: RedisServer) -> None:
    a, b = await two_replicas(start_gateway, upstreams, issuer, policies, redis_server)
    agent = token(issuer, a, aud=[a.mcp, b.mcp])
    async with sdk_client(a.mcp, agent) as on_a, sdk_client(b.mcp, agent) as on_b:
        assert not (await on_a.call_tool("payments__pay", pay(6000), meta=TASK)).is_error
        reason, _ = await reason_of(on_b.call_tool("payments__pay", pay(5000), meta=TASK))
        assert reason == "approval_pending"  # 11,000 across replicas
        assert not (await on_b.call_tool("payments__pay", pay(4000), meta=TASK)).is_error
        reason, _ = await reason_of(on_a.call_tool("payments__pay", pay(1), meta=TASK))
        assert reason == "approval_pending"
        # Another task of the same agent starts from zero.
        assert not (await on_b.call_tool("payments__pay", pay(5000), meta={"customs/task": "order-43"})).is_error
    # The same task name used by another agent is that agent's own task.
    other = token(issuer, a, "spiffe://customs.demo/agent/other", aud=[a.mcp, b.mcp])
    async with sdk_client(b.mcp, other) as client:
        assert not (await client.call_tool("payments__pay", pay(5000), meta=TASK)).is_error
    assert [p["amount"] for p in await executed_payments(upstreams)] == [6000, 4000, 5000, 5000]


async def test_racing_payments_on_two_replicas_never_exceed_the_cap(start_gateway: Any, upstreams: Upstreams,
                                                                    issuer: TestIssuer, policies: Path,
                                                                    redis_server: RedisServer) -> None:
    a, b = await two_replicas(start_gateway, upstreams, issuer, policies, redis_server)
    agent = token(issuer, a, aud=[a.mcp, b.mcp])
    race = {"customs/task": "race"}
    async with sdk_client(a.mcp, agent) as on_a, sdk_client(b.mcp, agent) as on_b:
        async def one(client: Any, n: int) -> str:
            try:
                result = await client.call_tool("payments__pay", pay(1000, memo=str(n)), meta=race)
            except Exception as exc:
                return str(getattr(exc, "data", {}).get("reason"))
            return "error" if result.is_error else "paid"

        outcomes = await asyncio.gather(*(one(on_a if n % 2 else on_b, n) for n in range(24)))
    executed = await executed_payments(upstreams)
    assert sum(p["amount"] for p in executed) <= 10000
    # Forwarded calls keep their reservation, so exactly the first ten reservations were paid.
    assert outcomes.count("paid") == len(executed) == 10
    assert outcomes.count("approval_pending") == 14


async def test_an_explicit_task_that_went_idle_keeps_its_total(start_gateway: Any, upstreams: Upstreams,
                                                               issuer: TestIssuer, policies: Path) -> None:
    """With the memory store an explicit task's facts went when the task ended (idle for tasks.idle_s, or a
    task_end), although the agent goes on naming the same task: a payment held for a person longer than
    idle_s, or any pause, started the task's total again from zero (Redis keeps it 24 h). They now stay as
    long as Redis keeps them, in both stores; a session's or idle window's task (never named again) still
    takes its facts with it."""
    gw = await start_gateway(gateway_config(upstreams, issuer, policies, tasks={"idle_s": 0.3}))
    tracker = gw.gateway.parts.credentials.tasks
    async with sdk_client(gw.mcp, token(issuer, gw)) as client:
        assert not (await client.call_tool("payments__pay", pay(6000), meta=TASK)).is_error
        [task_id] = [t for t in tracker._tasks if t.startswith("order-42@")]

        async def ended() -> bool:
            return tracker.task(task_id) is None

        await eventually(ended)  # the sweeper ended it: idle for longer than idle_s
        reason, _ = await reason_of(client.call_tool("payments__pay", pay(6000), meta=TASK))
        assert reason == "approval_pending"  # 12,000 in this task
    assert [p["amount"] for p in await executed_payments(upstreams)] == [6000]


async def test_memory_facts_keep_an_explicit_task_until_its_ttl_and_forget_the_others() -> None:
    from gateway.taskstate import MemoryFacts

    now = [1000.0]
    facts = MemoryFacts(ttl_s=100.0, clock=lambda: now[0])
    for task in ("order-42@abc", "s-123", "i-456"):
        await facts.reserve(task, "payments/pay", {"amount": 5.0})
        facts.forget(task)  # the tracker ended each
    assert list(facts.tasks) == ["order-42@abc"]
    assert (await facts.reserve("order-42@abc", "payments/pay", {"amount": 1.0}))["totals"] == {"amount": 6.0}
    now[0] += 100.0  # unused for ttl_s: gone at the next reservation, as a Redis key expires
    await facts.reserve("other@abc", "payments/pay", {})
    assert list(facts.tasks) == ["other@abc"]
