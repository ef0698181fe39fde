"""A call released by an approval another request asked for links to that request's wait (issue 6: where the
parent context is missing, a span link rather than a wrong parent).

An agent told `approval_pending` retries the identical call once a person approved it; the retry is a trace of
its own (it carries no context of the held call's). Its `customs.approval` span (outcome `reused`) links to the
`customs.approval` span of the call that was held, whose trace holds the wait, so Jaeger leads from one to the
other; the held call's own span has no link.
"""

from __future__ import annotations

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
from tests.support.redis import RedisServer, redis_factory, redis_server  # noqa: F401  (fixtures)
from tests.support.servers import run_http_server
from tests.support.tokens import TestIssuer

StartGateway = Callable[[dict[str, Any]], Awaitable[RunningGateway]]
ARGS = {"account": "acme-7", "amount": 5}


def approval_span(otlp: OtlpReceiver, outcome: str) -> ReceivedSpan:
    (span,) = [s for s in otlp.named("customs.approval") if s.attributes["customs.approval.outcome"] == outcome]
    return span


async def test_a_retry_released_by_an_approval_links_to_the_held_calls_wait(
        otlp: OtlpReceiver, start_gateway: StartGateway, tmp_path: Path) -> None:
    issuer = TestIssuer(tmp_path)
    async with run_http_server(payments_server()) as upstream:
        gw = await start_gateway({
            "upstreams": [{"name": "payments", "url": upstream}],
            "identity": {"mode": "jwt", "issuers": [issuer.config()]},
            "policies": {"dir": str(REPO / "policies")},
            "approvals": {"wait_s": 0},  # answered approval_pending at once: the agent retries
            "telemetry": {"traces": {"endpoint": otlp.url}},
        })
        alice = issuer.mint("alice", aud=gw.mcp, groups=["approvers", "finance"])
        async with sdk_client(gw.mcp, issuer.mint("shopper", aud=gw.mcp, tenant="acme")) as client:
            with pytest.raises(MCPError) as held:
                await client.call_tool("payments__pay", ARGS)
            assert isinstance(held.value.error.data, dict)
            approval_id = held.value.error.data["approval_id"]
            async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {alice}"}) as http:
                async with http.post(f"{gw.url}/api/approvals/{approval_id}/approve", json={}) as resp:
                    assert resp.status == 200
            result = await client.call_tool("payments__pay", ARGS)
            assert not result.is_error
        assert await gw.gateway.parts.observability.telemetry.flush()
    await otlp.wait_for(lambda r: len(r.named("customs.approval")) == 2 or None)
    first, retry = approval_span(otlp, "pending"), approval_span(otlp, "reused")
    assert first.trace_id != retry.trace_id and first.links == ()
    (link,) = retry.links
    assert (link.trace_id, link.span_id) == (first.trace_id, first.span_id)
    assert link.attributes == {"customs.link": "held_call"}
    assert retry.attributes["customs.approval.id"] == first.attributes["customs.approval.id"] == approval_id


async def test_a_retry_on_another_replica_links_to_the_held_calls_wait(
        otlp: OtlpReceiver, start_gateway: StartGateway, tmp_path: Path,
        redis_server: RedisServer) -> None:  # noqa: F811  (the fixture imported above)
    """The held call's trace and span ids travel on the approval item (docs/tracing.md), so the link holds when the
    agent's retry reaches a replica other than the one that held the call (one Redis store behind both)."""
    issuer = TestIssuer(tmp_path)
    async with run_http_server(payments_server()) as upstream:
        config = {"listen": {"public_url": "http://customs.test"},  # one audience, as behind a balancer
                  "upstreams": [{"name": "payments", "url": upstream}],
                  "identity": {"mode": "jwt", "issuers": [issuer.config()]},
                  "policies": {"dir": str(REPO / "policies")},
                  "approvals": {"wait_s": 0}, "store": {"redis": {"url": redis_server.url}},
                  "telemetry": {"traces": {"endpoint": otlp.url}}}
        holder, other = await start_gateway(config), await start_gateway(config)
        audience = "http://customs.test/mcp"
        alice = issuer.mint("alice", aud=audience, groups=["approvers", "finance"])
        async with sdk_client(holder.mcp, issuer.mint("shopper", aud=audience, tenant="acme")) as client:
            with pytest.raises(MCPError) as held:
                await client.call_tool("payments__pay", ARGS)
        assert isinstance(held.value.error.data, dict)
        approval_id = held.value.error.data["approval_id"]
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {alice}"}) as http:
            async with http.post(f"{holder.url}/api/approvals/{approval_id}/approve", json={}) as resp:
                assert resp.status == 200
        async with sdk_client(other.mcp, issuer.mint("shopper", aud=audience, tenant="acme")) as client:
            assert not (await client.call_tool("payments__pay", ARGS)).is_error
        for gateway in (holder, other):
            assert await gateway.gateway.parts.observability.telemetry.flush()
    await otlp.wait_for(lambda r: len(r.named("customs.approval")) == 2 or None)
    first, retry = approval_span(otlp, "pending"), approval_span(otlp, "reused")
    assert first.trace_id != retry.trace_id
    assert [(link.trace_id, link.span_id, link.attributes) for link in retry.links] == [
        (first.trace_id, first.span_id, {"customs.link": "held_call"})]
