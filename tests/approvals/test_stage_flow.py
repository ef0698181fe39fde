"""The approve stage on both stores: held requests, retries of non-waiting clients, every error path."""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Any

import pytest

from gateway.approvals.stage import ApproveStage
from gateway.config.model import ApprovalsConfig
from gateway.errors import GatewayError
from tests.approvals.conftest import Clock, Sink, StoreKit, call_context, eventually


async def _pending(store: Any) -> Any:
    async def there() -> bool:
        return bool(await store.list(["pending"]))

    await eventually(there)
    return (await store.list(["pending"]))[0]


async def test_allowed_call_is_untouched(store: Any) -> None:
    ctx = call_context(outcome="allow")
    await ApproveStage(store, ApprovalsConfig())(ctx)
    assert ctx.approval is None and await store.list() == []


async def test_non_waiting_client_retries_until_approved(store: Any) -> None:
    stage = ApproveStage(store, ApprovalsConfig(), page_url="http://gw/approvals")
    with pytest.raises(GatewayError) as first:
        await stage(call_context())
    assert first.value.reason == "approval_pending"
    approval_id = first.value.data["approval_id"]
    assert first.value.data["approval_url"] == f"http://gw/approvals#{approval_id}"
    with pytest.raises(GatewayError) as again:
        await stage(call_context())
    assert again.value.data["approval_id"] == approval_id  # joined, not a second item
    assert len(await store.list()) == 1
    await store.decide(approval_id, "alice", "approved", "go")
    ctx = call_context()
    await stage(ctx)
    assert ctx.approval is not None and ctx.approval.id == approval_id and ctx.approval.outcome == "reused"
    with pytest.raises(GatewayError) as after:
        await stage(call_context())  # one approval, one execution: the next identical call asks again
    assert after.value.reason == "approval_pending" and after.value.data["approval_id"] != approval_id


async def test_another_delegation_chain_is_not_covered(store: Any) -> None:
    """Approvers decided the call with the chain they were shown (and the self-approval rule checked that
    chain's owners): the same agent calling directly, or through another actor, needs its own approval."""
    from gateway.context import Actor, Principal

    stage = ApproveStage(store, ApprovalsConfig())
    base = {"id": "agent-1", "issuer": "https://idp.test", "subject": "agent-1", "attributes": {"tenant": "acme"}}
    via = {name: Principal(**base, chain=chain) for name, chain in (  # type: ignore[arg-type]
        ("orchestrator", (Actor("orchestrator"),)), ("direct", ()), ("other", (Actor("bobs-agent"),)))}
    with pytest.raises(GatewayError) as first:
        await stage(call_context(principal=via["orchestrator"]))
    approval_id = first.value.data["approval_id"]
    await store.decide(approval_id, "alice", "approved", None)
    for name in ("direct", "other"):
        with pytest.raises(GatewayError) as other:
            await stage(call_context(principal=via[name]))
        assert other.value.reason == "approval_pending" and other.value.data["approval_id"] != approval_id, name
    ctx = call_context(principal=via["orchestrator"])
    await stage(ctx)  # the call that was approved still runs, once
    assert ctx.approval is not None and ctx.approval.id == approval_id


async def test_changed_arguments_are_not_covered(store: Any) -> None:
    stage = ApproveStage(store, ApprovalsConfig())
    with pytest.raises(GatewayError) as first:
        await stage(call_context({"amount": 10, "account": "A-1"}))
    await store.decide(first.value.data["approval_id"], "alice", "approved", None)
    with pytest.raises(GatewayError) as other:
        await stage(call_context({"amount": 10000, "account": "A-1"}))
    assert other.value.reason == "approval_pending"
    assert other.value.data["approval_id"] != first.value.data["approval_id"]


async def test_the_digest_is_the_canonical_json_approvals_md_defines(store: Any) -> None:
    # docs/approvals.md: keys sorted, no spaces, UTF-8 text, numbers as sent: key order does not matter,
    # 10 and 10.0 (or a null key and a missing one) are different arguments.
    stage = ApproveStage(store, ApprovalsConfig())
    args = {"note": "caf\u00e9 \u2028", "amount": 10, "nested": {"b": [1, None], "a": 2}}
    with pytest.raises(GatewayError) as first:
        await stage(call_context(args))
    item = await store.get(first.value.data["approval_id"])
    text = json.dumps(args, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert item.args_digest == "sha256:" + hashlib.sha256(text.encode()).hexdigest()
    with pytest.raises(GatewayError) as same:
        await stage(call_context(dict(reversed(list(args.items())))))
    assert same.value.data["approval_id"] == first.value.data["approval_id"]
    for other_args in ({**args, "amount": 10.0}, {**args, "memo": None}):
        with pytest.raises(GatewayError) as other:
            await stage(call_context(other_args))
        assert other.value.data["approval_id"] != first.value.data["approval_id"]


async def test_held_request_gets_progress_then_result(store: Any) -> None:
    sink = Sink()
    ctx = call_context(notify=sink, progress_token="p-1")
    held = asyncio.create_task(ApproveStage(store, ApprovalsConfig(keepalive_s=0.05))(ctx))
    await sink.wait_for(3)
    progress = [m["params"] for m in sink.messages]
    assert all(m["method"] == "notifications/progress" for m in sink.messages)
    assert [p["progress"] for p in progress[:3]] == [0, 1, 2] and progress[0]["progressToken"] == "p-1"
    item = await _pending(store)
    assert item.id in progress[0]["message"]
    await store.decide(item.id, "alice", "approved", "ok")
    await asyncio.wait_for(held, 10)
    assert ctx.approval is not None and ctx.approval.outcome == "approved" and ctx.approval.decided_by == ("alice",)
    assert (await store.get(item.id)).executed


async def test_held_request_without_progress_token_gets_keepalives(store: Any) -> None:
    sink = Sink()
    comments: list[int] = []

    async def keepalive() -> None:
        comments.append(1)

    ctx = call_context(notify=sink)
    ctx.extra["keepalive"] = keepalive
    held = asyncio.create_task(ApproveStage(store, ApprovalsConfig(keepalive_s=0.05))(ctx))
    item = await _pending(store)
    await eventually(_true_when(lambda: len(comments) >= 2))
    await store.decide(item.id, "bob", "denied", "not this account")
    with pytest.raises(GatewayError) as info:
        await asyncio.wait_for(held, 10)
    assert info.value.reason == "approval_denied"
    assert info.value.data == {"approval_id": item.id, "comment": "not this account", "decided_by": "bob"}
    assert sink.messages == []


def _true_when(condition: Any) -> Any:
    async def check() -> bool:
        return bool(condition())
    return check


async def test_log_message_keepalive_when_nothing_else(store: Any) -> None:
    sink = Sink()
    held = asyncio.create_task(ApproveStage(store, ApprovalsConfig(keepalive_s=0.05))(call_context(notify=sink)))
    await sink.wait_for(2)
    assert sink.messages[0]["method"] == "notifications/message"
    held.cancel()
    with pytest.raises(asyncio.CancelledError):
        await held


async def test_expiry_while_held(store: Any, clock: Clock) -> None:
    sink = Sink()
    held = asyncio.create_task(ApproveStage(store, ApprovalsConfig(ttl_s=60, keepalive_s=0.05), clock=clock)(
        call_context(notify=sink)))
    item = await _pending(store)
    clock.advance(61)
    with pytest.raises(GatewayError) as info:
        await asyncio.wait_for(held, 10)
    assert info.value.reason == "approval_expired" and info.value.data["approval_id"] == item.id
    assert (await store.get(item.id)).state == "expired"


async def test_client_cancel_withdraws_the_call(store: Any) -> None:
    ctx = call_context(notify=Sink())
    held = asyncio.create_task(ApproveStage(store, ApprovalsConfig())(ctx))
    item = await _pending(store)
    ctx.cancelled.set()
    with pytest.raises(GatewayError) as info:
        await asyncio.wait_for(held, 10)
    assert info.value.reason == "approval_cancelled"
    assert (await store.get(item.id)).state == "cancelled"


async def test_disconnect_withdraws_the_call(store: Any) -> None:
    held = asyncio.create_task(ApproveStage(store, ApprovalsConfig())(call_context(notify=Sink())))
    item = await _pending(store)
    held.cancel()
    with pytest.raises(asyncio.CancelledError):
        await held
    assert (await store.get(item.id)).state == "cancelled"


async def test_broken_stream_withdraws_the_call(store: Any) -> None:
    async def broken(message: dict[str, Any]) -> None:
        raise ConnectionResetError("client went away")

    with pytest.raises(GatewayError) as info:
        await ApproveStage(store, ApprovalsConfig())(call_context(notify=broken))
    assert info.value.reason == "approval_cancelled"
    assert (await store.get(info.value.data["approval_id"])).state == "cancelled"


async def test_wait_window_ends_with_pending_and_item_stays(store: Any) -> None:
    stage = ApproveStage(store, ApprovalsConfig(wait_s=0.1, keepalive_s=0.05))
    with pytest.raises(GatewayError) as info:
        await stage(call_context(notify=Sink()))
    assert info.value.reason == "approval_pending"
    assert (await store.get(info.value.data["approval_id"])).pending


async def test_redaction_of_stored_arguments(store: Any) -> None:
    stage = ApproveStage(store, ApprovalsConfig(redact_keys=("account",)),
                         redactor=lambda args: {**args, "amount": "[masked]"})
    with pytest.raises(GatewayError):
        await stage(call_context({"amount": 5, "account": "A-9", "nested": [{"ACCOUNT": "x"}]}))
    [item] = await store.list()
    assert item.args == {"amount": "[masked]", "account": "[redacted]", "nested": [{"ACCOUNT": "[redacted]"}]}
    assert item.policies == ("pay-needs-approval",) and item.policy_version == "v1"


async def test_non_waiting_retry_after_expiry_learns_it_then_asks_anew(store: Any, clock: Clock) -> None:
    """A client that cannot wait learns the expiry on its next identical call (`approval_expired`, as it
    learns a denial), not a silent new item; the call after that asks the approvers again."""
    events: list[dict[str, Any]] = []
    store.on_event = events.append
    stage = ApproveStage(store, ApprovalsConfig(ttl_s=60), clock=clock)
    with pytest.raises(GatewayError) as first:
        await stage(call_context())
    approval_id = first.value.data["approval_id"]
    clock.advance(61)
    with pytest.raises(GatewayError) as told:
        await stage(call_context())
    assert told.value.reason == "approval_expired" and told.value.data["approval_id"] == approval_id
    assert (await store.get(approval_id)).state == "expired"
    assert [e["transition"] for e in events if e["approval_id"] == approval_id].count("expired") == 1
    with pytest.raises(GatewayError) as anew:
        await stage(call_context())
    assert anew.value.reason == "approval_pending" and anew.value.data["approval_id"] != approval_id


@pytest.mark.parametrize("outcome", ["denied", "expired"])
async def test_a_late_retry_still_learns_the_denial_or_expiry(store: Any, clock: Clock, outcome: str) -> None:
    """The first retry after a denial (every retry) or an expiry (the first) is told so, however late it comes:
    it used to be so only within 2 x ttl_s of the hold (the binding's link lapsed then), so a retry after an
    expiry the sweep marked a few seconds late, or a retry the next day after a denial, silently asked the
    approvers anew. An approval stays usable for that window only (below)."""
    stage = ApproveStage(store, ApprovalsConfig(ttl_s=0.2), clock=clock)
    with pytest.raises(GatewayError) as first:
        await stage(call_context())
    approval_id = first.value.data["approval_id"]
    if outcome == "denied":
        await store.decide(approval_id, "alice", "denied", "no")
    await asyncio.sleep(0.5)  # not synchronisation: Redis keeps its key TTLs in its own (real) time
    clock.advance(3600)
    await store.expire_due()  # the sweep marks it, then the agent comes back
    for _ in range(2 if outcome == "denied" else 1):
        with pytest.raises(GatewayError) as told:
            await stage(call_context())
        assert told.value.reason == f"approval_{outcome}" and told.value.data["approval_id"] == approval_id


async def test_an_approval_is_usable_for_twice_ttl_s_after_the_hold(store: Any, clock: Clock) -> None:
    stage = ApproveStage(store, ApprovalsConfig(ttl_s=0.2), clock=clock)
    with pytest.raises(GatewayError) as first:
        await stage(call_context())
    approval_id = first.value.data["approval_id"]
    await store.decide(approval_id, "alice", "approved", None)
    await asyncio.sleep(0.5)  # not synchronisation: Redis keeps its key TTLs in its own (real) time
    clock.advance(3600)
    with pytest.raises(GatewayError) as late:
        await stage(call_context())
    assert late.value.reason == "approval_pending" and late.value.data["approval_id"] != approval_id


async def test_a_waiting_client_told_of_expiry_asks_anew_on_retry(store: Any, clock: Clock) -> None:
    """Told `approval_expired` on its open request, the client's identical retry is a new request to the
    approvers, not the same expiry a second time."""
    stage = ApproveStage(store, ApprovalsConfig(ttl_s=60, keepalive_s=0.05), clock=clock)
    held = asyncio.create_task(stage(call_context(notify=Sink())))
    item = await _pending(store)
    clock.advance(61)
    with pytest.raises(GatewayError) as told:
        await asyncio.wait_for(held, 10)
    assert told.value.reason == "approval_expired" and told.value.data["approval_id"] == item.id
    with pytest.raises(GatewayError) as anew:
        await stage(call_context())
    assert anew.value.reason == "approval_pending" and anew.value.data["approval_id"] != item.id


@pytest.mark.parametrize("how", ["cancel", "disconnect"])
async def test_one_of_two_identical_held_calls_going_away_leaves_the_other_held(kit: StoreKit, how: str) -> None:
    """Two identical calls held at once (one agent on two connections, or on two replicas) wait on one item:
    the one that cancels or disconnects withdraws only itself; the other keeps waiting and runs once approved
    (it used to be answered approval_cancelled, and the approver got 409)."""
    a, b = await kit.make(), await kit.make()
    first, second = call_context(notify=Sink()), call_context(notify=Sink())
    held_first = asyncio.create_task(ApproveStage(a, ApprovalsConfig(keepalive_s=0.2))(first))
    item = await _pending(a)
    held_second = asyncio.create_task(ApproveStage(b, ApprovalsConfig(keepalive_s=0.2))(second))
    await second.notify.wait_for(2)  # held: its first keep-alive, then a wait step on the same item
    assert second.extra["approval_id"] == item.id
    if how == "cancel":
        first.cancelled.set()
        with pytest.raises(GatewayError) as info:
            await asyncio.wait_for(held_first, 10)
        assert info.value.reason == "approval_cancelled"
    else:
        held_first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await held_first
    if held_second.done():
        await held_second  # raises what the other call was answered (it was approval_cancelled)
    assert (await b.get(item.id)).pending
    await b.decide(item.id, "alice", "approved", None)
    await asyncio.wait_for(held_second, 10)
    assert second.approval is not None and second.approval.id == item.id and second.approval.outcome == "approved"
    # the last waiter going away still withdraws the call
    alone = call_context({"amount": 11, "account": "A-1"}, notify=Sink())
    held_alone = asyncio.create_task(ApproveStage(a, ApprovalsConfig(keepalive_s=0.2))(alone))
    await alone.notify.wait_for(1)
    held_alone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await held_alone
    assert (await b.get(alone.extra["approval_id"])).state == "cancelled"


async def test_two_identical_held_calls_one_approval_runs_one_the_other_is_held_anew(kit: StoreKit) -> None:
    """docs/approvals.md: one approval allows one execution, so of two identical calls waiting on one item,
    its approval releases one; the other is held again, on a new pending item for the approvers."""
    a, b = await kit.make(), await kit.make()
    first, second = call_context(notify=Sink()), call_context(notify=Sink())
    held = [asyncio.create_task(ApproveStage(store, ApprovalsConfig(keepalive_s=0.2))(ctx))
            for store, ctx in ((a, first), (b, second))]
    item = await _pending(a)
    await second.notify.wait_for(2)
    assert first.extra["approval_id"] == second.extra["approval_id"] == item.id
    await a.decide(item.id, "alice", "approved", None)
    done, waiting = await asyncio.wait(held, timeout=10, return_when=asyncio.FIRST_COMPLETED)
    assert len(done) == 1 and len(waiting) == 1
    await done.pop()
    ran, other = (first, second) if held[0].done() else (second, first)
    assert ran.approval is not None and ran.approval.id == item.id
    anew = await _pending(a)  # the other one still waits, on a new item (it learns the id once the store answers)
    await eventually(_true_when(lambda: other.extra["approval_id"] == anew.id))
    assert anew.id != item.id and not waiting.pop().done()
    other.cancelled.set()
    with pytest.raises(GatewayError):
        await asyncio.wait_for(asyncio.gather(*held), 10)
    assert (await a.get(anew.id)).state == "cancelled"


@pytest.mark.parametrize("kit", ["memory"], indirect=True)
async def test_a_client_going_away_after_the_store_lost_its_item_is_answered_cancelled(store: Any) -> None:
    ctx = call_context(notify=Sink())
    held = asyncio.create_task(ApproveStage(store, ApprovalsConfig())(ctx))
    item = await _pending(store)
    del store._items[item.id]  # lost, as by a Redis restarted without persistence
    ctx.cancelled.set()
    with pytest.raises(GatewayError) as info:
        await asyncio.wait_for(held, 10)
    assert info.value.reason == "approval_cancelled"


async def test_an_approval_of_a_prompt_does_not_release_the_tool_of_that_name(store: Any) -> None:
    """One upstream may have a prompt and a tool of one name (`restock`), taking the same arguments: approving
    the prompt's read must not run the tool (the approval used to bind to upstream, name and arguments only, so
    the tool call joined the approved item and ran), nor the other way round."""
    stage = ApproveStage(store, ApprovalsConfig())

    def held(method: str) -> Any:
        ctx = call_context()
        ctx.method = method
        return ctx

    with pytest.raises(GatewayError) as prompt:
        await stage(held("prompts/get"))
    prompt_id = prompt.value.data["approval_id"]
    item = await store.get(prompt_id)
    assert item.method == "prompts/get"
    # The approver is told which it is: the page's card and history row, the webhook's text and the CLI.
    from gateway.approvals import cli, render, webhooks
    assert "payments / pay (prompts/get)</h3>" in render.item_card(item, "csrf", item.created_at)
    # The card's age reads as a time in the past ("Waiting 1 min ago" did not).
    assert "<dt>Requested</dt><dd>1 min ago (expires" in render.item_card(item, "csrf", item.created_at + 90)
    assert "payments / pay (prompts/get)</td>" in render.history_table([item])
    assert webhooks.message(item, None)["text"].endswith("payments/pay (prompts/get)")
    assert cli._what(item.to_json()) == " (prompts/get)" and cli._what({"method": "tools/call"}) == ""
    await store.decide(prompt_id, "alice", "approved", None)
    with pytest.raises(GatewayError) as tool:
        await stage(held("tools/call"))
    assert tool.value.reason == "approval_pending" and tool.value.data["approval_id"] != prompt_id
    await store.decide(tool.value.data["approval_id"], "alice", "approved", None)
    ctx = held("prompts/get")
    await stage(ctx)  # the prompt's approval is still there for the prompt, once
    assert ctx.approval is not None and ctx.approval.id == prompt_id
    ctx = held("tools/call")
    await stage(ctx)
    assert ctx.approval is not None and ctx.approval.id == tool.value.data["approval_id"]


async def test_an_approval_in_one_tenant_does_not_release_the_call_in_another(store: Any) -> None:
    """An agent whose tokens name the tenant it acts for (one subject, several tenants): approvers decided the
    call in the tenant they were shown, and tenant-scoped policies pass in either, so the same call in another
    tenant needs its own approval (the approval used to bind to issuer and subject only: it ran there)."""
    from gateway.context import Actor, Principal

    stage = ApproveStage(store, ApprovalsConfig())
    base = {"id": "agent-1", "issuer": "https://idp.test", "subject": "agent-1", "chain": (Actor("orchestrator"),)}
    acme, globex = (Principal(**base, attributes={"tenant": t}) for t in ("acme", "globex"))  # type: ignore[arg-type]
    with pytest.raises(GatewayError) as first:
        await stage(call_context(principal=acme))
    approval_id = first.value.data["approval_id"]
    await store.decide(approval_id, "alice", "approved", None)
    with pytest.raises(GatewayError) as other:
        await stage(call_context(principal=globex))
    assert other.value.reason == "approval_pending" and other.value.data["approval_id"] != approval_id
    assert (await store.get(other.value.data["approval_id"])).tenant == "globex"
    ctx = call_context(principal=acme)
    await stage(ctx)  # the approved call, in its tenant, runs once
    assert ctx.approval is not None and ctx.approval.id == approval_id
