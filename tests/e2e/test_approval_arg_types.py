"""An `approve` policy reads the held call's arguments (`resource.args`) as the schema types them, like the
call_tool policies read `context.args`: a value of another type than declared must not be decided silently.

The arguments used to go to the `approve` decision unchecked: with `amount: 12.5` (a decimal) and an approve
policy comparing `resource.args.amount` as a Long, every approver's decision errored, so the call was hidden from
all of them (list, page, GET 403, approve 403) and the agent waited until it expired; and a policy's `==` on a
mistyped value was silently false (a forbid that never fires). Now the call is denied when it would be held
(`argument type mismatch: resource.args.amount ...` in the decision record), so the agent hears at once, and
an `approve` decision on a mistyped argument denies with that error."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.authz.evaluate import decide_approve
from gateway.authz.policyset import load_policies
from gateway.demo.servers import payments_server
from tests.approvals.conftest import eventually
from tests.e2e.test_approvals_rules import JSON_ONLY, SHOPPER, policy_dir
from tests.support.cli import customs_async
from tests.support.servers import run_http_server
from tests.support.tokens import TestIssuer

POLICIES = """
@id("payments-need-approval")
permit (principal, action == Action::"call_tool", resource == Tool::"payments/pay")
when { context.approval == "granted" };

@id("finance-decides")
permit (principal in Group::"finance", action == Action::"approve", resource);

@id("big-payments-need-the-cfo")
forbid (principal, action == Action::"approve", resource)
when { resource.args has amount && resource.args.amount > 100 && !(principal in Group::"cfo") };

@id("account-666-is-never-approved")
forbid (principal, action == Action::"approve", resource)
when { resource.args has account && resource.args.account == "666" };
"""


class Env:
    def __init__(self, gw: Any, issuer: TestIssuer, http: aiohttp.ClientSession, log: Path) -> None:
        self.gw, self.issuer, self.http, self.log = gw, issuer, http, log

    def alice(self) -> str:
        return self.issuer.mint("alice", aud=self.gw.mcp, groups=["finance"])

    async def pay(self, args: dict[str, Any]) -> dict[str, Any]:
        headers = {**JSON_ONLY, "Authorization": f"Bearer {self.issuer.mint(SHOPPER, aud=self.gw.mcp)}"}
        init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
        async with self.http.post(self.gw.mcp, json=init, headers=headers) as resp:
            headers["Mcp-Session-Id"] = resp.headers["Mcp-Session-Id"]
        call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                "params": {"name": "payments__pay", "arguments": args}}
        async with self.http.post(self.gw.mcp, json=call, headers=headers) as resp:
            return dict(await resp.json())

    async def denials(self) -> list[dict[str, Any]]:
        lines = self.log.read_text().splitlines() if self.log.exists() else []
        records = [json.loads(line) for line in lines if line.strip()]
        return [r for r in records if r.get("type") == "decision" and r.get("decision") == "deny"]

    async def api(self, method: str, path: str) -> tuple[int, Any]:
        async with self.http.request(method, f"{self.gw.url}{path}", json={},
                                     headers={"Authorization": f"Bearer {self.alice()}"}) as resp:
            return resp.status, await resp.json()


@pytest.fixture
async def env(start_gateway: Any, tmp_path: Path) -> AsyncIterator[Env]:
    issuer = TestIssuer(tmp_path)
    log = tmp_path / "decisions.jsonl"
    async with run_http_server(payments_server()) as payments:
        gw = await start_gateway({
            "upstreams": [{"name": "payments", "url": payments}],
            "identity": {"mode": "jwt", "issuers": [issuer.config()]},
            "policies": {"dir": str(policy_dir(tmp_path / "policies", POLICIES)), "watch": False},
            "decision_log": {"path": str(log)},
        })
        async with aiohttp.ClientSession() as http:
            yield Env(gw, issuer, http, log)


async def test_a_mistyped_argument_is_answered_at_once_not_held_out_of_every_approvers_sight(env: Env) -> None:
    body = await env.pay({"account": "A-7", "amount": 12.5})
    assert body["error"]["data"]["reason"] == "unknown_tool", body  # denied as any denial, at once: not held
    async def logged() -> bool:
        return bool(await env.denials())

    await eventually(logged)  # the decision log may be written in the background
    (denied,) = await env.denials()
    assert any("resource.args.amount is decimal, the schema declares Long" in e for e in denied["policy_errors"]), \
        denied
    status, listed = await env.api("GET", "/api/approvals?state=pending")
    assert status == 200 and listed["items"] == []  # nothing is left waiting where nobody can see it
    _, out, _ = await customs_async("approvals", "list", "--url", env.gw.url, token=env.alice(), check=True)
    assert "pay" not in out, out

    held = await env.pay({"account": "A-7", "amount": 12})  # the same call with a Long is held and decidable
    approval_id = held["error"]["data"]["approval_id"]
    status, listed = await env.api("GET", "/api/approvals?state=pending")
    assert [i["id"] for i in listed["items"]] == [approval_id]
    _, out, _ = await customs_async("approvals", "list", "--url", env.gw.url, token=env.alice(), check=True)
    assert approval_id in out
    assert (await env.api("GET", f"/api/approvals/{approval_id}"))[0] == 200
    status, decided = await env.api("POST", f"/api/approvals/{approval_id}/approve")
    assert status == 200 and decided["state"] == "approved"


def test_an_approve_decision_on_a_mistyped_argument_denies(tmp_path: Path) -> None:
    """For an item held before the types changed (or any other way a mistyped value reaches `approve`): a forbid
    comparing with `==` would be silently false (account 666, a Long, is not "666") and approve it."""
    policies = load_policies(policy_dir(tmp_path / "policies", POLICIES))
    item = {"id": "apr_1", "upstream": "payments", "tool": "pay", "requester": SHOPPER, "chain": []}
    fine = decide_approve(policies, "alice", ["finance"], {**item, "args": {"account": "A-7", "amount": 12}})
    assert fine.outcome == "allow" and not fine.errors
    for args, where in (({"account": 666, "amount": 12}, "resource.args.account is Long"),
                        ({"account": "A-7", "amount": 12.5}, "resource.args.amount is decimal")):
        decision = decide_approve(policies, "alice", ["finance"], {**item, "args": args})
        assert decision.outcome == "deny" and any(where in e for e in decision.errors), decision
