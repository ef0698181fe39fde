"""An approved call claimed for forwarding that never reached the upstream is not recorded as executed.

The approval is used up (claimed) before the re-check under the policies in force, the credential and the
forward; if one of those refuses, nothing ran. The item used to say `executed: true` anyway and the decision log
had an `executed` record. Now `executed` is false with `not_executed` saying why, the log records
`not_executed`, and the approval stays used (at most one execution: a retry asks anew), except for a call refused
on the agent's expired token (test_token_expired_hand_back.py)."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.approvals.stage import ApproveStage
from gateway.config.model import ApprovalsConfig
from gateway.context import CallContext, Decision
from gateway.errors import GatewayError
from gateway.pipeline import Pipeline
from gateway.transport.common import Unsent
from tests.approvals.conftest import StoreKit, call_context


class Calls:
    """The pipeline's other stages: the re-check may deny, the credential may fail, the forward is counted."""

    def __init__(self, *, recheck: str = "allow", credential: str | None = None,
                 credential_data: dict[str, Any] | None = None) -> None:
        self.recheck, self.credential_error, self.forwarded = recheck, credential, 0
        self.credential_data = credential_data

    async def authorize(self, ctx: CallContext) -> None:
        if ctx.approval is None:
            ctx.decision = Decision("approval_required", ("pay-needs-approval",), policy_version="v1")
            return
        ctx.decision = Decision(self.recheck, (), policy_version="v2")  # type: ignore[arg-type]
        if self.recheck == "deny":
            raise GatewayError("unknown_tool")

    async def credential(self, ctx: CallContext) -> None:
        if self.credential_error:
            raise GatewayError(self.credential_error, data=self.credential_data)

    async def forward(self, ctx: CallContext) -> dict[str, Any]:
        ctx.extra["forwarded"] = True
        self.forwarded += 1
        return {"content": []}

    async def record(self, ctx: CallContext) -> None:
        return None


async def _run(kit: StoreKit, calls: Calls) -> tuple[Any, BaseException | None]:
    store = await kit.make()
    stage = ApproveStage(store, ApprovalsConfig(wait_s=0))  # a client that cannot wait: pending, then retry
    pipeline = Pipeline(authorize=calls.authorize, approve=stage, credential=calls.credential,
                        forward=calls.forward, record=calls.record)
    with pytest.raises(GatewayError) as pending:
        await pipeline.run(call_context())
    approval_id = pending.value.data["approval_id"]
    await store.decide(approval_id, "alice", "approved", "ok")
    error = None
    try:
        await pipeline.run(call_context())  # the retry, now approved
    except GatewayError as exc:
        error = exc
    return await store.get(approval_id), error


def _transitions(kit: StoreKit, approval_id: str) -> list[tuple[str, Any]]:
    return [(e["transition"], e.get("detail")) for e in kit.events if e["approval_id"] == approval_id]


@pytest.mark.parametrize(("recheck", "credential", "why"), [
    ("deny", None, "denied_on_recheck"), ("allow", "credential_unavailable", "credential_unavailable")])
async def test_a_claimed_call_that_never_ran_is_not_recorded_as_executed(
        kit: StoreKit, recheck: str, credential: str | None, why: str) -> None:
    calls = Calls(recheck=recheck, credential=credential)
    item, error = await _run(kit, calls)
    assert error is not None and calls.forwarded == 0
    assert item.to_json()["executed"] is False and item.to_json()["not_executed"] == why
    assert item.state == "approved" and not item.claimable  # still used up: one approval, at most one run
    transitions = _transitions(kit, item.id)
    assert ("executed", None) not in transitions and transitions[-1] == ("not_executed", why), transitions
    with pytest.raises(GatewayError) as again:  # an identical retry asks anew, it does not run on the old approval
        await Pipeline(authorize=calls.authorize, approve=ApproveStage(await kit.make(), ApprovalsConfig(wait_s=0)),
                       credential=calls.credential, forward=calls.forward, record=calls.record).run(call_context())
    assert again.value.reason == "approval_pending" and again.value.data["approval_id"] != item.id
    assert calls.forwarded == 0


async def test_a_forwarded_call_is_recorded_as_executed(kit: StoreKit) -> None:
    calls = Calls()
    item, error = await _run(kit, calls)
    assert error is None and calls.forwarded == 1
    assert item.to_json()["executed"] is True and item.to_json()["not_executed"] is None
    assert _transitions(kit, item.id)[-1] == ("executed", None)



@pytest.mark.parametrize(("failure", "outcome"), [
    (Unsent("Upstream unavailable (circuit open)",
            data={"circuit": "open", "upstream": "payments"}), "handed_back"),
    (Unsent("upstream session expired",  # the upstream's 404 for the call's POST: it ran nothing
            data={"upstream": "payments", "session": "expired"}), "handed_back"),
    (GatewayError("upstream_unavailable", data={"upstream": "payments"}), "executed"),  # broken connection: may run
    (GatewayError("upstream_timeout", data={"upstream": "payments"}), "executed")])
async def test_only_a_forward_that_never_left_the_gateway_hands_its_approval_back(
        kit: StoreKit, failure: GatewayError, outcome: str) -> None:
    """An upstream behind an open circuit was never sent the call: the approval is handed back for the agent's
    retry (it used to read `executed`, and be used up). One that may have run keeps `executed`, used up."""
    class Failing(Calls):
        async def forward(self, ctx: CallContext) -> dict[str, Any]:
            ctx.extra["forwarded"] = True
            self.forwarded += 1
            raise failure

    item, error = await _run(kit, Failing())
    assert error is failure
    assert (item.to_json()["executed"], item.to_json()["not_executed"]) == (outcome == "executed", None)
    assert item.claimable is (outcome == "handed_back")
    detail = "upstream_unavailable" if outcome == "handed_back" else None
    assert _transitions(kit, item.id)[-1] == (outcome, detail)
