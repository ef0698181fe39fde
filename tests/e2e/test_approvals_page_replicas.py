"""The approvers' page in headless Chromium, served by one of two real gateway processes sharing a real
redis-server: a person signed in on replica B sees a call held on replica A appear live, approves or denies it
there with a comment, and the agent's open call on A ends with that outcome; the approved call runs once, and
each new pending call is notified once (signed), not once per replica."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.demo.servers import payments_server
from tests.support.contract import webhook_receiver
from tests.support.mcp_client import sdk_client
from tests.support.redis import redis_factory  # noqa: F401
from tests.support.servers import run_http_server
from tests.support.tokens import TestIssuer

pytestmark = [
    pytest.mark.asyncio,
    pytest.mark.skipif(not os.path.exists("/usr/bin/chromium"), reason="needs Debian chromium"),
]
REPO = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
SHOPPER = "spiffe://customs.demo/agent/shopper"
AUD = "http://customs.test/mcp"
SECRET = "page-replicas-secret"


class Replicas:
    def __init__(self, a: Any, b: Any, issuer: TestIssuer, hooks: list[tuple[bytes, dict[str, str]]]) -> None:
        self.a, self.b, self.issuer, self.hooks = a, b, issuer, hooks

    def agent(self) -> str:
        return self.issuer.mint(SHOPPER, aud=AUD, tenant="acme")

    def alice(self) -> str:
        return self.issuer.mint("alice", aud=AUD, groups=["approvers", "finance"])

    async def item(self, gw: Any, approval_id: str) -> dict[str, Any]:
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {self.alice()}"}) as http:
            async with http.get(f"{gw.url}/api/approvals/{approval_id}") as resp:
                assert resp.status == 200
                return dict(await resp.json())

    async def executed(self) -> list[Any]:
        async with sdk_client(f"{self.a.mcp}/payments", self.agent()) as client:
            result = await client.call_tool("executed_calls", {})
        return list((result.structured_content or {}).get("result") or [])


@pytest.fixture
async def replicas(spawn_gateway: Any, redis_factory: Any, tmp_path: Path) -> AsyncIterator[Replicas]:  # noqa: F811
    issuer = TestIssuer(tmp_path)
    redis = redis_factory(appendonly=True)
    async with webhook_receiver() as (hook, received), run_http_server(payments_server()) as url:
        config = {
            "upstreams": [{"name": "payments", "url": url}],
            "identity": {"mode": "jwt", "issuers": [issuer.config(audience=AUD)]},
            "policies": {"dir": str(REPO / "policies"), "watch": False},
            "store": {"redis": {"url": redis.url}},
            "approvals": {"wait_s": 60, "keepalive_s": 0.5, "webhooks": [{"url": hook, "secret": SECRET}]},
        }
        a, b = await asyncio.gather(spawn_gateway(config, name="a"), spawn_gateway(config, name="b"))
        yield Replicas(a, b, issuer, received)


async def _outcome(replicas: Replicas, amount: int) -> str:
    """The agent pays on replica A and waits; the result's text, or the JSON-RPC error's reason and comment."""
    from mcp.shared.exceptions import MCPError

    try:
        async with sdk_client(replicas.a.mcp, replicas.agent()) as client:
            result = await client.call_tool("payments__pay", {"account": "acme-5", "amount": amount})
            return str(result.content[0].text)
    except BaseException as exc:  # the SDK raises the JSON-RPC error inside its task group
        while isinstance(exc, BaseExceptionGroup):
            exc = exc.exceptions[0]
        if not isinstance(exc, MCPError):
            raise
        data = exc.error.data or {}
        return f"{data.get('reason')}: {data.get('comment')}"


def _signed(body: bytes, headers: dict[str, str]) -> bool:
    expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(headers.get("X-Customs-Signature", ""), expected)


async def test_page_on_b_decides_calls_held_on_a(replicas: Replicas) -> None:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-dev-shm-usage", "--no-first-run"])
        try:
            page = await chromium.new_page()
            await page.goto(f"{replicas.b.url}/approvals")
            await page.fill("#token", replicas.alice())
            await page.click("#signin")
            await page.wait_for_selector("#none-pending", timeout=15000)

            paid = asyncio.create_task(_outcome(replicas, 120))
            card = await page.wait_for_selector(".card.pending[data-approval-id]", timeout=20000)  # live, from A
            approved_id = str(await card.get_attribute("data-approval-id"))
            text = await card.inner_text()
            assert "acme-5" in text and SHOPPER in text and "pay" in text
            await page.fill(f'[data-approval-id="{approved_id}"] textarea[name=comment]', "invoice 77 checked")
            await page.click(f'[data-approval-id="{approved_id}"] button.approve')
            await page.wait_for_selector(f"tr#{approved_id}", timeout=15000)
            assert await asyncio.wait_for(paid, 30) == "paid 120.0 to acme-5"

            refused = asyncio.create_task(_outcome(replicas, 130))
            card = await page.wait_for_selector(".card.pending[data-approval-id]", timeout=20000)
            denied_id = str(await card.get_attribute("data-approval-id"))
            await page.fill(f'[data-approval-id="{denied_id}"] textarea[name=comment]', "not this month")
            await page.click(f'[data-approval-id="{denied_id}"] button.deny')
            await page.wait_for_selector(f"tr#{denied_id}", timeout=15000)
            assert await asyncio.wait_for(refused, 30) == "approval_denied: not this month"
        finally:
            await chromium.close()

    approved = await replicas.item(replicas.a, approved_id)
    assert (approved["state"], approved["decided_by"], approved["comment"]) == ("approved", "alice",
                                                                                 "invoice 77 checked")
    denied = await replicas.item(replicas.a, denied_id)
    assert (denied["state"], denied["decided_by"], denied["comment"]) == ("denied", "alice", "not this month")
    assert [(call["account"], call["amount"]) for call in await replicas.executed()] == [("acme-5", 120.0)]

    async def notified() -> list[str]:
        return [json.loads(body)["approval"]["id"] for body, _ in replicas.hooks]

    async with asyncio.timeout(15):
        while sorted(await notified()) != sorted([approved_id, denied_id]):
            assert len(await notified()) <= 2, await notified()  # one delivery per new call, whichever replica
            await asyncio.sleep(0.05)  # deliveries run in the background: polled, bounded by the timeout
    assert all(_signed(body, headers) for body, headers in replicas.hooks)
