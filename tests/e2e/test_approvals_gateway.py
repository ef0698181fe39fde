"""Held calls through the real gateway: a waiting agent is released once by an approver, or withdrawn."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from mcp.shared.exceptions import MCPError

from gateway.demo.servers import payments_server
from tests.support.mcp_client import sdk_client
from tests.support.servers import run_http_server
from tests.support.tokens import TestIssuer

pytestmark = pytest.mark.asyncio
REPO = Path(__file__).resolve().parents[2]
SHOPPER = "spiffe://customs.demo/agent/shopper"


class Env:
    def __init__(self, gw: Any, issuer: TestIssuer) -> None:
        self.gw, self.issuer = gw, issuer

    def agent(self) -> str:
        return self.issuer.mint(SHOPPER, aud=self.gw.mcp, tenant="acme")

    def alice(self) -> str:
        return self.issuer.mint("alice", aud=self.gw.mcp, groups=["approvers", "finance"])

    async def pay(self, amount: int) -> str:
        """The agent pays `amount` to acme-9 and waits for the answer's text (held until someone decides)."""
        async with sdk_client(self.gw.mcp, self.agent()) as client:
            result = await client.call_tool("payments__pay", {"account": "acme-9", "amount": amount})
            return str(result.content[0].text)

    async def api(self, method: str, path: str, token: str, body: Any = None) -> tuple[int, Any]:
        async with aiohttp.ClientSession() as http:
            async with http.request(method, f"{self.gw.url}{path}", json=body,
                                    headers={"Authorization": f"Bearer {token}"}) as resp:
                return resp.status, await resp.json()

    async def pending(self, timeout: float = 10) -> dict[str, Any]:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            _, body = await self.api("GET", "/api/approvals?state=pending", self.alice())
            if body["items"]:
                return dict(body["items"][0])
            assert asyncio.get_running_loop().time() < deadline, "no pending approval appeared"
            await asyncio.sleep(0.05)

    async def state(self, approval_id: str, wanted: str, timeout: float = 10) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while (await self.api("GET", f"/api/approvals/{approval_id}", self.alice()))[1]["state"] != wanted:
            assert asyncio.get_running_loop().time() < deadline, f"approval never became {wanted}"
            await asyncio.sleep(0.05)

    async def executed(self) -> list[Any]:
        async with sdk_client(f"{self.gw.mcp}/payments", self.agent()) as client:
            result = await client.call_tool("executed_calls", {})
        return list((result.structured_content or {}).get("result") or [])


@pytest.fixture
async def env(start_gateway: Any, tmp_path: Path) -> AsyncIterator[Env]:
    issuer = TestIssuer(tmp_path)
    async with run_http_server(payments_server()) as url:
        gw = await start_gateway({
            "upstreams": [{"name": "payments", "url": url}],
            "identity": {"mode": "jwt", "issuers": [issuer.config()]},
            "policies": {"dir": str(REPO / "policies")},
            "approvals": {"wait_s": 60, "keepalive_s": 0.2},
        })
        yield Env(gw, issuer)


async def test_waiting_call_is_released_once_after_approval(env: Env) -> None:
    waiting = asyncio.create_task(env.pay(70))
    item = await env.pending()
    assert item["tool"] == "pay" and item["principal"] == SHOPPER and item["args"]["account"] == "acme-9"
    status, _ = await env.api("POST", f"/api/approvals/{item['id']}/approve", env.agent(), {"comment": "me"})
    assert status == 403  # nobody approves their own call
    status, decided = await env.api("POST", f"/api/approvals/{item['id']}/approve", env.alice(), {"comment": "ok"})
    assert status == 200 and decided["state"] == "approved" and decided["comment"] == "ok"
    assert await asyncio.wait_for(waiting, 20) == "paid 70.0 to acme-9"
    status, body = await env.api("POST", f"/api/approvals/{item['id']}/deny", env.alice(), {"comment": "late"})
    assert status == 409 and body["error"]["reason"] == "already_decided"
    assert [p["amount"] for p in await env.executed()] == [70.0]


async def test_an_agent_holding_an_approvers_delegated_token_decides_nothing(env: Env) -> None:
    """The shipped `approvals-by-people` policy: a person's token that an agent holds (`act`) is the agent deciding,
    even an agent unrelated to the call (self-approval covers only the call's own agents); the person still can."""
    waiting = asyncio.create_task(env.pay(7))
    item = await env.pending()
    bot = env.issuer.mint("alice", aud=env.gw.mcp, groups=["approvers", "finance"],
                          act={"sub": "spiffe://customs.demo/agent/helper"})
    for action in ("approve", "deny"):
        status, body = await env.api("POST", f"/api/approvals/{item['id']}/{action}", bot, {"comment": "bot"})
        assert (status, body["error"]["reason"]) == (403, "forbidden")
    status, decided = await env.api("POST", f"/api/approvals/{item['id']}/approve", env.alice(), {})
    assert status == 200 and decided["decided_by"] == "alice"
    assert await asyncio.wait_for(waiting, 20) == "paid 7.0 to acme-9"


async def test_denied_call_reports_the_comment(env: Env) -> None:
    async def pay() -> str:
        async with sdk_client(env.gw.mcp, env.agent()) as client:
            try:
                await client.call_tool("payments__pay", {"account": "acme-9", "amount": 5})
            except Exception as exc:
                return str(exc)
            return "executed"

    waiting = asyncio.create_task(pay())
    item = await env.pending()
    await env.api("POST", f"/api/approvals/{item['id']}/deny", env.alice(), {"comment": "not this month"})
    assert "denied" in (await asyncio.wait_for(waiting, 20)).lower()
    assert await env.executed() == []


async def test_disconnecting_agent_withdraws_its_pending_call(env: Env) -> None:
    async def pay() -> None:
        async with sdk_client(env.gw.mcp, env.agent()) as client:
            await client.call_tool("payments__pay", {"account": "acme-9", "amount": 9})

    waiting = asyncio.create_task(pay())
    item = await env.pending()
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    await env.state(item["id"], "cancelled")
    status, _ = await env.api("POST", f"/api/approvals/{item['id']}/approve", env.alice(), {"comment": "too late"})
    assert status == 409
    assert await env.executed() == []


async def test_a_held_call_whose_resumable_stream_drops_is_still_withdrawn(env: Env) -> None:
    """A call outlives a dropped resumable stream (docs/transports.md), but not one held for approval."""
    headers = {"Authorization": f"Bearer {env.agent()}", "Accept": "application/json, text/event-stream"}
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                       "clientInfo": {"name": "t", "version": "1"}}}
    pay = {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
           "params": {"name": "payments__pay", "arguments": {"account": "acme-9", "amount": 3},
                      "_meta": {"progressToken": "held"}}}
    async with aiohttp.ClientSession() as http:
        async with http.post(env.gw.mcp, json=init, headers=headers) as resp:
            headers["Mcp-Session-Id"] = resp.headers["Mcp-Session-Id"]
        resp = await http.post(env.gw.mcp, json=pay, headers=headers)
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        async with asyncio.timeout(10):
            while not (line := await resp.content.readline()).startswith(b"id: "):
                assert line, "the held call's stream ended before its first event"
        first_id = line.decode().strip()[4:]  # a progress keep-alive: an id the client could resume with
        item = await env.pending()
        resp.close()  # the client goes away without notifications/cancelled
        await env.state(item["id"], "cancelled")
        async with http.get(env.gw.mcp, headers={**headers, "Accept": "text/event-stream",
                                                 "Last-Event-ID": first_id}) as resumed:
            async with asyncio.timeout(10):
                body = (await resumed.read()).decode()
    assert '"approval_cancelled"' in body  # its answer, kept for the resume (the old code kept none)
    assert await env.executed() == []


async def test_a_stateless_client_is_told_pending_at_once_and_its_retry_runs_once(env: Env) -> None:
    """The stateless 2026-07-28 revision cannot wait on a held call: it gets `approval_pending` with the id at
    once, though it accepts SSE (the old code held its stream open for `approvals.wait_s`, here 60 s)."""
    async def pay() -> Any:
        async with sdk_client(env.gw.mcp, env.agent(), mode="auto") as client:
            try:
                return await asyncio.wait_for(client.call_tool("payments__pay", {"account": "acme-9", "amount": 8}), 15)
            except MCPError as exc:
                return exc.error

    first, again = await pay(), await pay()
    assert first.data["reason"] == "approval_pending" and first.data["approval_id"].startswith("apr_")
    assert again.data["approval_id"] == first.data["approval_id"]  # joins the same item
    status, _ = await env.api("POST", f"/api/approvals/{first.data['approval_id']}/approve", env.alice(), {})
    assert status == 200
    assert (await pay()).content[0].text == "paid 8.0 to acme-9"
    assert [p["amount"] for p in await env.executed()] == [8.0]
