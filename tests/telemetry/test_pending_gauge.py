"""`customs.approvals.pending` is the approval store's count: two gateways on one real redis-server agree on
it, including for an item held on one replica and decided on the other (neither replica's own events
would take it away)."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.approvals.gauge import PendingGauge
from gateway.approvals.memory import MemoryApprovalStore
from gateway.approvals.model import Approval
from gateway.config.model import TelemetryConfig
from gateway.demo.servers import payments_server
from gateway.telemetry import Metrics
from tests.support.redis import redis_factory  # noqa: F401
from tests.support.servers import run_http_server
from tests.support.tokens import TestIssuer

REPO = Path(__file__).resolve().parents[2]
AUDIENCE = "http://customs.test/mcp"
JSON_ONLY = {"Content-Type": "application/json", "Accept": "application/json"}
PENDING = re.compile(r"^customs_approvals_pending(?:\{[^}]*\})? (\S+)$", re.MULTILINE)


def pending_in(text: str) -> float | None:
    found = PENDING.findall(text)
    return float(found[0]) if found else None


def held(approval_id: str, *, quorum: int = 1, ttl: float = 900) -> Approval:
    now = time.time()
    return Approval(id=approval_id, state="pending", upstream="payments", tool="pay", principal="agent-b",
                    principal_key="https://idp.example|agent-b", chain=(), tenant="acme", args={}, args_digest="d",
                    policies=("pay-needs-approval",), created_at=now, expires_at=now + ttl, key=approval_id,
                    quorum=quorum)


async def until_pending(metrics: Metrics, expected: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while (seen := pending_in(metrics.prometheus_text().decode())) != expected:
        assert loop.time() < deadline, f"pending gauge {seen}, expected {expected}"
        await asyncio.sleep(0.01)


async def test_pending_gauge_counts_each_item_once() -> None:
    """The gauge is the store's count of pending items, refreshed right after each change: a quorum vote keeps
    an item pending (still one), an approved call that runs is gone, and a denial or cancellation ends one."""
    metrics, store = Metrics(TelemetryConfig(), env={}), MemoryApprovalStore()
    gauge = PendingGauge(store, metrics.set_approvals_pending)
    await gauge.start()
    try:
        await until_pending(metrics, 0.0)
        await store.create_or_join(held("ap-1", quorum=2), link_s=60)
        await store.create_or_join(held("ap-2"), link_s=60)
        await store.create_or_join(held("ap-3"), link_s=60)
        await until_pending(metrics, 3.0)
        await store.decide("ap-1", "alice", "approved", None)  # quorum 2: still pending
        await store.decide("ap-2", "alice", "denied", None)
        await until_pending(metrics, 2.0)
        await store.decide("ap-1", "bob", "approved", None)
        assert await store.claim_execution("ap-1")
        await store.cancel("ap-3")
        await store.cancel("ap-3", "expired")  # already ended: no change
        await until_pending(metrics, 0.0)
    finally:
        await gauge.close()
        await metrics.close()


async def test_pending_gauge_leaves_out_due_items() -> None:
    """An item past its expiry is not pending any more, even before anything marks it expired; counting
    expires nothing itself."""
    events: list[dict[str, Any]] = []
    metrics, store = Metrics(TelemetryConfig(), env={}), MemoryApprovalStore(on_event=events.append)
    await store.create_or_join(held("ap-1", ttl=-1), link_s=60)
    await store.create_or_join(held("ap-2"), link_s=60)
    await PendingGauge(store, metrics.set_approvals_pending).refresh()
    assert pending_in(metrics.prometheus_text().decode()) == 1.0
    assert [e["state"] for e in events] == ["pending", "pending"]
    await metrics.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def metric(http: aiohttp.ClientSession, gw: Any) -> float | None:
    async with http.get(f"{gw.url}/metrics") as resp:
        assert resp.status == 200
        return pending_in(await resp.text())


async def until_both(http: aiohttp.ClientSession, gateways: list[Any], expected: float,
                     timeout: float = 15) -> None:
    """Poll both replicas' /metrics until each shows `expected` (the periodic refresh is 5 s: the deadline
    covers it even if a change notice were missed)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        seen = [await metric(http, gw) for gw in gateways]
        if seen == [expected] * len(gateways):
            return
        assert loop.time() < deadline, f"pending gauge {seen}, expected {expected} on every replica"
        await asyncio.sleep(0.05)


async def hold_call(http: aiohttp.ClientSession, gw: Any, token: str, args: dict[str, Any]) -> str:
    """A client that cannot wait: answered approval_pending at once, the item stays pending."""
    headers = {**JSON_ONLY, "Authorization": f"Bearer {token}"}
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                       "clientInfo": {"name": "t", "version": "1"}}}
    async with http.post(gw.mcp, json=init, headers=headers) as resp:
        sid = resp.headers["Mcp-Session-Id"]
    call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "payments__pay", "arguments": args}}
    async with http.post(gw.mcp, json=call, headers={**headers, "Mcp-Session-Id": sid}) as resp:
        body = await resp.json()
    assert body["error"]["data"]["reason"] == "approval_pending", body
    return str(body["error"]["data"]["approval_id"])


async def test_item_held_on_a_and_denied_on_b_leaves_both_gauges(start_gateway: Any, redis_factory: Any,  # noqa: F811
                                                                tmp_path: Path, http: aiohttp.ClientSession) -> None:
    issuer = TestIssuer(tmp_path)
    redis = redis_factory()
    async with run_http_server(payments_server()) as url:
        config = {
            "listen": {"public_url": "http://customs.test"},
            "upstreams": [{"name": "payments", "url": url}],
            "identity": {"mode": "jwt", "issuers": [issuer.config(audience=AUDIENCE)]},
            "policies": {"dir": str(REPO / "policies"), "watch": False},
            "store": {"redis": {"url": redis.url}},
        }
        a, b = await start_gateway(config), await start_gateway(config)
        await until_both(http, [a, b], 0.0)

        shopper = issuer.mint("spiffe://customs.demo/agent/shopper", aud=AUDIENCE, tenant="acme")
        approval_id = await hold_call(http, a, shopper, {"account": "acme-1", "amount": 11})
        await until_both(http, [a, b], 1.0)

        alice = issuer.mint("alice", aud=AUDIENCE, tenant="acme", groups=["approvers", "finance"])
        async with http.post(f"{b.url}/api/approvals/{approval_id}/deny", json={"comment": "no"},
                             headers={"Authorization": f"Bearer {alice}"}) as resp:
            assert resp.status == 200, await resp.text()
        await until_both(http, [a, b], 0.0)
