"""Sender-constrained tokens (a `cnf` claim) are refused wherever the real gateway takes a bearer token.

A token with `cnf` (RFC 9449 DPoP `jkt`, RFC 8705 mTLS `x5t#S256`, any other RFC 7800 confirmation method) is bound
to a key its presenter must prove it holds. The gateway checks no such proof, so taking the token as a plain bearer
token (which it did) let whoever copied it use it: RFC 9449 §7.2 says a resource server MUST refuse a DPoP-bound
token presented as a bearer token. Every surface that takes one refuses it 401 `unauthenticated`: the agent paths
(`/mcp`, `/mcp/{upstream}`, POST/GET/DELETE, legacy `/sse` and `/messages`), the approvals API and page sign-in, and
the tools admin API; `Authorization: DPoP <token>` is refused there too, naming DPoP.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.demo.servers import inventory_server
from tests.support.servers import SeenRequest, run_http_server
from tests.support.tokens import TestIssuer, b64url

pytestmark = pytest.mark.asyncio
AGENT = "spiffe://acme.test/agent/buyer"
HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
JKT = b64url(bytes(range(32)))
CONFIRMATIONS = [{"jkt": JKT}, {"x5t#S256": JKT}, {"kid": "holder-key-1"}]
REFUSAL = "sender-constrained"


class Env:
    def __init__(self, gw: Any, issuer: TestIssuer, seen: list[SeenRequest]) -> None:
        self.gw, self.issuer, self.seen = gw, issuer, seen

    def token(self, sub: str = AGENT, cnf: dict[str, Any] | None = None, **kw: Any) -> str:
        claims = {"cnf": cnf} if cnf is not None else {}
        return self.issuer.mint(sub, aud=self.gw.mcp, alg="ES256", tenant="acme", claims=claims, **kw)


@pytest.fixture
async def env(start_gateway: Any, permissive_policies: Path, tmp_path: Path) -> AsyncIterator[Env]:
    issuer = TestIssuer(tmp_path, algorithms=("ES256",))
    seen: list[SeenRequest] = []
    async with run_http_server(inventory_server(), requests=seen) as inv:
        gw = await start_gateway({
            "upstreams": [{"name": "inventory", "url": inv}],
            "identity": {"mode": "jwt", "issuers": [issuer.config()]},
            "policies": {"dir": str(permissive_policies)},
        })
        yield Env(gw, issuer, seen)


def _refused_with_invalid_token(status: int, headers: Any, body: Any, expect: str = REFUSAL) -> None:
    assert status == 401, body
    assert body["error"]["data"]["reason"] == "unauthenticated", body
    assert expect in body["error"]["message"], body
    assert 'error="invalid_token"' in headers["WWW-Authenticate"], headers


@pytest.mark.parametrize("cnf", CONFIRMATIONS, ids=["dpop_jkt", "mtls_x5t_s256", "other_kid"])
async def test_a_bound_token_is_refused_on_every_agent_path(env: Env, cnf: dict[str, Any],
                                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="customs.identity")
    bound = {"Authorization": f"Bearer {env.token(cnf=cnf)}"}
    async with aiohttp.ClientSession() as http:
        for url in (env.gw.mcp, f"{env.gw.mcp}/inventory"):
            async with http.post(url, data=json.dumps(INIT), headers={**HEADERS, **bound}) as resp:
                _refused_with_invalid_token(resp.status, resp.headers, await resp.json(content_type=None))
            for method in ("GET", "DELETE"):
                async with http.request(method, url, headers={**HEADERS, **bound, "Mcp-Session-Id": "x"}) as resp:
                    _refused_with_invalid_token(resp.status, resp.headers, await resp.json(content_type=None))
        for url in (f"{env.gw.url}/sse", f"{env.gw.url}/sse/inventory"):
            async with http.get(url, headers={"Accept": "text/event-stream", **bound}) as resp:
                _refused_with_invalid_token(resp.status, resp.headers, await resp.json(content_type=None))
    assert env.seen == [], "a bound token reached the upstream"
    assert any("rejected bearer token: Token is sender-constrained" in r.getMessage() for r in caplog.records)


async def test_the_same_token_without_cnf_is_accepted(env: Env) -> None:
    """The control: the refusal is the `cnf` claim's, not the issuer's or the audience's."""
    async with aiohttp.ClientSession() as http:
        for url in (env.gw.mcp, f"{env.gw.mcp}/inventory"):
            async with http.post(url, data=json.dumps(INIT),
                                 headers={**HEADERS, "Authorization": f"Bearer {env.token()}"}) as resp:
                assert resp.status == 200, await resp.text()


async def test_a_bound_token_is_refused_on_a_legacy_sse_session_opened_with_a_plain_one(env: Env) -> None:
    """POST /messages identifies each request: a session opened with a plain token takes no bound one."""
    plain = {"Authorization": f"Bearer {env.token()}"}
    bound = {"Authorization": f"Bearer {env.token(cnf={'jkt': JKT})}"}
    async with aiohttp.ClientSession() as http, \
            http.get(f"{env.gw.url}/sse/inventory", headers={"Accept": "text/event-stream", **plain}) as stream:
        assert stream.status == 200
        endpoint = None
        async for line in stream.content:
            if line.startswith(b"data: /messages"):
                endpoint = env.gw.url + line[6:].decode().strip()
                break
        assert endpoint is not None
        async with http.post(endpoint, data=json.dumps(INIT), headers={**HEADERS, **bound}) as resp:
            _refused_with_invalid_token(resp.status, resp.headers, await resp.json(content_type=None))
        async with http.post(endpoint, data=json.dumps(INIT), headers={**HEADERS, **plain}) as resp:
            assert resp.status == 202


async def test_the_dpop_scheme_is_refused_naming_dpop(env: Env) -> None:
    """`Authorization: DPoP <token>` (RFC 9449 §7.1) with its proof: the gateway supports no DPoP, so the agent is
    told so, rather than "must be a Bearer token" alone; no error code, as for any scheme it does not take."""
    for cnf in ({"jkt": JKT}, None):
        headers = {**HEADERS, "Authorization": f"DPoP {env.token(cnf=cnf)}", "DPoP": "proof"}
        async with aiohttp.ClientSession() as http, \
                http.post(env.gw.mcp, data=json.dumps(INIT), headers=headers) as resp:
            body = await resp.json(content_type=None)
            assert resp.status == 401 and body["error"]["data"]["reason"] == "unauthenticated", body
            assert "DPoP" in body["error"]["message"] and "not supported" in body["error"]["message"], body
            assert "error=" not in resp.headers["WWW-Authenticate"]
    assert env.seen == []


async def test_the_approvals_api_refuses_a_bound_token_and_the_dpop_scheme(env: Env) -> None:
    approver = env.token("alice", groups=["approvers"])
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{env.gw.url}/api/approvals",
                            headers={"Authorization": f"Bearer {approver}"}) as resp:
            assert resp.status == 200  # the control
        bound = env.token("alice", groups=["approvers"], cnf={"jkt": JKT})
        async with http.get(f"{env.gw.url}/api/approvals", headers={"Authorization": f"Bearer {bound}"}) as resp:
            body = await resp.json()
            assert resp.status == 401 and body["error"]["reason"] == "unauthenticated", body
            assert REFUSAL in body["error"]["message"], body
            assert resp.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
        async with http.get(f"{env.gw.url}/api/approvals", headers={"Authorization": f"DPoP {approver}"}) as resp:
            body = await resp.json()
            assert resp.status == 401 and body["error"]["reason"] == "unauthenticated", body
            assert "DPoP" in body["error"]["message"] and "not supported" in body["error"]["message"], body
            assert resp.headers["WWW-Authenticate"] == "Bearer"


async def test_the_approvals_page_refuses_to_sign_in_with_a_bound_token(env: Env) -> None:
    async def sign_in(pasted: str) -> tuple[int, str]:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
            async with session.get(f"{env.gw.url}/approvals") as resp:
                assert resp.status == 200
            csrf = session.cookie_jar.filter_cookies(env.gw.url)["customs_csrf"].value
            async with session.post(f"{env.gw.url}/approvals/signin", data={"token": pasted, "csrf": csrf},
                                    allow_redirects=False) as resp:
                return resp.status, await resp.text()

    plain = env.token("alice", groups=["approvers"])
    assert (await sign_in(plain))[0] == 303  # the control
    status, text = await sign_in(env.token("alice", groups=["approvers"], cnf={"jkt": JKT}))
    assert status == 401 and "Sign-in failed: Token is sender-constrained" in text, text[-800:]
    status, text = await sign_in(f"DPoP {plain}")
    assert status == 401 and "DPoP" in text and "not supported" in text, text[-800:]


async def test_the_tools_admin_api_refuses_a_bound_token(env: Env) -> None:
    admin = env.token("carol", groups=["admins"])
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{env.gw.url}/api/tools", headers={"Authorization": f"Bearer {admin}"}) as resp:
            assert resp.status == 200  # the control
        bound = env.token("carol", groups=["admins"], cnf={"x5t#S256": JKT})
        for authorization in (f"Bearer {bound}", f"DPoP {admin}"):
            async with http.get(f"{env.gw.url}/api/tools", headers={"Authorization": authorization}) as resp:
                assert resp.status == 401 and (await resp.json())["error"]["reason"] == "unauthenticated"
