"""RFC 9728 metadata of a gateway whose `listen.public_url` has a path (behind a reverse proxy under a prefix).

RFC 9728 §3.1 puts the metadata of `https://host/customs/mcp` at
`https://host/.well-known/oauth-protected-resource/customs/mcp`: the well-known prefix goes between the host
and the path, so that URL lies outside the proxy's `/customs/` prefix. A real aiohttp reverse proxy on port 0
strips `/customs` from the MCP traffic (the gateway serves `/mcp` at its root) and forwards the root-level
well-known path either unchanged or with the prefix stripped too: the gateway must answer both, with a
`resource` equal to the identifier the client started from, and its 401 must point to the RFC's URL.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from mcp.client.auth.utils import build_protected_resource_metadata_discovery_urls
from mcp.shared.auth_utils import check_resource_allowed

from gateway.config import ConfigError, parse_config
from gateway.demo.servers import inventory_server, payments_server
from gateway.identity import metadata_url
from tests.conftest import bound_socket
from tests.support.servers import run_http_server
from tests.support.tokens import TestIssuer

pytestmark = pytest.mark.asyncio
AGENT = "spiffe://acme.test/agent/buyer"
WELL_KNOWN = "/.well-known/oauth-protected-resource"
HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}


@asynccontextmanager
async def prefix_proxy(sock: Any, target: str, prefix: str, *, strip_well_known: bool) -> AsyncIterator[str]:
    """A reverse proxy publishing the gateway at `<proxy>/<prefix>`: `/<prefix>/x` → `<target>/x`;
    `/.well-known/oauth-protected-resource/<prefix>/x` → the gateway unchanged, or with `/<prefix>` cut
    out when `strip_well_known` (the two ways an operator can route the root-level well-known path)."""
    async def forward(request: web.Request) -> web.Response:
        path = request.rel_url.raw_path
        if path.startswith(prefix + "/"):
            path = path[len(prefix):]
        elif strip_well_known and path.startswith(WELL_KNOWN + prefix + "/"):
            path = WELL_KNOWN + path[len(WELL_KNOWN + prefix):]
        elif not path.startswith(WELL_KNOWN + "/"):
            raise web.HTTPNotFound()  # the proxy routes nothing else to the gateway
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        async with aiohttp.ClientSession() as http, \
                http.request(request.method, target + path, headers=headers, data=await request.read()) as resp:
            keep = {k: v for k, v in resp.headers.items()
                    if k.lower() in ("content-type", "www-authenticate", "mcp-session-id")}
            return web.Response(status=resp.status, body=await resp.read(), headers=keep)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", forward)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        await runner.cleanup()


class Env:
    def __init__(self, public: str, proxy: str, gw: Any, issuer: TestIssuer) -> None:
        self.public, self.proxy, self.gw, self.issuer = public, proxy, gw, issuer

    def token(self, aud: str) -> str:
        return self.issuer.mint(AGENT, aud=aud, alg="ES256", tenant="acme")


@asynccontextmanager
async def behind_proxy(start_gateway: Any, policies: Path, tmp_path: Path, prefix: str,
                       strip_well_known: bool) -> AsyncIterator[Env]:
    issuer = TestIssuer(tmp_path, algorithms=("ES256",))
    sock = bound_socket()
    public = f"http://127.0.0.1:{sock.getsockname()[1]}{prefix}"
    async with run_http_server(inventory_server()) as inv, run_http_server(payments_server()) as pay:
        gw = await start_gateway({
            "listen": {"public_url": public},
            "upstreams": [{"name": "inventory", "url": inv}, {"name": "payments", "url": pay}],
            "identity": {"mode": "jwt", "issuers": [issuer.config()]},  # audience: <public_url>/mcp
            "policies": {"dir": str(policies)},
        })
        async with prefix_proxy(sock, gw.url, prefix, strip_well_known=strip_well_known) as proxy:
            yield Env(public, proxy, gw, issuer)


async def initialize(http: aiohttp.ClientSession, url: str, token: str | None) -> tuple[int, dict[str, str]]:
    headers = {**HEADERS, **({"Authorization": f"Bearer {token}"} if token else {})}
    async with http.post(url, data=json.dumps(INIT), headers=headers) as resp:
        return resp.status, dict(resp.headers)


@pytest.mark.parametrize("strip_well_known", [False, True], ids=["well-known-as-is", "well-known-stripped"])
@pytest.mark.parametrize("prefix", ["/customs", "/edge/customs", "/team%20a"])
async def test_a_client_finds_the_metadata_where_rfc_9728_puts_it(
        start_gateway: Any, permissive_policies: Path, tmp_path: Path, prefix: str, strip_well_known: bool) -> None:
    async with behind_proxy(start_gateway, permissive_policies, tmp_path, prefix, strip_well_known) as env, \
            aiohttp.ClientSession() as http:
        for path in ("/mcp", "/mcp/payments"):
            endpoint = env.public + path  # what the agent was configured with: the resource identifier
            expected = f"{env.proxy}{WELL_KNOWN}{prefix}{path}"
            status, headers = await initialize(http, endpoint, None)
            assert status == 401
            assert headers["WWW-Authenticate"] == f'Bearer resource_metadata="{expected}"'
            # The SDK's own discovery, without the header, tries the same URL first.
            assert build_protected_resource_metadata_discovery_urls(None, endpoint)[0] == expected
            async with http.get(expected) as resp:
                assert resp.status == 200, (path, await resp.text())
                meta = await resp.json()
            assert meta["resource"] == endpoint  # RFC 9728 §3.3: identical to the identifier
            assert check_resource_allowed(requested_resource=endpoint, configured_resource=meta["resource"])
            status, _ = await initialize(http, endpoint, env.token(meta["resource"]))
            assert status == 200, path  # the token the metadata leads to opens that endpoint


async def test_only_endpoint_paths_have_metadata_and_the_documented_paths_still_answer(
        start_gateway: Any, permissive_policies: Path, tmp_path: Path) -> None:
    async with behind_proxy(start_gateway, permissive_policies, tmp_path, "/customs", False) as env, \
            aiohttp.ClientSession() as http:
        # The paths of shared/interfaces.md, on the gateway itself, name the same resources as before.
        for path, resource in (("", "/mcp"), ("/mcp", "/mcp"), ("/mcp/inventory", "/mcp/inventory")):
            async with http.get(f"{env.gw.url}{WELL_KNOWN}{path}") as resp:
                assert resp.status == 200 and (await resp.json())["resource"] == env.public + resource
        # Any /mcp/<name> has metadata, a configured upstream or not (it tells no names apart), under the prefix too.
        for path in ("/customs/mcp/nosuch", "/mcp/nosuch"):
            async with http.get(f"{env.gw.url}{WELL_KNOWN}{path}") as resp:
                assert resp.status == 200 and (await resp.json())["resource"] == env.public + "/mcp/nosuch", path
        for path in ("/customs", "/customs/mcp/nosuch/x", "/other/mcp", "/customs/customs/mcp", "/customs/approvals"):
            async with http.get(f"{env.gw.url}{WELL_KNOWN}{path}") as resp:
                assert resp.status == 404, path


async def test_no_path_keeps_the_metadata_url_as_it_was() -> None:
    assert metadata_url("http://127.0.0.1:8700") == "http://127.0.0.1:8700/.well-known/oauth-protected-resource/mcp"
    assert metadata_url("https://gw.example/", "/mcp/pay") == f"https://gw.example{WELL_KNOWN}/mcp/pay"
    assert metadata_url("https://gw.example/customs/", "/mcp") == f"https://gw.example{WELL_KNOWN}/customs/mcp"


@pytest.mark.parametrize("url", ["https://gw.example/customs?tenant=a", "https://gw.example/customs#top",
                                 "https://gw.example?x"])
async def test_a_public_url_with_a_query_or_fragment_is_a_config_error(url: str) -> None:
    # `<public_url>/mcp` would put /mcp inside the query or fragment: no resource identifier at all.
    with pytest.raises(ConfigError) as error:
        parse_config({"listen": {"public_url": url}, "upstreams": [{"name": "a", "url": "http://127.0.0.1:1/mcp"}]})
    assert "listen.public_url" in str(error.value) and "query" in str(error.value)
