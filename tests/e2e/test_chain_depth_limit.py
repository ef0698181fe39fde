"""`policies.max_chain_depth` through the real gateway: a chain at the limit is served, one deeper gets 401."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.config import ConfigError, parse_config
from gateway.demo.servers import inventory_server
from tests.support.mcp_client import sdk_client
from tests.support.servers import SeenRequest, run_http_server
from tests.support.tokens import TestIssuer, act_chain

AGENT = "spiffe://acme.test/agent/shopper"
HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
CALL = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "get_stock", "arguments": {"sku": "w"}}}


def actors(depth: int) -> list[str]:
    return [f"spiffe://acme.test/agent/a{i}" for i in range(depth)]


class Env:
    def __init__(self, gw: Any, issuer: TestIssuer, seen: list[SeenRequest]) -> None:
        self.gw, self.issuer, self.seen = gw, issuer, seen

    def token(self, depth: int) -> str:
        return self.issuer.mint(AGENT, aud=f"{self.gw.url}/mcp/inventory", tenant="acme",
                                act=act_chain(*actors(depth)))


@pytest.fixture
async def env(start_gateway: Any, tmp_path: Path, permissive_policies: Path) -> AsyncIterator[Env]:
    issuer = TestIssuer(tmp_path)
    seen: list[SeenRequest] = []
    async with run_http_server(inventory_server(), requests=seen) as inventory:
        gw = await start_gateway({
            "upstreams": [{"name": "inventory", "url": inventory}],
            "identity": {"mode": "jwt", "issuers": [issuer.config()]},
            "policies": {"dir": str(permissive_policies), "watch": False, "max_chain_depth": 3},
        })
        yield Env(gw, issuer, seen)


async def test_a_chain_one_deeper_than_the_limit_is_refused_before_any_upstream(env: Env) -> None:
    endpoint = f"{env.gw.url}/mcp/inventory"
    async with aiohttp.ClientSession() as http:
        for body in (INIT, CALL):
            async with http.post(endpoint, json=body,
                                 headers={**HEADERS, "Authorization": f"Bearer {env.token(4)}"}) as resp:
                answer = await resp.json()
                assert resp.status == 401
                assert answer["error"]["data"]["reason"] == "unauthenticated"
                assert "delegation chain deeper than 3 actors" in answer["error"]["message"]
                assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"]
    assert env.seen == [], "a token past policies.max_chain_depth reached the upstream"


async def test_a_chain_at_the_limit_is_served(env: Env) -> None:
    async with sdk_client(f"{env.gw.url}/mcp/inventory", env.token(3)) as client:
        result = await client.call_tool("get_stock", {"sku": "widget"})
    assert result.content[0].text == "widget: 42 in stock"
    assert any(r.method == "POST" for r in env.seen)


def test_the_limit_cannot_exceed_what_identity_parses_at_all() -> None:
    upstreams = [{"name": "a", "url": "http://127.0.0.1:1/mcp"}]
    assert parse_config({"upstreams": upstreams}).policies.max_chain_depth == 8
    assert parse_config({"upstreams": upstreams, "policies": {"max_chain_depth": 16}}).policies.max_chain_depth == 16
    with pytest.raises(ConfigError) as info:
        parse_config({"upstreams": upstreams, "policies": {"max_chain_depth": 17}})
    assert info.value.problems == ["policies.max_chain_depth: must be less than or equal to 16, not 17"]
