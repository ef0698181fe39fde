"""The decision log as an audit trail, through real gateways with the memory and a real Redis store.

A call for a tool, prompt or resource that does not exist gets the answer a denial gets, but its decision
record says `not_found` (no policy decided it), so probing for names shows up. Approval records carry the
held call's trace wherever the change happens (the approvers' API, an expiry found by a read), so who decided
joins to the call's spans.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.demo.servers import payments_server
from tests.conftest import REPO, RunningGateway
from tests.support.mcp_client import sdk_client
from tests.support.otlp import OtlpReceiver
from tests.support.redis import RedisServer, redis_factory, redis_server  # noqa: F401  (fixtures)
from tests.support.servers import run_http_server
from tests.support.tokens import TestIssuer
from tests.telemetry.conftest import first_pending

StartGateway = Callable[[dict[str, Any]], Awaitable[RunningGateway]]
SHOPPER = "spiffe://customs.demo/agent/shopper"
JSON_ONLY = {"Content-Type": "application/json", "Accept": "application/json"}


def gateway_config(upstream: str, issuer: TestIssuer, otlp: OtlpReceiver, log: Path,
                   store: Any = "memory", **approvals: Any) -> dict[str, Any]:
    return {
        "upstreams": [{"name": "payments", "url": upstream}],
        "identity": {"mode": "jwt", "issuers": [issuer.config()]},
        "policies": {"dir": str(REPO / "policies")},
        "approvals": {"keepalive_s": 0.2, **approvals},
        "store": store,
        "decision_log": {"path": str(log)},
        "telemetry": {"traces": {"endpoint": otlp.url}, "metrics": {"prometheus": True}},
    }


def store_config(request: pytest.FixtureRequest) -> Any:
    if request.param == "memory":
        return "memory"
    server: RedisServer = request.getfixturevalue("redis_server")
    return {"redis": {"url": server.url}}


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> Any:
    return store_config(request)


class Agent:
    """A plain JSON client (one answer per POST): what an agent sees on the wire, byte for byte."""

    def __init__(self, http: aiohttp.ClientSession, gw: RunningGateway, token: str) -> None:
        self.http, self.gw = http, gw
        self.headers = {**JSON_ONLY, "Authorization": f"Bearer {token}"}
        self.next_id = 1

    async def start(self) -> Agent:
        await self.rpc("initialize", {"protocolVersion": "2025-11-25", "capabilities": {},
                                      "clientInfo": {"name": "t", "version": "1"}})
        return self

    async def rpc(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        self.next_id += 1
        message = {"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params}
        async with self.http.post(self.gw.mcp, json=message, headers=self.headers) as resp:
            if "Mcp-Session-Id" in resp.headers:
                self.headers["Mcp-Session-Id"] = resp.headers["Mcp-Session-Id"]
            return dict(await resp.json())


async def records(gw: RunningGateway, log: Path) -> list[dict[str, Any]]:
    """Every record `gw` wrote, after its spans and records are flushed."""
    obs = gw.gateway.parts.observability
    await obs.telemetry.flush()
    await obs.log.close()  # drain the decision log (the app's cleanup closes it again, harmlessly)
    return [json.loads(line) for line in log.read_text().splitlines()]


def error_of(answer: dict[str, Any]) -> tuple[Any, ...]:
    """What an agent can tell an answer by: code, message and data, without the request id."""
    error = answer["error"]
    return error["code"], error["message"], error.get("data")


async def test_requests_for_items_that_do_not_exist_are_recorded_as_not_found(
        otlp: OtlpReceiver, start_gateway: StartGateway, tmp_path: Path) -> None:
    issuer, log = TestIssuer(tmp_path), tmp_path / "decisions.jsonl"
    async with run_http_server(payments_server()) as upstream, aiohttp.ClientSession() as http:
        gw = await start_gateway(gateway_config(upstream, issuer, otlp, log))
        shopper = await Agent(http, gw, issuer.mint(SHOPPER, aud=gw.mcp, tenant="acme")).start()
        untrusted = await Agent(http, gw, issuer.mint("untrusted-agent", aud=gw.mcp, tenant="acme")).start()
        # Before payments' tools are known (the gateway lists them to learn there is no such tool), and after.
        unlisted = await shopper.rpc("tools/call", {"name": "payments__unlisted", "arguments": {}})
        assert "result" in await shopper.rpc("tools/list", {})
        missing = await shopper.rpc("tools/call", {"name": "payments__nosuch", "arguments": {"a": 1}})
        no_upstream = await shopper.rpc("tools/call", {"name": "ghost__tool", "arguments": {}})
        no_prompt = await shopper.rpc("prompts/get", {"name": "ghost__prompt"})
        # A prompt payments does not list (its list read on demand, after the decision): as a denied one reads.
        unlisted_prompt = await shopper.rpc("prompts/get", {"name": "payments__nosuch_prompt"})
        no_resource = await shopper.rpc("resources/read", {"uri": "customs://ghost/secret://x"})
        denied = await untrusted.rpc("tools/call", {"name": "payments__balance", "arguments": {"account": "a"}})
        allowed = await shopper.rpc("tools/call", {"name": "payments__balance", "arguments": {"account": "a"}})
        prometheus = gw.gateway.parts.observability.metrics.prometheus_text().decode()
        written = await records(gw, log)

    # On the wire nothing changed: a missing tool and a denied one read the same.
    assert error_of(missing) == (-32602, "Unknown tool: payments__nosuch", {"reason": "unknown_tool"})
    assert error_of(unlisted) == (-32602, "Unknown tool: payments__unlisted", {"reason": "unknown_tool"})
    assert error_of(denied) == (-32602, "Unknown tool: payments__balance", {"reason": "unknown_tool"})
    assert error_of(no_upstream)[2] == {"reason": "unknown_tool"}
    assert error_of(no_prompt)[2] == {"reason": "unknown_prompt"}
    assert error_of(no_resource)[2] == {"reason": "unknown_resource"}
    assert error_of(unlisted_prompt) == (-32602, "Unknown prompt: payments__nosuch_prompt",
                                         {"reason": "unknown_prompt"})
    assert "result" in allowed

    decisions = {(r["method"], r["tool"]): r for r in written if r["type"] == "decision"}
    (session_task,) = {r["task_id"] for r in written if r["type"] == "decision" and r["tool"] == "balance"
                       and r["principal"] == SHOPPER}
    expected = {("tools/call", "unlisted"): ("payments", "unknown_tool"),
                ("tools/call", "nosuch"): ("payments", "unknown_tool"),
                ("tools/call", "ghost__tool"): (None, "unknown_tool"),
                ("prompts/get", "ghost__prompt"): (None, "unknown_prompt"),
                ("prompts/get", "nosuch_prompt"): ("payments", "unknown_prompt"),
                ("resources/read", "customs://ghost/secret://x"): (None, "unknown_resource")}
    for key, (upstream_name, reason) in expected.items():
        record = decisions[key]
        assert (record["decision"], record["not_found"], record["outcome"], record["reason"]) == (
            "deny", True, "error", reason), record
        assert (record["upstream"], record["principal"], record["tenant"]) == (upstream_name, SHOPPER, "acme")
        assert record["policy_ids"] == [] and record["policy_version"] is None and "authz_input" not in record
        assert record["session_id"] == shopper.headers["Mcp-Session-Id"]
        # The session's task, as every other call of the session names it (a task's trail has its probes too).
        assert record["task_id"] == session_task is not None, record
        server = await otlp.wait_for_span(
            lambda s, r=record: s.kind == "SERVER" and s.attributes.get("customs.decision_id") == r["decision_id"])
        assert (server.trace_id, server.span_id) == (record["trace_id"], record["span_id"])
        # The span says what the record says: a denial (Jaeger's customs.decision=deny finds probes too), of nothing.
        assert (server.attributes.get("customs.decision"), server.attributes.get("customs.policy_ids"),
                server.attributes.get("customs.not_found")) == ("deny", (), True), server.attributes
        assert "customs.authz.eval_us" not in server.attributes and "customs.policy_version" not in server.attributes
    assert decisions[("tools/call", "nosuch")]["args_digest"].startswith("sha256:")

    # A policy's denial stays one: decided by a policy, no `not_found`; the allowed call is untouched.
    refused = next(r for r in written if r["type"] == "decision" and r["principal"] == "untrusted-agent")
    assert refused["decision"] == "deny" and refused["policy_ids"] == ["untrusted-agents"]
    assert refused["reason"] == "unknown_tool" and "not_found" not in refused
    server = await otlp.wait_for_span(lambda s: s.attributes.get("customs.decision_id") == refused["decision_id"])
    assert server.attributes["customs.decision"] == "deny" and "customs.not_found" not in server.attributes
    ok = next(r for r in written if r["type"] == "decision" and r["principal"] == SHOPPER and r["tool"] == "balance")
    assert ok["decision"] == "allow" and "not_found" not in ok

    # Counted as denials, under no tool name (names an agent makes up must not become label values).
    calls = [line for line in prometheus.splitlines() if line.startswith("customs_calls_total{")]
    assert not [line for line in calls if any(name in line for name in ("unlisted", "nosuch", "ghost"))], calls
    probes = [line for line in calls if 'gen_ai_tool_name=""' in line and 'customs_decision="deny"' in line]
    assert sum(float(line.rsplit(" ", 1)[1]) for line in probes if 'customs_outcome="unknown_tool"' in line) == 3, calls
    assert any('customs_outcome="unknown_prompt"' in line for line in probes), calls
    assert any('customs_outcome="unknown_resource"' in line for line in probes), calls


def approval_records(written: list[dict[str, Any]], approval_id: str) -> dict[str, dict[str, Any]]:
    return {r["transition"]: r for r in written if r["type"] == "approval" and r["approval_id"] == approval_id}


async def test_approval_records_carry_the_held_calls_trace(store: Any, otlp: OtlpReceiver,
                                                          start_gateway: StartGateway, tmp_path: Path) -> None:
    # `store` first: its redis-server must outlive the gateway (fixtures are torn down in reverse order).
    issuer, log = TestIssuer(tmp_path), tmp_path / "decisions.jsonl"
    async with run_http_server(payments_server()) as upstream:
        gw = await start_gateway(gateway_config(upstream, issuer, otlp, log, store, wait_s=60))
        alice = issuer.mint("alice", aud=gw.mcp, groups=["approvers", "finance"])
        token = issuer.mint(SHOPPER, aud=gw.mcp, tenant="acme")

        async def pay() -> Any:
            async with sdk_client(gw.mcp, token) as client:
                return await client.call_tool("payments__pay", {"account": "acme-9", "amount": 12})

        held = asyncio.create_task(pay())
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {alice}"}) as http:
            approval_id = await first_pending(gw, alice)
            async with http.post(f"{gw.url}/api/approvals/{approval_id}/approve", json={"comment": "ok"}) as resp:
                assert resp.status == 200
        result = await asyncio.wait_for(held, 20)
        written = await records(gw, log)
    assert not result.is_error
    call = next(r for r in written if r["type"] == "decision")
    server = await otlp.wait_for_span(lambda s: s.kind == "SERVER" and s.attributes.get("customs.approval.id")
                                      == approval_id)
    # The released call's record: its approval, approved by alice, in the held call's own trace.
    assert (call["approval"]["id"], call["approval"]["outcome"]) == (approval_id, "approved")
    assert call["approval"]["decided_by"] == ["alice"] and call["outcome"] == "ok"
    assert call["trace_id"] == server.trace_id
    changes = approval_records(written, approval_id)
    assert set(changes) == {"created", "approved", "executed"}, changes
    hold_span = changes["created"]["span_id"]
    assert any(s.span_id == hold_span and s.name == "customs.approval" for s in otlp.children(server))
    for transition, record in changes.items():
        assert (record["trace_id"], record["span_id"]) == (server.trace_id, hold_span), transition
    assert changes["approved"]["actor"] == "alice" and changes["approved"]["decided_by"] == ["alice"]


async def test_an_expiry_seen_by_the_approvers_api_carries_the_held_calls_trace(
        store: Any, otlp: OtlpReceiver, start_gateway: StartGateway, tmp_path: Path) -> None:
    issuer, log = TestIssuer(tmp_path), tmp_path / "decisions.jsonl"
    async with run_http_server(payments_server()) as upstream, aiohttp.ClientSession() as http:
        gw = await start_gateway(gateway_config(upstream, issuer, otlp, log, store, wait_s=0, ttl_s=1))
        shopper = await Agent(http, gw, issuer.mint(SHOPPER, aud=gw.mcp, tenant="acme")).start()
        answer = await shopper.rpc("tools/call", {"name": "payments__pay",
                                                  "arguments": {"account": "acme-9", "amount": 13}})
        assert answer["error"]["data"]["reason"] == "approval_pending", answer
        approval_id = answer["error"]["data"]["approval_id"]
        alice = {"Authorization": f"Bearer {issuer.mint('alice', aud=gw.mcp, groups=['approvers', 'finance'])}"}
        deadline = asyncio.get_running_loop().time() + 15
        while True:  # the approvers' API finds the item due and expires it (outside any call's span)
            async with http.get(f"{gw.url}/api/approvals/{approval_id}", headers=alice) as resp:
                if (await resp.json())["state"] == "expired":
                    break
            assert asyncio.get_running_loop().time() < deadline, "the item never expired"
            await asyncio.sleep(0.1)  # polling for the item's time to pass, bounded by the deadline
        written = await records(gw, log)
    call = next(r for r in written if r["type"] == "decision")
    assert call["approval"]["id"] == approval_id and call["trace_id"] is not None
    changes = approval_records(written, approval_id)
    assert set(changes) == {"created", "expired"}, changes
    assert changes["expired"]["trace_id"] == changes["created"]["trace_id"] == call["trace_id"]
    assert changes["expired"]["span_id"] == changes["created"]["span_id"] is not None
