"""Through the real gateway: a held call whose agent token expired is refused once approved, and its approval is
handed back, so the agent's retry with a refreshed token runs on it (once) instead of asking the approvers anew."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

import pytest
from mcp.shared.exceptions import MCPError

from gateway.demo.servers import payments_server
from tests.e2e.test_approvals_gateway import REPO, SHOPPER, Env
from tests.support.mcp_client import sdk_client
from tests.support.servers import run_http_server
from tests.support.tokens import TestIssuer

pytestmark = pytest.mark.asyncio
PAY = {"account": "acme-9", "amount": 70}


async def test_the_refreshed_retry_runs_on_the_handed_back_approval(start_gateway: Any, tmp_path: Path) -> None:
    issuer = TestIssuer(tmp_path)
    async with run_http_server(payments_server()) as url:
        gw = await start_gateway({
            "upstreams": [{"name": "payments", "url": url, "credentials": {"mode": "minted"}}],
            # A token past its `exp` within the skew is accepted, but no credential may outlive it.
            "identity": {"mode": "jwt", "clock_skew_s": 120, "issuers": [issuer.config()]},
            "policies": {"dir": str(REPO / "policies")}, "signing": {"key_dir": str(tmp_path / "keys")},
            "approvals": {"wait_s": 60, "keepalive_s": 0.2}})
        env = Env(gw, issuer)

        async def pay(token: str) -> Any:
            async with sdk_client(gw.mcp, token) as client:
                try:
                    return await client.call_tool("payments__pay", PAY)
                except MCPError as exc:
                    return exc

        # Short-lived: it expires while the call is held (the session's set-up needs a credential, so an already
        # expired token would be refused before the call is ever held). A loaded machine can take longer than
        # the first margin to set the session up and hold the call: then the call is refused as expired before
        # it is held, and it is tried again with a longer-lived token (only then: the usual run waits ~4 s).
        for margin in (4, 20, 60):
            exp = int(time.time()) + margin
            held = asyncio.create_task(pay(issuer.mint(SHOPPER, aud=gw.mcp, tenant="acme", exp=exp)))
            item = await _held(env, held)
            if item is not None:
                break
        else:
            raise AssertionError("the call was never held before its token expired")
        await asyncio.sleep(max(0.0, exp - time.time()) + 0.1)  # the token's own wall-clock expiry, not a sync
        assert not held.done()
        status, _ = await env.api("POST", f"/api/approvals/{item['id']}/approve", env.alice(), {"comment": "ok"})
        assert status == 200
        refused = await asyncio.wait_for(held, 20)
        assert isinstance(refused, MCPError), refused
        data = refused.error.data
        assert isinstance(data, dict) and data["reason"] == "credential_unavailable" and data["agent_token_expired"]
        _, handed_back = await env.api("GET", f"/api/approvals/{item['id']}", env.alice())
        assert handed_back["state"] == "approved" and handed_back["executed"] is False
        assert handed_back["not_executed"] is None

        result = await asyncio.wait_for(pay(env.agent()), 20)  # the refreshed token, not held again
        assert not isinstance(result, MCPError) and result.content[0].text == "paid 70.0 to acme-9"
        _, ran = await env.api("GET", f"/api/approvals/{item['id']}", env.alice())
        assert ran["executed"] is True
        status, body = await env.api("GET", "/api/approvals?state=pending", env.alice())
        assert status == 200 and body["items"] == []
        assert [p["amount"] for p in await env.executed()] == [70.0]


async def _held(env: Env, held: asyncio.Task[Any]) -> dict[str, Any] | None:
    """The pending item the call `held` makes, or None when its token expired before it was held (the call was
    refused as the agent's expired token; anything else it ends with first is a failure)."""
    waiting = asyncio.create_task(env.pending(timeout=120))
    done, _ = await asyncio.wait({held, waiting}, return_when=asyncio.FIRST_COMPLETED)
    if waiting in done:
        return waiting.result()
    waiting.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await waiting
    refused = held.result()
    assert isinstance(refused, MCPError), refused
    data = refused.error.data
    assert isinstance(data, dict) and data.get("agent_token_expired") is True, data  # too slow, not broken
    return None
