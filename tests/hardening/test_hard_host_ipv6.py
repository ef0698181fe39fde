"""The Host check (DNS rebinding) with a gateway published at an IPv6 literal.

A client writes an IPv6 host in brackets (`Host: [fd00::5]:8700`); the host of `public_url` was compared
without them, so a gateway published at its IPv6 address refused every request to that address with 403
host_forbidden (only `::1` worked, by a special case). `allowed_hosts` entries are written bracketed already.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import free_port
from tests.hardening.conftest import ACCEPT, INIT, reason

pytestmark = pytest.mark.asyncio


async def status_for(http: aiohttp.ClientSession, url: str, host: str, origin: str | None = None) -> tuple[int, Any]:
    headers = {**ACCEPT, "Host": host, **({"Origin": origin} if origin else {})}
    async with http.post(f"{url}/mcp", json=INIT, headers=headers) as resp:
        return resp.status, await resp.json()


@pytest.mark.parametrize("listen", [
    {"public_url": "http://[fd00::5]:{port}"},
    {"allowed_hosts": ["[FD00::5]:{port}"]},
])
async def test_a_gateway_published_at_an_ipv6_address_answers_that_host(
        spawn_gateway: Any, permissive_policies: Path, listen: dict[str, Any]) -> None:
    port = free_port()
    listen = {k: (v.format(port=port) if isinstance(v, str) else [e.format(port=port) for e in v])
              for k, v in listen.items()}
    gw = await spawn_gateway({"listen": listen, "upstreams": [{"name": "a", "url": "http://127.0.0.1:9/mcp"}],
                              "identity": {"mode": "anonymous"},
                              "policies": {"dir": str(permissive_policies), "watch": False}}, port=port)
    async with aiohttp.ClientSession() as http:
        status, body = await status_for(http, gw.url, f"[fd00::5]:{port}")
        assert status == 200 and body["result"]["protocolVersion"], body
        # Still a rebinding check: other names and other addresses are refused.
        for host in ("evil.example", f"[fd00::6]:{port}", "fd00"):
            status, body = await status_for(http, gw.url, host)
            assert status == 403 and reason(body) == "host_forbidden", (host, body)
        if "public_url" in listen:  # its own origin posts, others do not
            assert (await status_for(http, gw.url, f"[fd00::5]:{port}", f"http://[fd00::5]:{port}"))[0] == 200
            status, body = await status_for(http, gw.url, f"[fd00::5]:{port}", "http://evil.example")
            assert status == 403 and reason(body) == "origin_forbidden", body
