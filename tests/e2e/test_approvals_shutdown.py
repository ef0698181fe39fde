"""SIGTERM with calls held on open SSE requests (real gateway processes, real redis-server): the agents are
answered `approval_pending` with the id at once, the items stay pending, the process exits within the drain
deadline, and another replica on the same Redis approves the item and runs the retried call once."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.approvals.redis import RedisApprovalStore
from gateway.demo.servers import payments_server
from tests.support.contract import write_policies
from tests.support.mcp_client import sdk_client
from tests.support.redis import RedisServer, redis_factory, redis_server  # noqa: F401
from tests.support.servers import run_http_server
from tests.support.tokens import TestIssuer

pytestmark = pytest.mark.asyncio
REPO = Path(__file__).resolve().parents[2]
AUDIENCE = "http://customs.test/mcp"
SHOPPER = "spiffe://acme.test/agent/shopper"
DRAIN_S = 20.0
INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
POLICIES = """
@id("reads")
permit (principal, action == Action::"call_tool", resource) when { resource.read_only };

@id("payments-need-approval")
permit (principal, action == Action::"call_tool", resource == Tool::"payments/pay")
when { context.approval == "granted" };

@id("finance-decides")
permit (principal in Group::"finance", action == Action::"approve", resource);
"""


class Agent:
    """One agent session on one gateway, speaking raw JSON-RPC (SSE when it can wait, else JSON)."""

    def __init__(self, http: aiohttp.ClientSession, url: str, token: str) -> None:
        self.http, self.url = http, url
        self.headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}

    async def start(self, *, wait: bool) -> None:
        self.headers["Accept"] = "application/json, text/event-stream" if wait else "application/json"
        async with self.http.post(self.url, json=INIT, headers=self.headers) as resp:
            self.headers["Mcp-Session-Id"] = resp.headers["Mcp-Session-Id"]

    def pay(self, args: dict[str, Any], request_id: int = 2) -> Any:
        body = {"jsonrpc": "2.0", "id": request_id, "method": "tools/call",
                "params": {"name": "payments__pay", "arguments": args, "_meta": {"progressToken": request_id}}}
        return self.http.post(self.url, json=body, headers=self.headers)


async def first_progress(resp: aiohttp.ClientResponse) -> None:
    while b"Waiting for approval" not in await resp.content.readline():
        pass


def last_message(text: str) -> dict[str, Any]:
    """The JSON-RPC answer that ends an SSE response (its last `data:` line)."""
    lines = [line[5:].strip() for line in text.splitlines() if line.startswith("data:")]
    assert lines, f"the stream carried no message: {text!r}"
    return dict(json.loads(lines[-1]))


@pytest.fixture
async def setup(tmp_path: Path, redis_server: RedisServer) -> AsyncIterator[tuple[dict[str, Any], TestIssuer, str]]:  # noqa: F811
    issuer = TestIssuer(tmp_path)
    policies = write_policies(tmp_path / "policies", POLICIES)
    async with run_http_server(payments_server()) as upstream:
        yield {
            "upstreams": [{"name": "payments", "url": upstream}],
            "identity": {"mode": "jwt", "issuers": [issuer.config(audience=AUDIENCE)]},
            "policies": {"dir": str(policies), "watch": False},
            "store": {"redis": {"url": redis_server.url}},
            "approvals": {"wait_s": 60, "keepalive_s": 0.5},
            "listen": {"drain_timeout_s": DRAIN_S},
        }, issuer, upstream


async def test_sigterm_answers_held_calls_pending_and_another_replica_serves_them(
        spawn_gateway: Any, setup: tuple[dict[str, Any], TestIssuer, str], redis_server: RedisServer) -> None:  # noqa: F811
    config, issuer, upstream = setup
    agent_token = issuer.mint(SHOPPER, aud=AUDIENCE, tenant="acme")
    calls = [{"account": "acme-1", "amount": 11}, {"account": "acme-2", "amount": 22}]
    a = await spawn_gateway(config, name="a")
    async with aiohttp.ClientSession() as http:
        agent = Agent(http, a.mcp, agent_token)
        await agent.start(wait=True)
        streams = [await agent.pay(args, request_id=n) for n, args in enumerate(calls, start=2)]
        try:
            for resp in streams:  # each call is held: its stream carries the first progress notification
                assert resp.headers["Content-Type"].startswith("text/event-stream")
                await asyncio.wait_for(first_progress(resp), 10)
            signalled = time.monotonic()
            a.proc.send_signal(signal.SIGTERM)
            answers = [last_message(await asyncio.wait_for(resp.text(), DRAIN_S)) for resp in streams]
        finally:
            for resp in streams:
                resp.release()
        deadline = signalled + DRAIN_S
        while a.proc.poll() is None:
            assert time.monotonic() < deadline, "the gateway outlived its drain deadline"
            await asyncio.sleep(0.05)
        assert a.proc.returncode == 0, a.log()
        ids = []
        for answer in answers:
            assert answer["error"]["data"]["reason"] == "approval_pending", answer
            ids.append(answer["error"]["data"]["approval_id"])

        store = RedisApprovalStore.from_url(redis_server.url)
        try:
            assert [(await store.get(i)).state for i in ids] == ["pending", "pending"]  # not withdrawn
        finally:
            await store.close()

        b = await spawn_gateway(config, name="b")
        alice = {"Authorization": f"Bearer {issuer.mint('alice', aud=AUDIENCE, groups=['finance'])}"}
        async with http.post(f"{b.url}/api/approvals/{ids[0]}/approve", json={"comment": "ok"}, headers=alice) as resp:
            assert resp.status == 200 and (await resp.json())["state"] == "approved"
        retry = Agent(http, b.mcp, agent_token)
        await retry.start(wait=False)
        async with retry.pay(calls[0]) as resp:
            assert (await resp.json())["result"]["content"][0]["text"] == "paid 11.0 to acme-1"
        async with retry.pay(calls[1]) as resp:  # the other one joins its pending item, still undecided
            assert (await resp.json())["error"]["data"]["approval_id"] == ids[1]
    async with sdk_client(upstream) as direct:
        executed = (await direct.call_tool("executed_calls", {})).structured_content or {}
    assert [c["account"] for c in executed.get("result") or []] == ["acme-1"]  # ran once


async def test_an_open_approvers_page_does_not_hold_up_shutdown(
        spawn_gateway: Any, setup: tuple[dict[str, Any], TestIssuer, str]) -> None:
    """The page's live-update stream is no in-flight work: SIGTERM ends it at once. It used to be waited for
    (drain_timeout_s) and then waited for again after aiohttp's cancel, which such a stream never notices."""
    config, issuer, _ = setup
    gw = await spawn_gateway(config, name="page")
    alice = {"Authorization": f"Bearer {issuer.mint('alice', aud=AUDIENCE, groups=['finance'])}"}
    async with aiohttp.ClientSession() as http, http.get(f"{gw.url}/api/approvals/events", headers=alice) as events:
        assert await asyncio.wait_for(events.content.readline(), 10) == b": connected\n"
        signalled = time.monotonic()
        gw.proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(events.content.read(), DRAIN_S / 2)  # the stream ends (keep-alives, then EOF)
    while gw.proc.poll() is None:
        assert time.monotonic() < signalled + DRAIN_S / 2, "an open page held the gateway up"
        await asyncio.sleep(0.05)
    assert gw.proc.returncode == 0, gw.log()
