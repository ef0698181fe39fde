"""Two real gateway processes sharing one real redis-server: a call held on A is released through B."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.demo.servers import payments_server
from tests.support.mcp_client import sdk_client
from tests.support.redis import redis_factory  # noqa: F401
from tests.support.servers import run_http_server
from tests.support.tokens import TestIssuer

pytestmark = pytest.mark.asyncio
REPO = Path(__file__).resolve().parents[2]
SHOPPER = "spiffe://customs.demo/agent/shopper"
JSON_ONLY = {"Content-Type": "application/json", "Accept": "application/json"}


class Pair:
    def __init__(self, a: Any, b: Any, issuer: TestIssuer, redis: Any) -> None:
        self.a, self.b, self.issuer, self.redis = a, b, issuer, redis

    def token(self, sub: str = SHOPPER, **kw: Any) -> str:
        kw.setdefault("tenant", "acme")
        return self.issuer.mint(sub, aud="http://customs.test/mcp", **kw)

    def alice(self) -> str:
        return self.token("alice", groups=["approvers", "finance"])

    async def api(self, gw: Any, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with aiohttp.ClientSession() as http:
            async with http.request(method, f"{gw.url}{path}", json=body,
                                    headers={"Authorization": f"Bearer {self.alice()}"}) as resp:
                return resp.status, await resp.json()

    async def call_once(self, gw: Any, args: dict[str, Any]) -> dict[str, Any]:
        """A stateless-style client that cannot wait: one JSON answer."""
        headers = {**JSON_ONLY, "Authorization": f"Bearer {self.token()}"}
        init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
                "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t",
                                                                                                "version": "1"}}}
        call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                "params": {"name": "payments__pay", "arguments": args}}
        async with aiohttp.ClientSession() as http:
            async with http.post(gw.mcp, json=init, headers=headers) as resp:
                sid = resp.headers["Mcp-Session-Id"]
            async with http.post(gw.mcp, json=call, headers={**headers, "Mcp-Session-Id": sid}) as resp:
                return dict(await resp.json())

    async def pending(self, gw: Any) -> list[dict[str, Any]]:
        return list((await self.api(gw, "GET", "/api/approvals?state=pending"))[1]["items"])


@pytest.fixture
async def pair(spawn_gateway: Any, redis_factory: Any, tmp_path: Path) -> AsyncIterator[Pair]:  # noqa: F811
    issuer = TestIssuer(tmp_path)
    redis = redis_factory(appendonly=True)
    async with run_http_server(payments_server()) as url:
        config = {
            "upstreams": [{"name": "payments", "url": url}],
            "identity": {"mode": "jwt", "issuers": [issuer.config(audience="http://customs.test/mcp")]},
            "policies": {"dir": str(REPO / "policies"), "watch": False},
            "store": {"redis": {"url": redis.url}},
            "approvals": {"wait_s": 60, "keepalive_s": 0.5},
        }
        a = await spawn_gateway(config, name="a")
        b = await spawn_gateway(config, name="b")
        yield Pair(a, b, issuer, redis)


async def wait_for(predicate: Any, timeout: float = 15) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_hold_on_a_approve_via_b_runs_once(pair: Pair) -> None:
    async def pay() -> str:
        async with sdk_client(pair.a.mcp, pair.token()) as client:
            result = await client.call_tool("payments__pay", {"account": "acme-1", "amount": 11})
            return str(result.content[0].text)

    waiting = asyncio.create_task(pay())
    (item,) = await wait_for(lambda: pair.pending(pair.b))
    status, decided = await pair.api(pair.b, "POST", f"/api/approvals/{item['id']}/approve", {"comment": "ok"})
    assert status == 200 and decided["decided_by"]
    assert await asyncio.wait_for(waiting, 30) == "paid 11.0 to acme-1"
    status, body = await pair.api(pair.a, "POST", f"/api/approvals/{item['id']}/approve", {"comment": "again"})
    assert status == 409 and body["error"]["reason"] == "already_decided"


async def test_retry_after_approval_on_the_other_replica_and_argument_change(pair: Pair) -> None:
    first = await pair.call_once(pair.a, {"account": "acme-2", "amount": 20})
    assert first["error"]["data"]["reason"] == "approval_pending"
    approval_id = first["error"]["data"]["approval_id"]
    again = await pair.call_once(pair.b, {"account": "acme-2", "amount": 20})
    assert again["error"]["data"]["approval_id"] == approval_id  # joins, does not duplicate
    changed = await pair.call_once(pair.b, {"account": "acme-2", "amount": 21})
    assert changed["error"]["data"]["approval_id"] != approval_id  # other arguments, other approval
    await pair.api(pair.a, "POST", f"/api/approvals/{approval_id}/approve", {"comment": "ok"})
    done = await pair.call_once(pair.b, {"account": "acme-2", "amount": 20})
    assert done["result"]["content"][0]["text"] == "paid 20.0 to acme-2"
    after = await pair.call_once(pair.a, {"account": "acme-2", "amount": 20})
    assert after["error"]["data"]["reason"] == "approval_pending"  # the approval was used up


async def test_approve_racing_deny_across_replicas_has_one_winner(pair: Pair) -> None:
    held = await pair.call_once(pair.a, {"account": "acme-3", "amount": 30})
    approval_id = held["error"]["data"]["approval_id"]
    results = await asyncio.gather(
        pair.api(pair.a, "POST", f"/api/approvals/{approval_id}/approve", {"comment": "yes"}),
        pair.api(pair.b, "POST", f"/api/approvals/{approval_id}/deny", {"comment": "no"}))
    assert sorted(status for status, _ in results) == [200, 409]


async def test_redis_restart_keeps_pending_items_and_fails_closed_meanwhile(pair: Pair) -> None:
    held = await pair.call_once(pair.a, {"account": "acme-4", "amount": 40})
    approval_id = held["error"]["data"]["approval_id"]
    pair.redis.kill()
    down = await pair.call_once(pair.b, {"account": "acme-5", "amount": 50})
    assert down["error"]["data"]["reason"] in {"approval_unavailable", "policy_unavailable"}
    pair.redis.restart()
    items = await wait_for(lambda: _pending_ids(pair))
    assert approval_id in items
    await pair.api(pair.b, "POST", f"/api/approvals/{approval_id}/approve", {"comment": "after outage"})
    done = await pair.call_once(pair.a, {"account": "acme-4", "amount": 40})
    assert done["result"]["content"][0]["text"] == "paid 40.0 to acme-4"


async def _pending_ids(pair: Pair) -> list[str]:
    try:
        return [i["id"] for i in await pair.pending(pair.a)]
    except (aiohttp.ClientError, KeyError):
        return []


async def _held_stream(http: aiohttp.ClientSession, gw: Any, token: str, args: dict[str, Any]) -> Any:
    """A waiting client: a session on `gw`, then the call on an SSE response, read until its first event."""
    headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream",
               "Authorization": f"Bearer {token}"}
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                       "clientInfo": {"name": "t", "version": "1"}}}
    async with http.post(gw.mcp, json=init, headers=headers) as resp:
        headers["Mcp-Session-Id"] = resp.headers["Mcp-Session-Id"]
    call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "payments__pay", "arguments": args}}
    response = await http.post(gw.mcp, json=call, headers=headers)
    assert response.headers["Content-Type"].startswith("text/event-stream")
    await asyncio.wait_for(response.content.readline(), 15)  # held: the stream has begun
    return response


async def test_one_agent_connection_going_away_leaves_its_identical_call_on_the_other_replica_held(
        pair: Pair) -> None:
    """The same call held on A and on B (one item): A's client disconnecting ends only its own request; B's
    stays held and runs once when approved (it used to be answered approval_cancelled)."""
    args = {"account": "acme-6", "amount": 60}
    async with aiohttp.ClientSession() as http_a, aiohttp.ClientSession() as http_b:
        on_a = await _held_stream(http_a, pair.a, pair.token(), args)
        (item,) = await wait_for(lambda: pair.pending(pair.b))
        on_b = await _held_stream(http_b, pair.b, pair.token(), args)
        on_a.close()  # A's client goes away

        async def a_withdrew() -> bool:
            return '"outcome":"cancelled"' in pair.a.log()  # its decision record: the held call withdrew

        await wait_for(a_withdrew)
        status, now = await pair.api(pair.b, "GET", f"/api/approvals/{item['id']}")
        assert status == 200 and now["state"] == "pending"
        status, _ = await pair.api(pair.a, "POST", f"/api/approvals/{item['id']}/approve", {"comment": "ok"})
        assert status == 200
        body = (await asyncio.wait_for(on_b.content.read(), 30)).decode()
        assert "paid 60.0 to acme-6" in body
    async with sdk_client(pair.a.mcp, pair.token()) as client:
        executed = (await client.call_tool("payments__executed_calls", {})).structured_content or {}
    assert [c for c in executed.get("result") or [] if c["account"] == "acme-6"] == [
        {"account": "acme-6", "amount": 60.0, "memo": ""}]  # run once
