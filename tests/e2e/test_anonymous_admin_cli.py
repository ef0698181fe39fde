"""`customs approvals|tools` against a gateway in anonymous identity mode (`customs serve` without a config).

No token can approve or administer there: the refusal must say why, so a person does not go looking for
a better token that cannot exist.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.asyncio


async def _cli(*argv: str) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CUSTOMS_TOKEN", "CUSTOMS_URL")}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway", *argv, "--token", "any-token",
                                                env=env, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, err.decode()


async def test_approvals_and_tools_on_an_anonymous_gateway_say_no_token_can_work(start_gateway: Any) -> None:
    gw = await start_gateway({
        "upstreams": [{"name": "a", "url": "http://127.0.0.1:9/mcp"}],
        "identity": {"mode": "anonymous"},
        "policies": {"dir": str(REPO / "policies")},
    })
    for argv in (("approvals", "list"), ("approvals", "approve", "apr_x"), ("tools", "list")):
        code, err = await _cli(*argv, "--url", gw.url)
        assert code == 1, err
        assert "identity.mode: anonymous" in err and "identity.mode: jwt" in err, err
        assert "your token is valid" not in err


async def test_the_approvals_api_without_a_token_says_anonymous_mode_too(start_gateway: Any) -> None:
    """No token at all (a browser, curl): the same explanation, with the no-credential challenge (RFC 6750 §3.1).
    On the old code: "sign in with a bearer token", which sends a person looking for a token that cannot work."""
    import aiohttp

    gw = await start_gateway({
        "upstreams": [{"name": "a", "url": "http://127.0.0.1:9/mcp"}],
        "identity": {"mode": "anonymous"},
        "policies": {"dir": str(REPO / "policies")},
    })
    async with aiohttp.ClientSession() as http, http.get(f"{gw.url}/api/approvals") as response:
        body = await response.json()
        assert response.status == 401, body
        assert response.headers["WWW-Authenticate"] == "Bearer", response.headers
    assert body["error"]["reason"] == "unauthenticated", body
    assert "identity.mode: anonymous" in body["error"]["message"], body
