"""Concurrency limits and calls held for approval, through a real gateway: a call waiting for a person holds no
concurrency slot (docs/tools-and-limits.md), so held payments neither refuse other calls nor each other, and the
approved call runs once with the slot it takes then."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from mcp.server.mcpserver import MCPServer
from mcp_types import ToolAnnotations

from gateway.demo.servers import payments_server
from tests.support.contract import CONTRACT_POLICIES, SHOPPER, Agent, Api, reason, until, write_policies
from tests.support.redis import RedisServer
from tests.support.servers import run_http_server
from tests.support.tokens import TestIssuer

pytestmark = pytest.mark.asyncio
APPROVERS = """
@id("approvers-decide")
permit (principal in Group::"approvers", action == Action::"approve", resource);
"""
WAIT = {"Accept": "application/json, text/event-stream"}  # the held request stays open until a decision


async def call_held(agent: Agent, name: str, args: dict[str, Any]) -> dict[str, Any]:
    """A tools/call whose request stays open while it is held: its final answer."""
    body = {"jsonrpc": "2.0", "id": next(agent.ids), "method": "tools/call",
            "params": {"name": name, "arguments": args}}
    async with agent.http.post(agent.url, json=body, headers=agent.headers(WAIT)) as resp:
        assert resp.status == 200 and resp.content_type == "text/event-stream", await resp.text()
        return answer(await resp.text())


def answer(text: str) -> dict[str, Any]:
    """A held call's answer: the last `data:` event of its SSE stream."""
    data = [line[5:] for line in text.splitlines() if line.startswith("data:")]
    return dict(json.loads(data[-1]))


async def test_calls_waiting_for_approval_hold_no_concurrency_slot(start_gateway: Any, tmp_path: Path) -> None:
    issuer = TestIssuer(tmp_path)
    async with run_http_server(payments_server()) as url, aiohttp.ClientSession() as http:
        gw = await start_gateway({
            "upstreams": [{"name": "payments", "url": url}],
            "identity": {"mode": "jwt", "issuers": [issuer.config()]},
            "policies": {"dir": str(write_policies(tmp_path / "p", CONTRACT_POLICIES + APPROVERS))},
            "limits": {"per_principal": {"concurrency": 1}, "per_tool": {"concurrency": 1}}})
        api = Api(http, gw.url, issuer)
        alice = api.person("alice", "approvers")
        agent = await Agent(http, gw.mcp, issuer.mint(SHOPPER, aud=gw.mcp, tenant="acme")).open()
        first = {"account": "acme-1", "amount": 1}
        second = {"account": "acme-2", "amount": 2}
        waiting = [asyncio.create_task(call_held(agent, "payments__pay", args)) for args in (first, second)]

        async def two_pending() -> list[dict[str, Any]]:
            status, body = await api.request("GET", "/api/approvals?state=pending", alice)
            return list(body["items"]) if status == 200 and len(body["items"]) == 2 else []
        items = {json.dumps(i["args"], sort_keys=True): i["id"] for i in await until(two_pending, "two held calls")}

        # Two payments wait on one principal and one tool, each limited to one call at once: neither holds a slot.
        status, body, _ = await agent.call("payments__executed_calls", {})
        assert status == 200 and "result" in body, body
        assert not any(task.done() for task in waiting)

        for args, task in zip((first, second), waiting, strict=True):
            approval_id = items[json.dumps(args, sort_keys=True)]
            status, item = await api.request("POST", f"/api/approvals/{approval_id}/approve", alice, {"comment": "ok"})
            assert status == 200, item
            done = await asyncio.wait_for(task, 30)
            assert done["result"]["content"][0]["text"] == f"paid {float(args['amount'])} to {args['account']}", done
        status, body, _ = await agent.call("payments__executed_calls", {})
        executed = [json.loads(c["text"]) for c in body["result"]["content"]]
        assert executed == [{**first, "memo": ""}, {**second, "memo": ""}], executed  # each once, none refused
        assert reason(body) is None


def slow_payments(executed: list[dict[str, Any]], started: asyncio.Event, release: asyncio.Event) -> MCPServer[Any]:
    """payments/pay, whose payments of 1 wait until `release` is set (a call holding its concurrency slot)."""
    server: MCPServer[Any] = MCPServer("payments")

    @server.tool(annotations=ToolAnnotations(read_only_hint=False, destructive_hint=True))
    async def pay(account: str, amount: float) -> str:
        executed.append({"account": account, "amount": amount})
        if amount == 1:
            started.set()
            await release.wait()
        return f"paid {amount} to {account}"

    return server


@pytest.mark.parametrize("store", ["memory", "redis"])
async def test_an_approved_call_refused_for_a_busy_slot_keeps_its_approval_for_the_retry(
        start_gateway: Any, tmp_path: Path, redis_factory: Callable[..., RedisServer], store: str) -> None:
    """A call a person approved is refused `rate_limited` when its tool's one slot is taken at its release: nothing
    was sent, so the approval is handed back (as for an expired agent token) and the agent's retry after
    Retry-After runs it once. It used to be used up: the person had to approve the same payment again."""
    issuer = TestIssuer(tmp_path)
    executed: list[dict[str, Any]] = []
    started, release = asyncio.Event(), asyncio.Event()
    async with run_http_server(slow_payments(executed, started, release)) as url, aiohttp.ClientSession() as http:
        gw = await start_gateway({
            "upstreams": [{"name": "payments", "url": url}],
            "identity": {"mode": "jwt", "issuers": [issuer.config()]},
            "policies": {"dir": str(write_policies(tmp_path / "p", CONTRACT_POLICIES + APPROVERS))},
            "limits": {"per_tool": {"concurrency": 1}},
            "store": "memory" if store == "memory" else {"redis": {"url": redis_factory().url}},
            "decision_log": {"path": str(tmp_path / "decisions.jsonl")}})
        api = Api(http, gw.url, issuer)
        alice = api.person("alice", "approvers")
        agent = await Agent(http, gw.mcp, issuer.mint(SHOPPER, aud=gw.mcp, tenant="acme")).open()
        slow, quick = {"account": "acme-1", "amount": 1}, {"account": "acme-2", "amount": 2}
        ids = {}
        for args in (slow, quick):  # Accept: application/json: each is told approval_pending at once
            status, held, _ = await agent.call("payments__pay", args)
            assert status == 200 and reason(held) == "approval_pending", held
            ids[args["amount"]] = held["error"]["data"]["approval_id"]
            status, item = await api.request("POST", f"/api/approvals/{ids[args['amount']]}/approve", alice, {})
            assert status == 200, item

        running = asyncio.create_task(agent.call("payments__pay", slow))
        await asyncio.wait_for(started.wait(), 10)
        status, refused, headers = await agent.call("payments__pay", quick)
        assert status == 429 and reason(refused) == "rate_limited", refused
        assert int(headers["Retry-After"]) >= 1
        item = await api.approval(ids[2], alice)
        assert item["state"] == "approved" and item["executed"] is False and item["not_executed"] is None, item

        release.set()
        status, done, _ = await running
        assert status == 200 and done["result"]["content"][0]["text"] == "paid 1.0 to acme-1", done
        status, done, _ = await agent.call("payments__pay", quick)  # the retry: no second approval asked
        assert status == 200 and done["result"]["content"][0]["text"] == "paid 2.0 to acme-2", done
        assert executed == [{"account": "acme-1", "amount": 1.0}, {"account": "acme-2", "amount": 2.0}]
        assert (await api.approval(ids[2], alice))["executed"] is True
        status, again, _ = await agent.call("payments__pay", quick)  # one approval, one execution
        assert reason(again) == "approval_pending" and again["error"]["data"]["approval_id"] != ids[2], again
        await gw.gateway.parts.observability.log.close()
        records = [json.loads(line) for line in (tmp_path / "decisions.jsonl").read_text().splitlines()]
        backs = [r for r in records if r.get("type") == "approval" and r.get("transition") == "handed_back"]
        assert [(r["approval_id"], r.get("detail")) for r in backs] == [(ids[2], "rate_limited")], backs
