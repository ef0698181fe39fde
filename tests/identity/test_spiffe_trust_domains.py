"""identity.issuers[].spiffe_trust_domains through a real gateway: an issuer asserts SPIFFE IDs of its own trust
domains only (as `sub` or in `act`); any other is refused at identify (401), never handed to Cedar."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.config import ConfigError, parse_config
from gateway.demo.servers import inventory_server
from tests.conftest import REPO
from tests.support.servers import SeenRequest, run_http_server
from tests.support.tokens import TestIssuer, act_chain

HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}


class Env:
    def __init__(self, mcp: str, limited: TestIssuer, open_issuer: TestIssuer, seen: list[SeenRequest]) -> None:
        self.mcp, self.limited, self.open_issuer, self.seen = mcp, limited, open_issuer, seen

    async def initialize(self, token: str) -> tuple[int, dict[str, Any]]:
        async with aiohttp.ClientSession() as http, http.post(
                self.mcp, json=INIT, headers={**HEADERS, "Authorization": f"Bearer {token}"}) as resp:
            body = await resp.json() if resp.content_type == "application/json" else {}
            return resp.status, body


@pytest.fixture
async def env(start_gateway: Any, tmp_path: Path) -> AsyncIterator[Env]:
    limited = TestIssuer(tmp_path, name="limited", issuer="https://idp.acme.test", algorithms=("ES256",))
    open_issuer = TestIssuer(tmp_path, name="open", issuer="https://idp.other.test", algorithms=("ES256",))
    seen: list[SeenRequest] = []
    async with run_http_server(inventory_server(), requests=seen) as inventory:
        gw = await start_gateway({
            "upstreams": [{"name": "inventory", "url": inventory}],
            "identity": {"mode": "jwt", "issuers": [
                {**limited.config(), "spiffe_trust_domains": ["acme.test", "ops.acme.test"]},
                open_issuer.config()]},
            "policies": {"dir": str(REPO / "policies"), "watch": False},
        })
        yield Env(gw.mcp, limited, open_issuer, seen)


def mint(issuer: TestIssuer, env: Env, sub: str, **kw: Any) -> str:
    return issuer.mint(sub, aud=env.mcp, alg="ES256", tenant="acme", **kw)


async def test_ids_of_the_issuers_trust_domains_and_people_are_accepted(env: Env) -> None:
    for sub in ("spiffe://acme.test/agent/reader", "spiffe://ops.acme.test/agent/deployer", "alice"):
        status, body = await env.initialize(mint(env.limited, env, sub))
        assert status == 200 and "result" in body, sub
    chained = mint(env.limited, env, "spiffe://acme.test/agent/reader",
                   act=act_chain("spiffe://ops.acme.test/agent/planner", "user:alice"))
    assert (await env.initialize(chained))[0] == 200


@pytest.mark.parametrize(("sub", "act", "who", "domain"), [
    ("spiffe://evil.test/agent/reader", None, "subject", "evil.test"),
    ("spiffe://acme.test.evil/agent/reader", None, "subject", "acme.test.evil"),  # not a suffix match
    ("spiffe://sub.acme.test/agent/reader", None, "subject", "sub.acme.test"),  # nor a parent domain
    ("spiffe://acme.test/agent/reader", ("spiffe://acme.test/agent/planner", "spiffe://evil.test/agent/boss"),
     "delegation actor", "evil.test"),
])
async def test_other_trust_domains_are_unauthenticated(env: Env, caplog: pytest.LogCaptureFixture, sub: str,
                                                       act: tuple[str, ...] | None, who: str, domain: str) -> None:
    token = mint(env.limited, env, sub, act=act_chain(*act) if act else None)
    with caplog.at_level(logging.INFO, "customs.identity"):
        status, body = await env.initialize(token)
    reason = f"Token {who}'s SPIFFE trust domain '{domain}' is not one issuer https://idp.acme.test may assert"
    assert status == 401 and body["error"]["data"]["reason"] == "unauthenticated"
    assert body["error"]["message"] == reason
    assert f"rejected bearer token: {reason}" in caplog.text
    assert env.seen == []  # refused at identify: no session, nothing upstream


async def test_an_issuer_without_the_list_asserts_any_trust_domain(env: Env) -> None:
    status, _ = await env.initialize(mint(env.open_issuer, env, "spiffe://evil.test/agent/reader"))
    assert status == 200


def test_config_checks_each_trust_domain_at_its_path() -> None:
    def problems(domains: Any) -> list[str]:
        issuer = {"issuer": "https://idp.test", "jwks_file": "jwks.json", "spiffe_trust_domains": domains}
        with pytest.raises(ConfigError) as info:
            parse_config({"upstreams": [{"name": "a", "url": "http://h/mcp"}],
                          "identity": {"mode": "jwt", "issuers": [issuer]}})
        return info.value.problems

    assert problems(["acme.test", "Acme.Test", "acme.test:8443"]) == [
        "identity.issuers[0].spiffe_trust_domains[1]: SPIFFE trust domain may only contain a-z, 0-9, '.', '-' and '_'",
        "identity.issuers[0].spiffe_trust_domains[2]: SPIFFE trust domain may only contain a-z, 0-9, '.', '-' and '_'"]
    assert problems([]) == [
        "identity.issuers[0].spiffe_trust_domains: must name at least one trust domain (leave it out to allow any)"]
