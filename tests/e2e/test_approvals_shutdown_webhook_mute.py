"""SIGTERM exits within `listen.drain_timeout_s` when an approvals webhook receiver never answers.

A call held for approval is notified to the configured webhooks in the background; at shutdown the deliveries still
queued or being retried got up to 5 s after the drain, whatever the drain deadline, so a receiver that took the
request and never answered held a 1.5 s drain's exit 5 s. They now share what is left of the deadline, as shutdown's
Redis work, upstream session closes and token revocations do, and the notifications not delivered are logged with
their approval ids. A real gateway process (memory store), a real MCP upstream and a real aiohttp receiver.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.demo.servers import payments_server
from tests.e2e.test_approvals_shutdown import AUDIENCE, POLICIES, SHOPPER, Agent, first_progress, last_message
from tests.support.contract import write_policies
from tests.support.processes import seconds_to_exit_after_sigterm
from tests.support.servers import run_aiohttp, run_http_server
from tests.support.tokens import TestIssuer

pytestmark = pytest.mark.asyncio
DRAIN_S = 1.5


class MuteReceiver:
    """Reads every delivery's body and never answers it (until released, to clean up)."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.got = asyncio.Event()
        self.release = asyncio.Event()

    async def hook(self, request: web.Request) -> web.StreamResponse:
        self.bodies.append(json.loads(await request.read()))
        self.got.set()
        await self.release.wait()
        return web.Response(status=200)


@pytest.fixture
async def mute() -> AsyncIterator[tuple[MuteReceiver, str]]:
    receiver = MuteReceiver()
    app = web.Application()
    app.router.add_post("/hook", receiver.hook)
    async with run_aiohttp(app, shutdown_timeout=0.1) as base:
        try:
            yield receiver, f"{base}/hook"
        finally:
            receiver.release.set()


async def test_sigterm_exits_within_the_deadline_although_the_webhook_receiver_never_answers(
        spawn_gateway: Any, mute: tuple[MuteReceiver, str], tmp_path: Path) -> None:
    receiver, hook_url = mute
    issuer = TestIssuer(tmp_path)
    policies = write_policies(tmp_path / "policies", POLICIES)
    async with run_http_server(payments_server()) as upstream:
        gw = await spawn_gateway({
            "upstreams": [{"name": "payments", "url": upstream}],
            "identity": {"mode": "jwt", "issuers": [issuer.config(audience=AUDIENCE)]},
            "policies": {"dir": str(policies), "watch": False},
            "approvals": {"wait_s": 60, "keepalive_s": 0.5, "webhooks": [{"url": hook_url}]},
            "listen": {"drain_timeout_s": DRAIN_S}})
        async with aiohttp.ClientSession() as http:
            agent = Agent(http, gw.mcp, issuer.mint(SHOPPER, aud=AUDIENCE, tenant="acme"))
            await agent.start(wait=True)
            async with agent.pay({"account": "acme-1", "amount": 5}) as held:
                await asyncio.wait_for(first_progress(held), 10)
                await asyncio.wait_for(receiver.got.wait(), 10)  # its notification is being delivered, unanswered
                exited_after = await seconds_to_exit_after_sigterm(gw.proc)
                answer = last_message(await asyncio.wait_for(held.text(), 5))
    assert gw.proc.returncode == 0, gw.log()
    assert exited_after < DRAIN_S + 0.5, f"exited {exited_after:.1f} s after SIGTERM, drain_timeout_s is {DRAIN_S}"
    approval_id = receiver.bodies[0]["approval"]["id"]
    assert answer["error"]["data"] == {**answer["error"]["data"], "reason": "approval_pending",
                                       "approval_id": approval_id}, answer
    port = hook_url.split(":")[2].split("/")[0]
    line = (f"approvals.webhooks[0] (http://127.0.0.1:{port}/…): 1 notification(s) not delivered at shutdown: "
            f"{approval_id}")
    assert line in gw.log(), gw.log()
