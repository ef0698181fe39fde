"""A held call is decided again when released: a policy change while it waited wins over the approval.

The approval records the policy version it was requested under; after a person approves, the
pipeline authorizes the call again under the policies in force now. If those deny it outright,
the approved call never reaches the upstream and the agent gets the ordinary denial.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from tests.lifecycle.conftest import Upstreams, eventually, executed_inventory, gateway_config, reason_of, token
from tests.support.mcp_client import sdk_client
from tests.support.tokens import TestIssuer

FREEZE = '''
@id("freeze-stock")
forbid (principal, action == Action::"call_tool", resource == Tool::"inventory/set_stock");
'''


async def freeze(gw: Any, policies: Path) -> str:
    """Change the enforced policies (a new forbid) and load them; returns the new version."""
    engine = gw.gateway.parts.engine
    before = engine.version
    (policies / "freeze.cedar").write_text(FREEZE)
    assert await engine.reload() is True
    assert engine.version != before
    return str(engine.version)


async def test_retried_call_approved_after_a_policy_change_does_not_run(start_gateway: Any, upstreams: Upstreams,
                                                                      issuer: TestIssuer, policies: Path) -> None:
    gw = await start_gateway(gateway_config(upstreams, issuer, policies))  # approvals.wait_s: 0
    approvals = gw.gateway.parts.approvals
    before = await executed_inventory(upstreams)
    async with sdk_client(gw.mcp, token(issuer, gw)) as client:
        # Control: held, approved, retried → runs once (same policies).
        control = {"sku": "widget", "quantity": 41}
        reason, data = await reason_of(client.call_tool("inventory__set_stock", control))
        assert reason == "approval_pending"
        await approvals.decide(data["approval_id"], "alice", "approved", "ok")
        assert not (await client.call_tool("inventory__set_stock", control)).is_error
        # Held under the old policies, the set changes to deny it, then a person approves it anyway.
        args = {"sku": "gadget", "quantity": 99}
        reason, data = await reason_of(client.call_tool("inventory__set_stock", args))
        assert reason == "approval_pending"
        item = await approvals.get(data["approval_id"])
        old_version = gw.gateway.parts.engine.version
        assert item.policy_version == old_version
        assert await freeze(gw, policies) != item.policy_version
        await approvals.decide(item.id, "alice", "approved", "ok")
        reason, data = await reason_of(client.call_tool("inventory__set_stock", args))
        assert reason == "unknown_tool" and "approval_id" not in data
    assert await executed_inventory(upstreams) == [*before, "set_stock:widget:41"]


async def test_waiting_call_approved_after_a_policy_change_does_not_run(start_gateway: Any, upstreams: Upstreams,
                                                                      issuer: TestIssuer, policies: Path,
                                                                      tmp_path: Path) -> None:
    log_path = tmp_path / "decisions.jsonl"
    gw = await start_gateway(gateway_config(upstreams, issuer, policies, decision_log={"path": str(log_path)},
                                            approvals={"wait_s": 60, "keepalive_s": 1}))
    approvals = gw.gateway.parts.approvals
    before = await executed_inventory(upstreams)
    async with sdk_client(gw.mcp, token(issuer, gw)) as client:
        waiting = asyncio.create_task(reason_of(client.call_tool("inventory__set_stock", {"sku": "gizmo",
                                                                                          "quantity": 5})))

        async def held() -> bool:
            return bool(await approvals.list(["pending"]))

        await eventually(held)
        [item] = await approvals.list(["pending"])
        new_version = await freeze(gw, policies)
        await approvals.decide(item.id, "alice", "approved", "looks fine")
        reason, _ = await asyncio.wait_for(waiting, 30)
    assert reason == "unknown_tool"
    assert await executed_inventory(upstreams) == before
    await gw.gateway.parts.observability.log.close()

    records = [json.loads(line) for line in log_path.read_text().splitlines()]
    [record] = [r for r in records if r.get("type") == "decision" and r.get("tool") == "set_stock"]
    assert record["decision"] == "deny" and record["reason"] == "unknown_tool"
    assert record["policy_ids"] == ["freeze-stock"] and record["policy_version"] == new_version
    assert record["approval"]["id"] == item.id and record["approval"]["outcome"] == "approved"
