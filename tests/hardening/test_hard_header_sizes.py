"""Request header sizes against a real gateway process.

identity takes bearer tokens up to 16 KiB (docs/identity.md), but aiohttp's HTTP parser refused any header
field over 8190 bytes first, with a text/plain 400: a valid 10 KiB token (an agent in a few hundred groups)
could never be used. A field may now hold the largest token identify takes; past that the token is
`unauthenticated` (401) as documented, and only a field past 17 KiB is still refused by the parser (400)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.hardening.conftest import ACCEPT, INIT, Recorder, reason
from tests.support.tokens import TestIssuer

pytestmark = pytest.mark.asyncio


async def test_a_token_of_any_size_identity_takes_gets_through_the_http_parser(
        spawn_gateway: Any, upstream: tuple[Recorder, str], http: aiohttp.ClientSession, tmp_path: Path,
        permissive_policies: Path) -> None:
    _recorder, url = upstream
    issuer = TestIssuer(tmp_path)
    gw = await spawn_gateway({"upstreams": [{"name": "rec", "url": url}],
                              "identity": {"mode": "jwt", "issuers": [issuer.config()]},
                              "policies": {"dir": str(permissive_policies), "watch": False}})

    async def initialize(token: str) -> tuple[int, Any]:
        async with http.post(gw.mcp, json=INIT, headers={**ACCEPT, "Authorization": f"Bearer {token}"}) as resp:
            return resp.status, (await resp.json() if resp.content_type == "application/json" else await resp.text())

    big = issuer.mint("alice", aud=gw.mcp, groups=[f"group-number-{i}" for i in range(400)])
    assert 8190 < len(big) <= 16 * 1024
    status, body = await initialize(big)
    assert status == 200 and body["result"]["protocolVersion"], body
    too_big = issuer.mint("alice", aud=gw.mcp, groups=[f"group-number-{i}" for i in range(640)])
    assert 16 * 1024 < len(too_big) < 17 * 1024
    status, body = await initialize(too_big)
    assert status == 401 and reason(body) == "unauthenticated", body
    status, _ = await initialize("x" * 40_000)
    assert status == 400
