"""An approver's comment goes through the gateway's secret redaction before it is kept (a real gateway).

The comment is returned to the agent (`data.comment`), shown on the page, the API and the CLI, and written to the
decision log: an approver pasting a token or the upstream's static key into it ("use ghp_… instead") put that
secret in all of them as typed, although nothing the gateway writes may hold one (issue 5, secret hygiene)."""

from __future__ import annotations

import json
import secrets
import string
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.demo.servers import inventory_server, payments_server
from tests.approvals.conftest import eventually
from tests.support.servers import run_http_server
from tests.support.tokens import TestIssuer

REPO = Path(__file__).resolve().parents[2]
PUBLIC = "http://customs.test"
HEADERS = {"Accept": "application/json", "Content-Type": "application/json", "MCP-Protocol-Version": "2025-11-25"}


async def _session(http: aiohttp.ClientSession, url: str, token: str) -> dict[str, str]:
    """Headers of a new MCP session of `token` at the gateway's /mcp."""
    headers = {**HEADERS, "Authorization": f"Bearer {token}"}
    init = {"jsonrpc": "2.0", "id": 0, "method": "initialize",
            "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                       "clientInfo": {"name": "t", "version": "1"}}}
    async with http.post(f"{url}/mcp", json=init, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        headers["Mcp-Session-Id"] = resp.headers["Mcp-Session-Id"]
    async with http.post(f"{url}/mcp", json={"jsonrpc": "2.0", "method": "notifications/initialized"},
                         headers=headers) as resp:
        assert resp.status == 202
    return headers


async def _pay(http: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> dict[str, Any]:
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "payments__pay", "arguments": {"account": "A-7", "amount": 250}}}
    async with http.post(f"{url}/mcp", json=call, headers=headers) as resp:
        data: dict[str, Any] = (await resp.json())["error"]["data"]
        return data


async def test_a_secret_in_an_approvers_comment_reaches_neither_agent_api_nor_decision_log(
        start_gateway: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    static_key = "inv-static-" + secrets.token_urlsafe(24)  # no pattern knows it: redacted as a value held
    github = "ghp_" + "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(36))
    monkeypatch.setenv("INV_KEY", static_key)
    issuer = TestIssuer(tmp_path)
    decisions = tmp_path / "decisions.jsonl"
    async with run_http_server(payments_server()) as pay, run_http_server(inventory_server()) as inv:
        gw = await start_gateway({
            "listen": {"public_url": PUBLIC},
            "upstreams": [{"name": "payments", "url": pay},
                          {"name": "inventory", "url": inv,
                           "credentials": {"mode": "static", "header": "X-Api-Key", "value_env": "INV_KEY"}}],
            "identity": {"mode": "jwt", "issuers": [issuer.config(audience=f"{PUBLIC}/mcp")]},
            "policies": {"dir": str(REPO / "policies"), "watch": False},
            "decision_log": {"path": str(decisions)}})
        agent = issuer.mint("spiffe://acme.test/agent/shopper", aud=f"{PUBLIC}/mcp", tenant="acme")
        alice = issuer.mint("alice", aud=f"{PUBLIC}/mcp", groups=["approvers", "finance"])
        comment = f"no: use {github} with key {static_key} instead"
        async with aiohttp.ClientSession(headers={"Host": "customs.test"}) as http:
            headers = await _session(http, gw.url, agent)
            held = await _pay(http, gw.url, headers)
            assert held["reason"] == "approval_pending", held
            async with http.post(f"{gw.url}/api/approvals/{held['approval_id']}/deny", json={"comment": comment},
                                 headers={"Authorization": f"Bearer {alice}"}) as resp:
                assert resp.status == 200, await resp.text()
                decided = await resp.json()
            denied = await _pay(http, gw.url, headers)  # the agent's retry is told the denial and its comment

        async def logged() -> bool:
            return decisions.exists() and '"transition":"denied"' in decisions.read_text()

        await eventually(logged)
    assert denied["reason"] == "approval_denied", denied
    said = {"API": decided["comment"], "agent": denied["comment"], "votes": decided["votes"][0]["comment"]}
    for where, text in said.items():
        assert text == "no: use [REDACTED] with key [REDACTED] instead", (where, text)
    log = decisions.read_text()
    assert github not in log and static_key not in log, log
    records = [json.loads(line) for line in log.splitlines()]
    assert [r["comment"] for r in records if r.get("transition") == "denied"] == [said["API"]]
