"""Decision-log approval records name the held request's `method` (tools/call, prompts/get, resources/read),
which the approval is bound to: on both stores, every transition's record says which kind of request it was
(they used to carry upstream and tool only, so an approved prompt read like an approved tool call)."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.approvals.stage import ApproveStage
from gateway.config.model import ApprovalsConfig
from gateway.errors import GatewayError
from tests.approvals.conftest import StoreKit, call_context


@pytest.mark.parametrize("method", ["tools/call", "prompts/get", "resources/read"])
async def test_every_approval_record_carries_the_method(kit: StoreKit, method: str) -> None:
    store = await kit.make()
    stage = ApproveStage(store, ApprovalsConfig())
    ctx = call_context()
    ctx.method = method
    with pytest.raises(GatewayError) as held:
        await stage(ctx)
    approval_id = held.value.data["approval_id"]
    await store.decide(approval_id, "alice", "approved", "ok")
    retry = call_context()
    retry.method = method
    await stage(retry)  # the approved request runs once: claimed
    records: list[dict[str, Any]] = [e for e in kit.events if e.get("approval_id") == approval_id]
    assert {e["transition"] for e in records} >= {"created", "approved"}, records
    assert all(e["method"] == method for e in records), records
