"""`customs.approval.wait.duration`: how long each approval waited for a person, however long that was.

A held call waits at most `approvals.wait_s`, then answers `approval_pending` and the agent retries later: people
usually take longer than that wait. The histogram records each approval once, when it is decided (or expires, or
ends otherwise), from the moment the call was held, on the replica where that happened: not when a call that
waited ends, which left out every decision made after the call stopped waiting.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from mcp.shared.exceptions import MCPError

from gateway.demo.servers import payments_server
from tests.conftest import REPO, RunningGateway
from tests.support.mcp_client import sdk_client
from tests.support.redis import RedisServer, redis_factory, redis_server  # noqa: F401  (fixtures)
from tests.support.servers import run_http_server
from tests.support.tokens import TestIssuer
from tests.telemetry.conftest import first_pending

StartGateway = Callable[[dict[str, Any]], Awaitable[RunningGateway]]
SHOPPER = "spiffe://customs.demo/agent/shopper"


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> Any:
    if request.param == "memory":
        return "memory"
    server: RedisServer = request.getfixturevalue("redis_server")
    return {"redis": {"url": server.url}}


def waits(prometheus: str) -> dict[str, tuple[float, float]]:
    """outcome -> (count, sum) of customs.approval.wait.duration on /metrics."""
    found: dict[str, list[float]] = {}
    for kind, outcome, value in re.findall(
            r'^customs_approval_wait_duration_seconds_(count|sum)\{customs_approval_outcome="(\w+)"[^}]*\} (\S+)$',
            prometheus, re.MULTILINE):
        found.setdefault(outcome, [0.0, 0.0])[0 if kind == "count" else 1] = float(value)
    return {outcome: (count, total) for outcome, (count, total) in found.items()}


def metered_config(issuer: TestIssuer, upstream: str, approvals: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """The payments upstream behind JWT identity and the shipped policies, Prometheus metrics on."""
    return {"upstreams": [{"name": "payments", "url": upstream}],
            "identity": {"mode": "jwt", "issuers": [issuer.config()]}, "policies": {"dir": str(REPO / "policies")},
            "approvals": approvals, "telemetry": {"metrics": {"prometheus": True}}, **extra}


async def test_every_approval_is_timed_once_when_it_is_decided(
        start_gateway: StartGateway, tmp_path: Any, store: Any) -> None:
    issuer = TestIssuer(tmp_path)
    async with run_http_server(payments_server()) as upstream, aiohttp.ClientSession() as http:
        gw = await start_gateway(metered_config(issuer, upstream, {"keepalive_s": 0.2, "wait_s": 1.0}, store=store))
        approver = {"Authorization": f"Bearer {issuer.mint('alice', aud=gw.mcp, groups=['approvers', 'finance'])}"}
        token = issuer.mint(SHOPPER, aud=gw.mcp, tenant="acme")

        async def decide(approval_id: str, verb: str) -> None:
            async with http.post(f"{gw.url}/api/approvals/{approval_id}/{verb}", json={}, headers=approver) as resp:
                assert resp.status == 200, await resp.text()

        async def metrics() -> dict[str, tuple[float, float]]:
            async with http.get(f"{gw.url}/metrics") as resp:
                return waits(await resp.text())

        async with sdk_client(gw.mcp, token) as client:
            # Decided after the call stopped waiting (the usual case): approved, then another denied.
            for amount, verb in ((5, "approve"), (6, "deny")):
                with pytest.raises(MCPError) as caught:
                    await client.call_tool("payments__pay", {"account": "acme-9", "amount": amount})
                assert caught.value.error.data["reason"] == "approval_pending"
                await decide(caught.value.error.data["approval_id"], verb)
            assert (await metrics()).keys() == {"approved", "denied"}
            count, total = (await metrics())["approved"]
            assert count == 1 and total >= 1.0  # held at least the call's wait before anyone decided
            assert (await metrics())["denied"][0] == 1
            # The agent's retry runs the approved item: no second wait for it.
            assert not (await client.call_tool("payments__pay", {"account": "acme-9", "amount": 5})).is_error
            assert (await metrics())["approved"][0] == 1

        # Decided while the call waits: still once.
        async with sdk_client(gw.mcp, token) as client:
            call = asyncio.create_task(client.call_tool("payments__pay", {"account": "acme-9", "amount": 7}))
            approval_id = await first_pending(gw, approver["Authorization"].split()[1])
            await decide(approval_id, "approve")
            try:
                await call
            except MCPError as exc:
                assert exc.error.data["reason"] == "approval_pending"  # if the wait ran out first: still once
        assert (await metrics())["approved"][0] == 2


async def test_an_expiry_found_by_the_sweep_is_timed_to_the_approvals_expiry(
        start_gateway: StartGateway, tmp_path: Any) -> None:
    # The memory store's sweep marks a due item expired every 5 s: its wait is its ttl, not until the sweep came.
    issuer = TestIssuer(tmp_path)
    async with run_http_server(payments_server()) as upstream, aiohttp.ClientSession() as http:
        gw = await start_gateway(metered_config(issuer, upstream, {"keepalive_s": 0.1, "wait_s": 0.2, "ttl_s": 1}))
        async with sdk_client(gw.mcp, issuer.mint(SHOPPER, aud=gw.mcp, tenant="acme")) as client:
            with pytest.raises(MCPError) as caught:
                await client.call_tool("payments__pay", {"account": "acme-9", "amount": 5})
        assert caught.value.error.data["reason"] == "approval_pending"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15
        while True:  # nobody reads the item: the sweep finds it due
            async with http.get(f"{gw.url}/metrics") as resp:
                found = waits(await resp.text())
            if "expired" in found:
                break
            assert loop.time() < deadline, found
            await asyncio.sleep(0.1)  # polling /metrics for the sweep, bounded by the deadline
    count, total = found["expired"]
    assert count == 1 and 0.9 <= total <= 1.1, total
