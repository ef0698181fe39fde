"""Who may decide a held call, through the real gateway: nobody on their own behalf (owners included), and
the quorum a policy asks for with `@quorum("N")`."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.authz.policyset import PolicyLoadError, load_policies
from gateway.demo.servers import inventory_server, payments_server
from tests.support.servers import run_http_server
from tests.support.tokens import TestIssuer, act_chain

pytestmark = pytest.mark.asyncio
REPO = Path(__file__).resolve().parents[2]
SHOPPER = "spiffe://acme.test/agent/shopper"
JSON_ONLY = {"Content-Type": "application/json", "Accept": "application/json"}

POLICIES = """
@id("reads")
permit (principal, action == Action::"call_tool", resource) when { resource.read_only };

@id("payments-need-two")
@quorum("2")
permit (principal, action == Action::"call_tool", resource == Tool::"payments/pay")
when { context.approval == "granted" };

@id("stock-changes-need-one")
permit (principal, action == Action::"call_tool", resource == Tool::"inventory/set_stock")
when { context.approval == "granted" };

@id("finance-decides")
permit (principal in Group::"finance", action == Action::"approve", resource);
"""


def policy_dir(directory: Path, text: str = POLICIES) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "schema.cedarschema").write_text((REPO / "policies" / "schema.cedarschema").read_text())
    (directory / "rules.cedar").write_text(text)
    return directory


class Env:
    def __init__(self, gw: Any, issuer: TestIssuer, http: aiohttp.ClientSession) -> None:
        self.gw, self.issuer, self.http = gw, issuer, http

    def token(self, sub: str, **kw: Any) -> str:
        return self.issuer.mint(sub, aud=self.gw.mcp, **kw)

    def person(self, sub: str) -> str:
        return self.token(sub, groups=["finance"])

    async def call(self, token: str, tool: str, args: dict[str, Any]) -> dict[str, Any]:
        """A client that cannot wait (no SSE): one JSON answer, `approval_pending` while held."""
        headers = {**JSON_ONLY, "Authorization": f"Bearer {token}"}
        init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
                "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t",
                                                                                                "version": "1"}}}
        async with self.http.post(self.gw.mcp, json=init, headers=headers) as resp:
            sid = resp.headers["Mcp-Session-Id"]
        call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": tool, "arguments": args}}
        async with self.http.post(self.gw.mcp, json=call, headers={**headers, "Mcp-Session-Id": sid}) as resp:
            return dict(await resp.json())

    async def held(self, token: str, tool: str, args: dict[str, Any]) -> str:
        body = await self.call(token, tool, args)
        assert body["error"]["data"]["reason"] == "approval_pending", body
        return str(body["error"]["data"]["approval_id"])

    async def decide(self, who: str, approval_id: str, action: str = "approve") -> tuple[int, Any]:
        async with self.http.post(f"{self.gw.url}/api/approvals/{approval_id}/{action}", json={"comment": who},
                                  headers={"Authorization": f"Bearer {self.person(who)}"}) as resp:
            return resp.status, await resp.json()


@pytest.fixture
async def env(start_gateway: Any, tmp_path: Path) -> AsyncIterator[Env]:
    issuer = TestIssuer(tmp_path)
    async with run_http_server(payments_server()) as payments, run_http_server(inventory_server()) as inventory:
        gw = await start_gateway({
            "upstreams": [{"name": "payments", "url": payments}, {"name": "inventory", "url": inventory}],
            "identity": {"mode": "jwt", "issuers": [issuer.config()]},
            "policies": {"dir": str(policy_dir(tmp_path / "policies")), "watch": False},
        })
        async with aiohttp.ClientSession() as http:
            yield Env(gw, issuer, http)


async def test_the_agents_owner_may_not_decide_its_call(env: Env) -> None:
    agent = env.token(SHOPPER, tenant="acme", claims={"owner": "bob"})
    approval_id = await env.held(agent, "inventory__set_stock", {"sku": "widget", "quantity": 1})
    for action in ("approve", "deny"):
        status, body = await env.decide("bob", approval_id, action)  # bob is in finance, but owns the agent
        assert status == 403 and body["error"]["reason"] == "self_approval", body
        # The message names what was refused: deciding, not only approving (a denial was told "cannot approve").
        assert body["error"]["message"] == "you cannot decide a call made on your own behalf", body
    # The page shows bob the call without buttons; a hand-made form post fails cleanly.
    bob = {"Authorization": f"Bearer {env.person('bob')}"}
    async with env.http.get(f"{env.gw.url}/approvals/fragment", headers=bob) as resp:
        html = await resp.text()
    assert approval_id in html and "own-behalf" in html and 'class="approve"' not in html
    async with env.http.post(f"{env.gw.url}/approvals/{approval_id}/decide", data={"outcome": "approve"},
                             headers=bob) as resp:
        assert resp.status == 403 and "on your own behalf" in await resp.text()
    # The CLI goes through the same API check.
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "approvals", "approve", approval_id, "--url", env.gw.url,
        "--token", env.person("bob"), env={**os.environ}, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 1 and "403" in err.decode(), err.decode()
    # Someone else in finance sees the buttons and decides.
    async with env.http.get(f"{env.gw.url}/approvals/fragment",
                            headers={"Authorization": f"Bearer {env.person('alice')}"}) as resp:
        assert 'class="approve"' in await resp.text()
    status, body = await env.decide("alice", approval_id)
    assert status == 200 and body["state"] == "approved", body
    done = await env.call(agent, "inventory__set_stock", {"sku": "widget", "quantity": 1})
    assert "result" in done, done


async def test_an_owner_of_an_actor_in_the_chain_may_not_decide(env: Env) -> None:
    agent = env.token(SHOPPER, tenant="acme",
                      act=act_chain(("spiffe://acme.test/agent/orchestrator", {"tenant": "acme", "owner": "carol"})))
    approval_id = await env.held(agent, "inventory__set_stock", {"sku": "gadget", "quantity": 2})
    status, body = await env.decide("carol", approval_id)
    assert status == 403 and body["error"]["reason"] == "self_approval", body
    status, body = await env.decide("alice", approval_id, "deny")
    assert status == 200 and body["state"] == "denied", body


async def test_a_policy_quorum_needs_that_many_distinct_approvers(env: Env) -> None:
    agent = env.token(SHOPPER, tenant="acme")
    args = {"account": "acme-1", "amount": 90}
    approval_id = await env.held(agent, "payments__pay", args)
    status, body = await env.decide("alice", approval_id)
    assert status == 200 and body["state"] == "pending" and body["quorum"] == 2, body  # one of two
    assert (await env.call(agent, "payments__pay", args))["error"]["data"]["approval_id"] == approval_id
    status, body = await env.decide("alice", approval_id)
    assert status == 409 and body["error"]["reason"] == "already_voted", body  # distinct approvers
    status, body = await env.decide("dave", approval_id)
    assert status == 200 and body["state"] == "approved", body
    done = await env.call(agent, "payments__pay", args)
    assert done["result"]["content"][0]["text"] == "paid 90.0 to acme-1", done
    # A policy without @quorum needs the global approvals.quorum (1).
    other = await env.held(agent, "inventory__set_stock", {"sku": "widget", "quantity": 3})
    status, body = await env.decide("alice", other)
    assert status == 200 and body["state"] == "approved" and body["quorum"] == 1, body


@pytest.mark.parametrize("value", ["0", "two", "21"])
async def test_a_bad_quorum_annotation_refuses_the_policy_set(tmp_path: Path, value: str) -> None:
    text = POLICIES.replace('@quorum("2")', f'@quorum("{value}")')
    with pytest.raises(PolicyLoadError) as info:
        load_policies(policy_dir(tmp_path / "bad", text))
    assert any("payments-need-two" in p and "@quorum" in p for p in info.value.problems), info.value.problems
    assert load_policies(policy_dir(tmp_path / "good")).quorum_by_id == {"payments-need-two": 2}
