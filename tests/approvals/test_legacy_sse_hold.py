"""A legacy HTTP+SSE client (GET /sse, POST /messages) held for approval: it waits on its stream, is released once
by an approver, and closing its stream withdraws the call; on both stores."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.demo.servers import payments_server
from tests.support.servers import run_http_server
from tests.support.tokens import TestIssuer

pytestmark = pytest.mark.asyncio
REPO = Path(__file__).resolve().parents[2]
SHOPPER = "spiffe://customs.demo/agent/shopper"


class Env:
    def __init__(self, gw: Any, issuer: TestIssuer) -> None:
        self.gw, self.issuer = gw, issuer
        self.alice = {"Authorization": f"Bearer {issuer.mint('alice', aud=gw.mcp, groups=['approvers', 'finance'])}"}

    async def held_on_legacy_stream(self, http: aiohttp.ClientSession, args: dict[str, Any]) -> Any:
        """Open GET /sse, initialize over POST /messages, then send the call; returns the open stream."""
        auth = {"Authorization": f"Bearer {self.issuer.mint(SHOPPER, aud=self.gw.mcp, tenant='acme')}"}
        stream = await http.get(f"{self.gw.url}/sse", headers={"Accept": "text/event-stream", **auth})
        endpoint = ""
        async for line in stream.content:
            if line.startswith(b"data: /messages"):
                endpoint = self.gw.url + line[6:].decode().strip()
                break
        init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
                "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                           "clientInfo": {"name": "t", "version": "1"}}}
        for message in (init, {"jsonrpc": "2.0", "method": "notifications/initialized"},
                        {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                         "params": {"name": "payments__pay", "arguments": args}}):
            async with http.post(endpoint, json=message, headers=auth) as resp:
                assert resp.status == 202
        return stream

    async def pending(self) -> dict[str, Any]:
        async with aiohttp.ClientSession(headers=self.alice) as http:
            for _ in range(400):
                async with http.get(f"{self.gw.url}/api/approvals?state=pending") as resp:
                    items = (await resp.json())["items"]
                if items:
                    return dict(items[0])
                await asyncio.sleep(0.025)
        raise AssertionError("no pending approval appeared")

    async def api(self, method: str, path: str) -> dict[str, Any]:
        async with aiohttp.ClientSession(headers=self.alice) as http:
            async with http.request(method, f"{self.gw.url}{path}", json={"comment": "ok"}) as resp:
                return dict(await resp.json())


async def _messages(stream: Any) -> AsyncIterator[dict[str, Any]]:
    async for line in stream.content:
        if line.startswith(b"data: {"):
            yield json.loads(line[6:])


@pytest.fixture(params=["memory", "redis"])
async def env(request: pytest.FixtureRequest, start_gateway: Any, tmp_path: Path,
              redis_factory: Any) -> AsyncIterator[Env]:
    issuer = TestIssuer(tmp_path)
    store: Any = {"redis": {"url": redis_factory(appendonly=True).url}} if request.param == "redis" else "memory"
    async with run_http_server(payments_server()) as url:
        gw = await start_gateway({
            "upstreams": [{"name": "payments", "url": url}],
            "identity": {"mode": "jwt", "issuers": [issuer.config()]},
            "policies": {"dir": str(REPO / "policies")},
            "store": store,
            "approvals": {"wait_s": 60, "keepalive_s": 0.2},
        })
        yield Env(gw, issuer)


async def test_a_legacy_sse_client_waits_and_is_released_once(env: Env) -> None:
    async with aiohttp.ClientSession() as http:
        stream = await env.held_on_legacy_stream(http, {"account": "acme-1", "amount": 5})
        item = await env.pending()
        messages = _messages(stream)
        first = await asyncio.wait_for(anext(m async for m in messages if "method" in m), 10)
        assert first["method"] == "notifications/message" and item["id"] in first["params"]["data"]  # keep-alive
        assert (await env.api("POST", f"/api/approvals/{item['id']}/approve"))["state"] == "approved"
        answer = await asyncio.wait_for(anext(m async for m in messages if m.get("id") == 2), 20)
        stream.close()
    assert answer["result"]["content"][0]["text"] == "paid 5.0 to acme-1"
    assert (await env.api("GET", f"/api/approvals/{item['id']}"))["executed"] is True


async def test_closing_the_legacy_stream_withdraws_the_held_call(env: Env) -> None:
    async with aiohttp.ClientSession() as http:
        stream = await env.held_on_legacy_stream(http, {"account": "acme-1", "amount": 6})
        item = await env.pending()
        stream.close()
    for _ in range(400):
        state = (await env.api("GET", f"/api/approvals/{item['id']}"))["state"]
        if state != "pending":
            break
        await asyncio.sleep(0.025)
    assert state == "cancelled"
