"""An approved call whose upstream cannot be reached when it is released never ran: its approval is handed back.

The agent's payment is held, the payments server goes away, a person approves and the agent retries. The
gateway cannot connect to the upstream (connection refused: nothing was sent), so the agent gets
`upstream_unavailable`; the item is `approved` and unused again (`executed: false`, a `handed_back` record with
`detail: "upstream_unavailable"`). So it is when the server is back but does not know the gateway's session (404:
it restarted, and ran nothing), and the agent's identical retry on a new session runs once, with no second
approval. It used to read `executed: true` with an `executed` record (an auditor was told a payment ran
that never left the gateway), and the approval was used up: the person had to approve the same payment again."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.demo.servers import payments_server
from tests.conftest import bound_socket
from tests.support.contract import Agent, Api
from tests.support.servers import run_http_server
from tests.support.tokens import TestIssuer

pytestmark = pytest.mark.asyncio
REPO = Path(__file__).resolve().parents[2]
SHOPPER = "spiffe://customs.demo/agent/shopper"
PAY = {"account": "acme-4", "amount": 40}


async def test_a_released_call_whose_upstream_refuses_the_connection_keeps_its_approval(
        start_gateway: Any, tmp_path: Path) -> None:
    issuer = TestIssuer(tmp_path)
    decisions = tmp_path / "decisions.jsonl"
    async with run_http_server(payments_server()) as url:
        gw = await start_gateway({
            "upstreams": [{"name": "payments", "url": url}],
            "identity": {"mode": "jwt", "issuers": [issuer.config()]},
            "policies": {"dir": str(REPO / "policies")},
            "decision_log": {"path": str(decisions)},
        })
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        http = aiohttp.ClientSession()
        api = Api(http, gw.url, issuer)
        alice = api.person("alice", "approvers", "finance")
        agent = await Agent(http, gw.mcp, issuer.mint(SHOPPER, aud=gw.mcp, tenant="acme")).open()
        _, held, _ = await agent.call("payments__pay", PAY)
        approval_id = held["error"]["data"]["approval_id"]
    try:  # the payments server is gone: its port refuses connections
        status, _ = await api.request("POST", f"/api/approvals/{approval_id}/approve", alice, {"comment": "ok"})
        assert status == 200
        _, released, _ = await agent.call("payments__pay", PAY)
        assert released["error"]["data"]["reason"] == "upstream_unavailable", released
        item = await api.approval(approval_id, alice)
        assert (item["state"], item["executed"], item["not_executed"]) == ("approved", False, None), item

        again = payments_server()
        async with run_http_server(again, sock=bound_socket(port)):  # back, at the address the config names
            _, stale, _ = await agent.call("payments__pay", PAY)  # the new server does not know the old session
            assert stale["error"]["data"] == {"reason": "upstream_unavailable", "upstream": "payments",
                                              "session": "expired"}, stale
            _, paid, _ = await agent.call("payments__pay", PAY)  # a new upstream session: runs, on the approval
            assert "result" in paid, paid
            assert paid["result"]["content"][0]["text"] == "paid 40.0 to acme-4", paid
            _, next_one, _ = await agent.call("payments__pay", PAY)  # one approval, one execution
            assert next_one["error"]["data"]["reason"] == "approval_pending"
            assert next_one["error"]["data"]["approval_id"] != approval_id
        assert (await api.approval(approval_id, alice))["executed"] is True
    finally:
        await http.close()

    def transitions() -> list[tuple[str, Any]]:
        records = [json.loads(line) for line in decisions.read_text().splitlines() if line.strip()]
        return [(r["transition"], r.get("detail")) for r in records
                if r.get("type") == "approval" and r.get("approval_id") == approval_id]

    async with asyncio.timeout(15):
        while transitions()[-1][0] != "executed":  # the log is written in the background
            await asyncio.sleep(0.05)
    assert transitions() == [("created", None), ("approved", None), ("handed_back", "upstream_unavailable"),
                             ("handed_back", "upstream_unavailable"), ("executed", None)], transitions()
