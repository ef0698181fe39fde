"""Each /mcp/{upstream} is its own RFC 9728 protected resource, and its metadata and the token check agree.

An MCP client that follows `/.well-known/oauth-protected-resource/mcp/payments` asks its authorization
server for a token whose audience is the `resource` named there (RFC 8707). The gateway accepts that
token on /mcp/payments, and only there; a 401 on /mcp/{upstream} points to that endpoint's metadata.
Tokens for the issuer's configured audience keep working everywhere.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDict

from gateway.demo.servers import inventory_server, payments_server
from tests.support.mcp_client import sdk_client
from tests.support.servers import SeenRequest, run_http_server
from tests.support.tokens import TestIssuer

pytestmark = pytest.mark.asyncio
AGENT = "spiffe://acme.test/agent/buyer"
HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}


class Env:
    def __init__(self, gw: Any, issuer: TestIssuer, seen: list[SeenRequest]) -> None:
        self.gw, self.issuer, self.seen = gw, issuer, seen

    def token(self, aud: str | list[str]) -> str:
        return self.issuer.mint(AGENT, aud=aud, alg="ES256", tenant="acme")

    def metadata_url(self, path: str) -> str:
        return f"{self.gw.url}/.well-known/oauth-protected-resource{path}"


@pytest.fixture
async def env(start_gateway: Any, permissive_policies: Path, tmp_path: Path) -> AsyncIterator[Env]:
    issuer = TestIssuer(tmp_path, algorithms=("ES256",))
    seen: list[SeenRequest] = []
    async with run_http_server(inventory_server(), requests=seen) as inv, \
            run_http_server(payments_server(), requests=seen) as pay:
        gw = await start_gateway({
            "upstreams": [{"name": "inventory", "url": inv}, {"name": "payments", "url": pay}],
            "identity": {"mode": "jwt", "issuers": [issuer.config()]},  # audience: the default <public_url>/mcp
            "policies": {"dir": str(permissive_policies)},
        })
        yield Env(gw, issuer, seen)


async def initialize(http: aiohttp.ClientSession, url: str, token: str | None,
                     query: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    headers = {**HEADERS, **({"Authorization": f"Bearer {token}"} if token else {})}
    async with http.post(url, data=json.dumps(INIT), headers=headers, params=query) as resp:
        return resp.status, dict(resp.headers), await resp.json(content_type=None)


def challenge(env: Env, path: str, error: str | None = "invalid_token") -> str:
    value = f'Bearer resource_metadata="{env.metadata_url(path)}"'
    return f'{value}, error="{error}"' if error else value


async def test_the_token_the_metadata_asks_for_is_accepted_on_that_upstream(env: Env) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(env.metadata_url("/mcp/payments")) as resp:
            assert resp.status == 200
            resource = (await resp.json())["resource"]
    assert resource == f"{env.gw.mcp}/payments"
    token = env.token(resource)  # what the authorization server issues for resource=<that URL>
    async with sdk_client(f"{env.gw.mcp}/payments", token) as client:
        assert {t.name for t in (await client.list_tools()).tools} >= {"pay"}
        paid = await client.call_tool("pay", {"account": "acme-1", "amount": 5})
        assert "paid 5" in getattr(paid.content[0], "text", "")
    # An audience list naming that resource among others is fine too.
    async with sdk_client(f"{env.gw.mcp}/payments", env.token(["https://elsewhere.example", resource])) as client:
        assert (await client.list_tools()).tools


async def test_a_token_for_one_upstream_opens_no_other_endpoint(env: Env) -> None:
    payments = env.token(f"{env.gw.mcp}/payments")
    async with aiohttp.ClientSession() as http:
        # Accepted (and remembered by the identifier's cache) on its own endpoint first...
        status, _, _ = await initialize(http, f"{env.gw.mcp}/payments", payments)
        assert status == 200
        before = len(env.seen)
        # ...then refused on another upstream's endpoint and on the aggregated one.
        for path in ("/mcp/inventory", "/mcp"):
            status, headers, body = await initialize(http, env.gw.url + path, payments)
            assert status == 401, path
            assert body["error"]["data"]["reason"] == "unauthenticated"
            assert "audience" in body["error"]["message"]
            assert headers["WWW-Authenticate"] == challenge(env, path)
        assert len(env.seen) == before, "a refused request reached an upstream"
        status, _, _ = await initialize(http, f"{env.gw.mcp}/payments", payments)
        assert status == 200  # still good where it belongs


async def test_tokens_for_the_configured_audience_work_everywhere(env: Env) -> None:
    token = env.token(env.gw.mcp)
    async with aiohttp.ClientSession() as http:
        for path in ("/mcp/payments", "/mcp/inventory", "/mcp"):
            status, _, body = await initialize(http, env.gw.url + path, token)
            assert status == 200, (path, body)
        # A token for the aggregated resource is not one for an upstream's: the reverse holds too.
        status, _, _ = await initialize(http, env.gw.mcp, env.token(f"{env.gw.mcp}/inventory"))
        assert status == 401


async def test_401_on_an_upstream_endpoint_points_to_its_own_metadata(env: Env) -> None:
    async with aiohttp.ClientSession() as http:
        status, headers, _ = await initialize(http, f"{env.gw.mcp}/payments", None)
        assert status == 401 and headers["WWW-Authenticate"] == challenge(env, "/mcp/payments", None)
        status, headers, _ = await initialize(http, env.gw.mcp, None)
        assert status == 401 and headers["WWW-Authenticate"] == challenge(env, "/mcp", None)
        token = env.token(f"{env.gw.mcp}/payments")
        status, headers, _ = await initialize(http, f"{env.gw.mcp}/payments", None, {"access_token": token})
        assert status == 401
        assert headers["WWW-Authenticate"] == challenge(env, "/mcp/payments", "invalid_request")
        async with http.get(headers["WWW-Authenticate"].split('"')[1]) as resp:
            assert (await resp.json())["resource"] == f"{env.gw.mcp}/payments"  # the challenge leads back here
        # GET and DELETE on the endpoint are identified the same way.
        async with http.delete(f"{env.gw.mcp}/payments", headers={"Mcp-Session-Id": "x"}) as resp:
            assert resp.status == 401
            assert resp.headers["WWW-Authenticate"] == challenge(env, "/mcp/payments", None)


async def test_session_get_and_delete_accept_the_upstream_token(env: Env) -> None:
    token = env.token(f"{env.gw.mcp}/payments")
    auth = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession() as http:
        status, headers, _ = await initialize(http, f"{env.gw.mcp}/payments", token)
        assert status == 200
        session = {**auth, "Mcp-Session-Id": headers["Mcp-Session-Id"]}
        async with http.delete(f"{env.gw.mcp}/payments", headers=session) as resp:
            assert resp.status == 200


async def test_metadata_exists_only_for_endpoint_paths(env: Env) -> None:
    async with aiohttp.ClientSession() as http:
        # /mcp/nosuch too: metadata for configured names only told them apart (test_http_metadata_names.py).
        for path in ("/mcp", "/mcp/inventory", "/mcp/payments", "/mcp/nosuch"):
            async with http.get(env.metadata_url(path)) as resp:
                assert resp.status == 200 and (await resp.json())["resource"] == env.gw.url + path
        for path in ("/mcp/payments/extra", "/mcp/nosuch/extra", "/approvals"):
            async with http.get(env.metadata_url(path)) as resp:
                assert resp.status == 404, path


async def test_other_schemes_get_a_bare_challenge_and_two_authorization_headers_invalid_request(env: Env) -> None:
    # RFC 6750 §3.1: an unsupported scheme is no bearer credential at all (no error code); two headers are a
    # malformed request (invalid_request). Both stay 401 `unauthenticated` and point to the RFC 9728 metadata.
    token = env.token(env.gw.mcp)
    cases = [(CIMultiDict([("Authorization", "Basic dXNlcjpwYXNz")]), None),
             (CIMultiDict([("Authorization", f"Bearer {token}"), ("Authorization", f"Bearer {token}")]),
              "invalid_request"),
             (CIMultiDict([("Authorization", "Bearer not-a-jwt")]), "invalid_token")]
    async with aiohttp.ClientSession() as http:
        for path in ("/mcp", "/mcp/payments"):
            for authorization, error in cases:
                async with http.post(env.gw.url + path, data=json.dumps(INIT),
                                     headers=CIMultiDict([*HEADERS.items(), *authorization.items()])) as resp:
                    body = await resp.json(content_type=None)
                    assert resp.status == 401, (path, error, body)
                    assert body["error"]["data"]["reason"] == "unauthenticated"
                    assert resp.headers.getall("WWW-Authenticate") == [challenge(env, path, error)], (path, error)
