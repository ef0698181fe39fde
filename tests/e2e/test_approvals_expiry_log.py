"""An unattended pending call expires on time with the memory store: the `expired` change reaches the decision log
without anyone looking at the approvals API or page."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.demo.servers import payments_server
from tests.support.servers import run_http_server
from tests.support.tokens import TestIssuer

pytestmark = pytest.mark.asyncio
REPO = Path(__file__).resolve().parents[2]
JSON_ONLY = {"Content-Type": "application/json", "Accept": "application/json"}


def _transitions(log: Path, approval_id: str) -> list[str]:
    if not log.exists():
        return []
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return [r["transition"] for r in records if r.get("type") == "approval" and r.get("approval_id") == approval_id]


async def test_unattended_item_expires_into_the_decision_log(start_gateway: Any, tmp_path: Path) -> None:
    issuer = TestIssuer(tmp_path)
    log = tmp_path / "decisions.jsonl"
    async with run_http_server(payments_server()) as url, aiohttp.ClientSession() as http:
        gw = await start_gateway({
            "upstreams": [{"name": "payments", "url": url}],
            "identity": {"mode": "jwt", "issuers": [issuer.config()]},
            "policies": {"dir": str(REPO / "policies")},
            "approvals": {"ttl_s": 1},
            "decision_log": {"path": str(log)},
        })
        headers = {**JSON_ONLY, "Authorization": f"Bearer {issuer.mint('agent-7', aud=gw.mcp, tenant='acme')}"}
        init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
        async with http.post(gw.mcp, json=init, headers=headers) as resp:
            headers["Mcp-Session-Id"] = resp.headers["Mcp-Session-Id"]
        call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                "params": {"name": "payments__pay", "arguments": {"amount": 20000, "account": "A-1"}}}
        async with http.post(gw.mcp, json=call, headers=headers) as resp:
            body = await resp.json()
        assert body["error"]["data"]["reason"] == "approval_pending", body
        approval_id = body["error"]["data"]["approval_id"]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15
        while "expired" not in _transitions(log, approval_id):  # nobody reads the API meanwhile
            assert loop.time() < deadline, _transitions(log, approval_id)
            await asyncio.sleep(0.1)
        assert _transitions(log, approval_id) == ["created", "expired"]
