"""Requests refused at the HTTP edge (bad token, unknown session, bad body, foreign Host) make no call, so no
span or decision record shows them: `customs.requests.refused` counts them by reason for SREs."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import aiohttp

from tests.lifecycle.conftest import Upstreams, gateway_config, token
from tests.support.tokens import TestIssuer

INIT = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


def refused(metrics_text: str) -> dict[tuple[str, str], float]:
    found: dict[tuple[str, str], float] = {}
    for line in metrics_text.splitlines():
        if line.startswith("customs_requests_refused_total{"):
            reason = re.search(r'error_type="([^"]+)"', line)
            status = re.search(r'http_response_status_code="([^"]+)"', line)
            assert reason and status, line
            found[(reason.group(1), status.group(1))] = float(line.rsplit(" ", 1)[1])
    return found


async def test_edge_refusals_are_counted_by_reason(start_gateway: Any, upstreams: Upstreams, issuer: TestIssuer,
                                                   policies: Path) -> None:
    gw = await start_gateway(gateway_config(upstreams, issuer, policies))
    good = {**HEADERS, "Authorization": f"Bearer {token(issuer, gw)}",
            "MCP-Protocol-Version": "2025-06-18"}
    async with aiohttp.ClientSession() as http:
        for _ in range(3):  # no token
            async with http.post(gw.mcp, json=INIT, headers=HEADERS) as resp:
                assert resp.status == 401
        async with http.post(gw.mcp, json=INIT, headers={**good, "Mcp-Session-Id": "nope"}) as resp:
            assert resp.status == 404
        async with http.post(gw.mcp, data=b"{oops", headers=good) as resp:
            assert resp.status == 400
        async with http.post(gw.mcp, json=INIT, headers={**good, "Host": "evil.example"}) as resp:
            assert resp.status == 403
        # The stateless revision's own refusals (headers that contradict the body) are edge refusals too.
        call = {"jsonrpc": "2.0", "id": 5, "method": "tools/list", "params": {"_meta": {
            "io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}}}
        stateless = {**good, "MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/call"}
        async with http.post(gw.mcp, json=call, headers=stateless) as resp:
            assert resp.status == 400 and (await resp.json())["error"]["code"] == -32020
        async with http.get(f"{gw.url}/metrics") as resp:
            counts = refused(await resp.text())
    assert counts[("unauthenticated", "401")] == 3
    assert counts[("session_not_found", "404")] == 1
    assert counts[("parse_error", "400")] == 1
    assert counts[("host_forbidden", "403")] == 1
    assert counts[("header_mismatch", "400")] == 1
