"""A call held for approval inside a JSON-RPC batch (2025-03-26 sessions) does not hold back the batch's other
answers (a real gateway, the demo tool servers, the shipped policies).

The batch's requests run concurrently, but every answer went out at the end, after the slowest: a read batched
with a payment waiting for a person was answered only once someone decided (up to `approvals.wait_s`, 14 min).
Once the batch's answer is an SSE stream (the held call's keep-alives make it one), each answer is an event of
its own, sent when its call ends."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp

from gateway.demo.servers import inventory_server, payments_server
from tests.support.servers import run_http_server
from tests.support.tokens import TestIssuer

REPO = Path(__file__).resolve().parents[2]
PUBLIC = "http://customs.test"
VERSION = "2025-03-26"


async def _session(http: aiohttp.ClientSession, url: str, token: str) -> dict[str, str]:
    headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json",
               "Authorization": f"Bearer {token}"}
    init = {"jsonrpc": "2.0", "id": 0, "method": "initialize",
            "params": {"protocolVersion": VERSION, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
    async with http.post(f"{url}/mcp", json=init, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        headers["Mcp-Session-Id"] = resp.headers["Mcp-Session-Id"]
    async with http.post(f"{url}/mcp", json={"jsonrpc": "2.0", "method": "notifications/initialized"},
                         headers=headers) as resp:
        assert resp.status == 202
    return headers


async def _next_message(resp: aiohttp.ClientResponse) -> dict[str, Any]:
    """The next SSE event's message (comments skipped)."""
    while True:
        line = await resp.content.readline()
        assert line, "the stream ended"
        if line.startswith(b"data: "):
            message: dict[str, Any] = json.loads(line[6:])
            return message


async def test_a_held_call_does_not_hold_back_the_other_answers_of_its_batch(start_gateway: Any,
                                                                            tmp_path: Path) -> None:
    issuer = TestIssuer(tmp_path)
    async with run_http_server(payments_server()) as pay, run_http_server(inventory_server()) as inv:
        gw = await start_gateway({
            "listen": {"public_url": PUBLIC},
            "upstreams": [{"name": "payments", "url": pay}, {"name": "inventory", "url": inv}],
            "identity": {"mode": "jwt", "issuers": [issuer.config(audience=f"{PUBLIC}/mcp")]},
            "policies": {"dir": str(REPO / "policies"), "watch": False},
            "approvals": {"keepalive_s": 0.2}})
        agent = issuer.mint("spiffe://acme.test/agent/shopper", aud=f"{PUBLIC}/mcp", tenant="acme")
        alice = issuer.mint("alice", aud=f"{PUBLIC}/mcp", groups=["approvers", "finance"])
        batch = [{"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                  "params": {"name": "payments__pay", "arguments": {"account": "A-7", "amount": 250}}},
                 {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                  "params": {"name": "inventory__get_stock", "arguments": {"sku": "widget"}}}]
        async with aiohttp.ClientSession(headers={"Host": "customs.test"}) as http:
            headers = await _session(http, gw.url, agent)
            async with http.post(f"{gw.url}/mcp", json=batch, headers=headers) as resp:
                assert resp.status == 200 and resp.content_type == "text/event-stream"
                async with asyncio.timeout(10):  # the read's answer comes while the payment still waits
                    read = await _next_message(resp)
                assert read["id"] == 2 and read["result"]["content"][0]["text"] == "widget: 42 in stock", read
                async with http.get(f"{gw.url}/api/approvals?state=pending",
                                    headers={"Authorization": f"Bearer {alice}"}) as listed:
                    (held,) = (await listed.json())["items"]
                async with http.post(f"{gw.url}/api/approvals/{held['id']}/approve", json={},
                                     headers={"Authorization": f"Bearer {alice}"}) as decided:
                    assert decided.status == 200, await decided.text()
                async with asyncio.timeout(10):
                    paid = await _next_message(resp)
                    assert (await resp.content.read()).strip() == b""  # the stream ends with the last answer
    assert paid["id"] == 1 and paid["result"]["content"][0]["text"] == "paid 250.0 to A-7", paid
