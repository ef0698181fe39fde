"""Session caps: a client creating sessions and never ending them is refused, not allowed to grow memory.

Each `initialize` makes a session that lives until DELETE or the idle expiry (`tasks.idle_s`), so a
client (or a stolen token) initializing in a loop used to grow the gateway's memory without bound.
`limits.max_sessions_per_principal` and `limits.max_sessions` cap the open sessions; a refused
initialize answers `rate_limited` (429, `Retry-After`, `data.limit`) and `customs.sessions.open`
shows how many are open.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.demo.servers import inventory_server
from tests.hardening.conftest import INIT, RawClient, reason
from tests.support.servers import run_http_server
from tests.support.tokens import TestIssuer

pytestmark = pytest.mark.asyncio


def open_sessions(metrics_text: str) -> dict[str, float]:
    found = {}
    for line in metrics_text.splitlines():
        kind = re.match(r'customs_sessions_open\{.*customs_session_kind="([a-z]+)"', line)
        if kind:
            found[kind.group(1)] = float(line.rsplit(" ", 1)[1])
    return found


async def test_session_caps_refuse_initialize_with_rate_limited_and_free_up_on_delete(
        start_gateway: Any, permissive_policies: Path, tmp_path: Path, http: aiohttp.ClientSession) -> None:
    issuer = TestIssuer(tmp_path)
    async with run_http_server(inventory_server()) as url:
        gw = await start_gateway({"upstreams": [{"name": "inventory", "url": url}],
                                  "identity": {"mode": "jwt", "issuers": [issuer.config()]},
                                  "policies": {"dir": str(permissive_policies), "watch": False},
                                  "limits": {"max_sessions_per_principal": 2, "max_sessions": 3}})

        def client(sub: str) -> RawClient:
            bearer = issuer.mint(sub, aud=gw.mcp, tenant="acme")
            return RawClient(http, gw.mcp, {"Authorization": f"Bearer {bearer}"})

        looping, other = client("agent-looping"), client("agent-other")
        kept = [await looping.initialize(), await looping.initialize()]
        status, headers, body = await looping.post(INIT, headers={"Mcp-Session-Id": ""})
        assert status == 429 and reason(body) == "rate_limited", body
        assert body["error"]["data"]["limit"] == "sessions_per_principal" and headers["Retry-After"] == "1"
        assert "Mcp-Session-Id" not in headers

        await other.initialize()  # another principal is not held to the first one's cap: 3 open in all
        status, headers, body = await other.post(INIT, headers={"Mcp-Session-Id": ""})
        assert status == 429 and body["error"]["data"]["limit"] == "sessions", body

        async with http.get(f"{gw.url}/metrics") as resp:
            assert open_sessions(await resp.text()) == {"stateful": 3, "stateless": 0}
        # A legacy HTTP+SSE stream is a session too: the same cap, refused before the stream opens.
        async with http.get(f"{gw.url}/sse", headers={**other.headers, "Accept": "text/event-stream"}) as resp:
            assert resp.status == 429 and (await resp.json())["error"]["data"]["limit"] == "sessions"

        async with http.delete(gw.mcp, headers={**looping.headers, "Mcp-Session-Id": kept[0]}) as resp:
            assert resp.status in (200, 204)
        status, _, body = await other.post(INIT, headers={"Mcp-Session-Id": ""})  # the freed place is taken again
        assert status == 200 and "result" in body, body
        status, _, body = await looping.post(INIT, headers={"Mcp-Session-Id": ""})
        assert status == 429 and body["error"]["data"]["limit"] == "sessions", body
        looping.session_id = kept[1]  # the sessions kept still work
        status, _, body = await looping.post({"jsonrpc": "2.0", "id": 2, "method": "tools/list"})
        assert status == 200 and "result" in body, body
        async with http.get(f"{gw.url}/metrics") as resp:
            text = await resp.text()
    assert open_sessions(text) == {"stateful": 3, "stateless": 0}
    refusals = [line for line in text.splitlines() if line.startswith("customs_requests_refused_total{")]
    assert len(refusals) == 1 and 'error_type="rate_limited"' in refusals[0], refusals
    assert float(refusals[0].rsplit(" ", 1)[1]) == 4.0
