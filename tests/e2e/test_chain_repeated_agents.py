"""An agent named twice in one token (principal and `act` chain) through the real gateway and shipped policies.

Cedar holds one `Agent` entity per id, so a second occurrence with other attributes (another tenant) used to be
decided with the first one's: a token naming the planner as tenant `acme` and again as `globex` passed the
tenant-scoped permits as `acme` twice. Such a token is refused at identify (401 `invalid_token`) now; the same
agent named twice with the same attributes (A → B → A) is served as before.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.demo.servers import inventory_server
from tests.support.mcp_client import sdk_client
from tests.support.servers import SeenRequest, run_http_server
from tests.support.tokens import TestIssuer, act_chain

REPO = Path(__file__).resolve().parents[2]
SHOPPER = "spiffe://acme.test/agent/shopper"
PLANNER = "spiffe://acme.test/agent/planner"
ORCH = "spiffe://acme.test/agent/orch"
HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
CALL = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "get_stock", "arguments": {"sku": "w"}}}


class Env:
    def __init__(self, gw: Any, issuer: TestIssuer, seen: list[SeenRequest]) -> None:
        self.gw, self.issuer, self.seen = gw, issuer, seen
        self.endpoint = f"{gw.url}/mcp/inventory"

    def token(self, *actors: str | tuple[str, dict[str, Any]], sub: str = SHOPPER, **claims: Any) -> str:
        claims.setdefault("tenant", "acme")
        return self.issuer.mint(sub, aud=self.endpoint, act=act_chain(*actors), **claims)

    async def refused(self, token: str) -> list[str]:
        """Each request's 401 message (initialize, then a call), checking the challenge the gateway gives bad tokens."""
        messages = []
        async with aiohttp.ClientSession() as http:
            for body in (INIT, CALL):
                async with http.post(self.endpoint, json=body,
                                     headers={**HEADERS, "Authorization": f"Bearer {token}"}) as resp:
                    answer = await resp.json()
                    assert resp.status == 401, answer
                    assert answer["error"]["data"]["reason"] == "unauthenticated"
                    challenge = resp.headers["WWW-Authenticate"]
                    assert 'error="invalid_token"' in challenge and "resource_metadata=" in challenge
                    messages.append(answer["error"]["message"])
        return messages


@pytest.fixture
async def env(start_gateway: Any, tmp_path: Path) -> AsyncIterator[Env]:
    issuer, seen = TestIssuer(tmp_path), list[SeenRequest]()
    async with run_http_server(inventory_server(), requests=seen) as inventory:
        gw = await start_gateway({
            "upstreams": [{"name": "inventory", "url": inventory, "tools": {"get_stock": {"read_only": True}}}],
            "identity": {"mode": "jwt", "issuers": [issuer.config()]},
            # The shipped policies, as a copy: the gateway may watch its policies.dir.
            "policies": {"dir": str(shutil.copytree(REPO / "policies", tmp_path / "policies")), "watch": False},
        })
        yield Env(gw, issuer, seen)


async def test_an_actor_named_twice_with_another_tenant_is_refused_at_identify(env: Env) -> None:
    token = env.token((PLANNER, {"tenant": "acme"}), (ORCH, {"tenant": "acme"}), (PLANNER, {"tenant": "globex"}))
    for message in await env.refused(token):
        assert message == (f"Invalid token: delegation chain names agent {PLANNER!r} twice with different "
                           "attributes (actor 1 and actor 3 differ in tenant); Cedar holds one Agent per id")
    assert env.seen == [], "a token naming one agent with two sets of attributes reached the upstream"


async def test_the_principal_named_again_in_its_chain_with_other_attributes_is_refused(env: Env) -> None:
    # The shopper's own claims say acme and groups [buyers]; the act object naming it again says otherwise.
    token = env.token((PLANNER, {"tenant": "acme"}), (SHOPPER, {"tenant": "acme", "groups": ["admins"]}),
                      groups=["buyers"])
    for message in await env.refused(token):
        assert f"names agent {SHOPPER!r} twice" in message
        assert "(the principal and actor 2 differ in groups)" in message
    assert env.seen == []


async def test_the_same_agent_twice_with_the_same_attributes_is_served_as_before(env: Env) -> None:
    # A → B → A: the planner acts through the orchestrator, which acted for the planner; and the shopper named
    # again in its own chain with its own attributes (groups in another order, repeated, are the same Set).
    round_trip = env.token((PLANNER, {"tenant": "acme"}), (ORCH, {"tenant": "acme"}), (PLANNER, {"tenant": "acme"}))
    back_to_self = env.token((PLANNER, {"tenant": "acme"}), (SHOPPER, {"tenant": "acme", "groups": ["b", "a"]}),
                             groups=["a", "b", "a"])
    for token in (round_trip, back_to_self):
        async with sdk_client(env.endpoint, token) as client:
            result = await client.call_tool("get_stock", {"sku": "widget"})
        assert result.content[0].text == "widget: 42 in stock"
    # The tenant-scoped permits still read each agent's own tenant: another tenant on both occurrences denies.
    elsewhere = env.token((PLANNER, {"tenant": "globex"}), (ORCH, {"tenant": "acme"}), (PLANNER, {"tenant": "globex"}))
    async with sdk_client(env.endpoint, elsewhere) as client:
        with pytest.raises(Exception, match="Unknown tool"):
            await client.call_tool("get_stock", {"sku": "widget"})


async def test_an_occurrence_naming_the_agent_alone_adds_nothing_and_loses_nothing(env: Env) -> None:
    # An `act` object often names an agent by `sub` alone: no conflict with another occurrence that says more, and
    # the one entity gets every attribute given, whichever occurrence gave it.
    bare_self = env.token((PLANNER, {"tenant": "acme"}), SHOPPER)
    bare_first = env.token(PLANNER, (ORCH, {"tenant": "acme"}), (PLANNER, {"tenant": "acme"}))
    for token in (bare_self, bare_first):
        async with sdk_client(env.endpoint, token) as client:
            result = await client.call_tool("get_stock", {"sku": "widget"})
        assert result.content[0].text == "widget: 42 in stock"
    # The later occurrence's tenant is read, not dropped for the first one's silence: globex is another tenant.
    elsewhere = env.token(PLANNER, (ORCH, {"tenant": "acme"}), (PLANNER, {"tenant": "globex"}))
    async with sdk_client(env.endpoint, elsewhere) as client:
        with pytest.raises(Exception, match="Unknown tool"):
            await client.call_tool("get_stock", {"sku": "widget"})


async def test_two_occurrences_conflicting_after_a_bare_first_one_are_refused(env: Env) -> None:
    # The planner named bare first, then as acme, then as globex: the bare one conflicts with neither, but the
    # later two conflict with each other (the one entity would silently have been acme for both).
    token = env.token(PLANNER, (PLANNER, {"tenant": "acme"}), (PLANNER, {"tenant": "globex"}))
    for message in await env.refused(token):
        assert message == (f"Invalid token: delegation chain names agent {PLANNER!r} twice with different "
                           "attributes (actor 2 and actor 3 differ in tenant); Cedar holds one Agent per id")
    # The same with the principal bare (no claims of its own) and named twice in its chain.
    bare_principal = env.token((SHOPPER, {"tenant": "acme"}), (SHOPPER, {"tenant": "globex"}), tenant=None)
    for message in await env.refused(bare_principal):
        assert "(actor 1 and actor 2 differ in tenant)" in message
    assert env.seen == [], "a token naming one agent with two sets of attributes reached the upstream"
