"""Held calls that are never released still say which approval stopped them: spans and decision records.

A call held for a person can end four ways without running: answered `approval_pending` (the client
retries later), denied, expired, or withdrawn. Each leaves the approval's id and outcome on the SERVER
span, on the `customs.approval` span and in the decision record, like a released call does.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from mcp.shared.exceptions import MCPError

from gateway.demo.servers import payments_server
from tests.conftest import REPO, RunningGateway
from tests.support.mcp_client import sdk_client
from tests.support.otlp import OtlpReceiver, ReceivedSpan
from tests.support.servers import run_http_server
from tests.support.tokens import TestIssuer
from tests.telemetry.conftest import first_pending

StartGateway = Callable[[dict[str, Any]], Awaitable[RunningGateway]]
SHOPPER = "spiffe://customs.demo/agent/shopper"


async def held_gateway(start_gateway: StartGateway, issuer: TestIssuer, upstream: str, otlp: OtlpReceiver,
                       log: Path, **approvals: Any) -> RunningGateway:
    return await start_gateway({
        "upstreams": [{"name": "payments", "url": upstream}],
        "identity": {"mode": "jwt", "issuers": [issuer.config()]},
        "policies": {"dir": str(REPO / "policies")},
        "approvals": {"keepalive_s": 0.2, **approvals},
        "decision_log": {"path": str(log)},
        "telemetry": {"traces": {"endpoint": otlp.url}},
    })


async def pay(gw: RunningGateway, issuer: TestIssuer, amount: int) -> MCPError:
    token = issuer.mint(SHOPPER, aud=gw.mcp, tenant="acme")
    async with sdk_client(gw.mcp, token) as client:
        with pytest.raises(MCPError) as caught:
            await client.call_tool("payments__pay", {"account": "acme-9", "amount": amount})
    return caught.value


async def drained(gw: RunningGateway, log: Path) -> dict[str, Any]:
    """The one decision record of `gw`, after its spans and records are flushed."""
    obs = gw.gateway.parts.observability
    await obs.telemetry.flush()
    await obs.log.close()  # drain the decision log (the app's cleanup closes it again, harmlessly)
    records = [json.loads(line) for line in log.read_text().splitlines()]
    decisions = [r for r in records if r["type"] == "decision"]
    assert len(decisions) == 1, decisions
    return decisions[0]


async def spans_of(otlp: OtlpReceiver, approval_id: str) -> tuple[ReceivedSpan, ReceivedSpan]:
    """(SERVER span, customs.approval span) of the call held under `approval_id`."""
    server = await otlp.wait_for_span(
        lambda s: s.kind == "SERVER" and s.attributes.get("customs.approval.id") == approval_id)
    approval = await otlp.wait_for(lambda r: next(
        (s for s in r.children(server) if s.name == "customs.approval"), None))
    return server, approval


def assert_unreleased(record: dict[str, Any], server: ReceivedSpan, approval_span: ReceivedSpan,
                      approval_id: str, outcome: str, reason: str) -> None:
    assert (record["decision"], record["outcome"], record["reason"]) == ("approval_required", "error", reason)
    assert record["approval"]["id"] == approval_id and record["approval"]["outcome"] == outcome
    assert record["approval"]["wait_s"] >= 0
    for span in (server, approval_span):
        assert span.attributes["customs.approval.id"] == approval_id
        assert span.attributes["customs.approval.outcome"] == outcome
        assert span.attributes["error.type"] == reason and span.status == "ERROR"
    assert server.trace_id == record["trace_id"] and server.span_id == record["span_id"]


async def test_a_call_answered_pending_names_its_approval(otlp: OtlpReceiver, start_gateway: StartGateway,
                                                          tmp_path: Path) -> None:
    issuer, log = TestIssuer(tmp_path), tmp_path / "decisions.jsonl"
    async with run_http_server(payments_server()) as upstream:
        gw = await held_gateway(start_gateway, issuer, upstream, otlp, log, wait_s=0)
        error = await pay(gw, issuer, 12)
        record = await drained(gw, log)
    data = error.error.data
    assert isinstance(data, dict) and data["reason"] == "approval_pending"
    server, approval_span = await spans_of(otlp, data["approval_id"])
    assert_unreleased(record, server, approval_span, data["approval_id"], "pending", "approval_pending")
    assert record["approval"]["decided_by"] == []


async def test_a_denied_call_names_its_approval_and_approver(otlp: OtlpReceiver, start_gateway: StartGateway,
                                                             tmp_path: Path) -> None:
    issuer, log = TestIssuer(tmp_path), tmp_path / "decisions.jsonl"
    async with run_http_server(payments_server()) as upstream:
        gw = await held_gateway(start_gateway, issuer, upstream, otlp, log, wait_s=60)
        alice = issuer.mint("alice", aud=gw.mcp, groups=["approvers", "finance"])
        waiting = asyncio.create_task(pay(gw, issuer, 13))
        approval_id = await first_pending(gw, alice)
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {alice}"}) as http:
            async with http.post(f"{gw.url}/api/approvals/{approval_id}/deny", json={"comment": "no"}) as resp:
                assert resp.status == 200
        error = await asyncio.wait_for(waiting, 20)
        record = await drained(gw, log)
    assert isinstance(error.error.data, dict) and error.error.data["reason"] == "approval_denied"
    server, approval_span = await spans_of(otlp, approval_id)
    assert_unreleased(record, server, approval_span, approval_id, "denied", "approval_denied")
    assert record["approval"]["decided_by"] == ["alice"] and record["approval"]["comment"] == "no"
    assert approval_span.attributes["customs.approval.approver"] == "alice"  # one string: a Jaeger tag search


async def test_an_expired_call_names_its_approval(otlp: OtlpReceiver, start_gateway: StartGateway,
                                                  tmp_path: Path) -> None:
    issuer, log = TestIssuer(tmp_path), tmp_path / "decisions.jsonl"
    async with run_http_server(payments_server()) as upstream:
        gw = await held_gateway(start_gateway, issuer, upstream, otlp, log, wait_s=60, ttl_s=1)
        error = await asyncio.wait_for(pay(gw, issuer, 14), 20)
        record = await drained(gw, log)
    data = error.error.data
    assert isinstance(data, dict) and data["reason"] == "approval_expired"
    server, approval_span = await spans_of(otlp, data["approval_id"])
    assert_unreleased(record, server, approval_span, data["approval_id"], "expired", "approval_expired")


async def test_a_withdrawn_call_names_its_approval(otlp: OtlpReceiver, start_gateway: StartGateway,
                                                   tmp_path: Path) -> None:
    issuer, log = TestIssuer(tmp_path), tmp_path / "decisions.jsonl"
    async with run_http_server(payments_server()) as upstream:
        gw = await held_gateway(start_gateway, issuer, upstream, otlp, log, wait_s=60)
        alice = issuer.mint("alice", aud=gw.mcp, groups=["approvers", "finance"])
        waiting = asyncio.create_task(pay(gw, issuer, 15))
        approval_id = await first_pending(gw, alice)
        waiting.cancel()  # the agent goes away while its call is held
        await asyncio.gather(waiting, return_exceptions=True)
        server = await otlp.wait_for_span(
            lambda s: s.kind == "SERVER" and s.attributes.get("customs.approval.id") == approval_id)
        record = await drained(gw, log)
    assert record["approval"]["id"] == approval_id and record["approval"]["outcome"] == "cancelled"
    assert (record["outcome"], record["reason"]) == ("error", "request_cancelled")
    assert server.attributes["customs.approval.outcome"] == "cancelled"


async def test_a_call_withdrawn_by_notifications_cancelled_is_an_error_in_span_and_metric(
        otlp: OtlpReceiver, start_gateway: StartGateway, tmp_path: Path) -> None:
    """notifications/cancelled answers the call request_cancelled: its span and duration metric say so too
    (streamable HTTP used to count it as a success and name it `cancelled`/`CancelledError`)."""
    issuer, log = TestIssuer(tmp_path), tmp_path / "decisions.jsonl"
    async with run_http_server(payments_server()) as upstream:
        gw = await held_gateway(start_gateway, issuer, upstream, otlp, log, wait_s=60)
        alice = issuer.mint("alice", aud=gw.mcp, groups=["approvers", "finance"])
        headers = {"Authorization": f"Bearer {issuer.mint(SHOPPER, aud=gw.mcp, tenant='acme')}",
                   "Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
        async with aiohttp.ClientSession(headers=headers) as http:
            async with http.post(gw.mcp, json={"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                    "protocolVersion": "2025-06-18", "capabilities": {},
                    "clientInfo": {"name": "t", "version": "0"}}}) as resp:
                session = {"Mcp-Session-Id": resp.headers["Mcp-Session-Id"], "MCP-Protocol-Version": "2025-06-18"}
            call = {"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                    "params": {"name": "payments__pay", "arguments": {"account": "acme-9", "amount": 16}}}
            held = asyncio.create_task(http.post(gw.mcp, json=call, headers=session))
            await first_pending(gw, alice)
            async with http.post(gw.mcp, headers=session, json={
                    "jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 7}}) as resp:
                assert resp.status == 202
            async with await asyncio.wait_for(held, 20) as resp:  # held calls answer over SSE (keepalives)
                body = await resp.text()
            answer = json.loads([line for line in body.splitlines() if line.startswith("data:")][-1][5:])
        assert answer["error"]["data"]["reason"] == "request_cancelled"
        prometheus = gw.gateway.parts.observability.metrics.prometheus_text().decode()
        await drained(gw, log)
    server = await otlp.wait_for_span(lambda s: s.kind == "SERVER" and s.name == "tools/call payments__pay")
    assert server.status == "ERROR" and server.attributes["error.type"] == "request_cancelled"
    assert server.status_message == "Request cancelled by the client"
    failed = [line for line in prometheus.splitlines() if line.startswith("mcp_server_operation_duration_seconds_count")
              and 'mcp_method_name="tools/call"' in line]
    assert len(failed) == 1 and 'error_type="request_cancelled"' in failed[0], failed
