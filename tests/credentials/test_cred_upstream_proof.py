"""Proof against a real SDK upstream that verifies minted tokens with the gateway's JWKS (fetched over HTTP)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from gateway.credentials import CredentialService
from gateway.errors import GatewayError
from gateway.store import RedisConnection
from tests.credentials.helpers import call, make_config
from tests.credentials.upstream import JwksVerifier, bound_socket, guarded_payments, serve_upstream
from tests.support.mcp_client import sdk_client


@dataclass
class World:
    gateway: str
    upstream: str
    service: CredentialService
    verifier: JwksVerifier


def upstream_defs(upstream_url: str) -> list[dict[str, Any]]:
    return [{"name": "payments", "url": upstream_url,
             "credentials": {"mode": "minted", "ttl_s": 60, "narrow_to_args": ["account"]}},
            {"name": "crm", "url": "http://127.0.0.1:9/mcp", "credentials": {"mode": "minted"}}]


@pytest.fixture
async def world(tmp_path, serve_credentials) -> AsyncIterator[World]:
    up_sock = bound_socket()
    upstream_url = f"http://127.0.0.1:{up_sock.getsockname()[1]}/mcp"
    served = await serve_credentials(lambda port: CredentialService(
        make_config(tmp_path, upstream_defs(upstream_url), port=port)))
    verifier = JwksVerifier(issuer=served.url, audience=upstream_url, introspect=True)
    async with serve_upstream(guarded_payments(verifier), up_sock):
        yield World(served.url, upstream_url, served.service, verifier)


async def headers_for(service: CredentialService, upstream: str, args: dict[str, Any], **kw: Any) -> dict[str, str]:
    ctx = call(upstream, "pay", args, **kw)
    await service.stage(ctx)
    return ctx.upstream_headers


async def pay(url: str, headers: dict[str, str], args: dict[str, Any]) -> str:
    async with sdk_client(url, headers=headers) as client:
        result = await client.call_tool("pay", args)
        text = "".join(getattr(c, "text", "") for c in result.content)
        return ("ERROR: " if result.is_error else "") + text


async def rejected(url: str, headers: dict[str, str]) -> bool:
    """True when the upstream refuses the credential at the HTTP layer (401)."""
    async with aiohttp.ClientSession() as http, http.post(
            url, headers={**headers, "Accept": "application/json, text/event-stream"},
            json={"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}) as resp:
        return resp.status == 401


async def test_valid_minted_token_passes_upstream_verification(world: World) -> None:
    args = {"account": "acme-1", "amount": 5}
    headers = await headers_for(world.service, "payments", args)
    assert list(headers) == ["Authorization"]
    assert await pay(world.upstream, headers, args) == "paid 5 to acme-1"
    claims = world.verifier.accepted[-1]
    assert claims["iss"] == world.gateway and claims["aud"] == world.upstream
    assert claims["sub"] == "spiffe://acme/agent-1"
    assert claims["act"] == {"sub": "spiffe://acme/orchestrator", "act": {"sub": "user:alice"}}
    assert claims["scope"] == "pay account:acme-1" and claims["args"] == {"account": "acme-1"}
    assert world.verifier.jwks_fetches == 1


async def test_token_for_another_upstream_fails_on_audience(world: World) -> None:
    headers = await headers_for(world.service, "crm", {"account": "acme-1"})
    assert await rejected(world.upstream, headers)
    assert world.verifier.rejections == ["audience"]


async def test_ended_task_token_is_inactive_and_rejected(world: World) -> None:
    args = {"account": "acme-1", "amount": 5}
    headers = await headers_for(world.service, "payments", args)
    assert await pay(world.upstream, headers, args) == "paid 5 to acme-1"
    token = headers["Authorization"].removeprefix("Bearer ")
    assert (await world.service.introspector.introspect(token))["active"] is True
    revoked = await world.service.session_ended("sess-1")
    assert len(revoked) == 1
    async with aiohttp.ClientSession() as http, http.post(f"{world.gateway}/oauth/introspect",
                                                          data={"token": token}) as resp:
        assert await resp.json() == {"active": False}
    assert await rejected(world.upstream, headers)
    assert world.verifier.rejections == ["inactive"]


async def test_narrowed_token_rejected_for_other_arguments(world: World) -> None:
    headers = await headers_for(world.service, "payments", {"account": "acme-1", "amount": 5})
    result = await pay(world.upstream, headers, {"account": "evil-corp", "amount": 5})
    # The scope alone (checked first, as an OAuth-only upstream would) already refuses the replay.
    assert result.startswith("ERROR:") and "scope is narrowed" in result
    assert await pay(world.upstream, headers, {"account": "acme-1", "amount": 7}) == "paid 7 to acme-1"


async def test_key_rotation_with_calls_in_flight(world: World) -> None:
    old = [await headers_for(world.service, "payments", {"account": f"a{i}"}, session_id=f"s{i}") for i in range(4)]
    old_kid = world.service.keys.current.kid
    new_kid = world.service.rotate_keys()
    new = [await headers_for(world.service, "payments", {"account": f"a{i}"}, session_id=f"n{i}") for i in range(4)]
    assert new_kid != old_kid
    # A verifier that never saw the old key (fresh cache) must still find it in the JWKS.
    world.verifier._keys.clear()
    calls = [pay(world.upstream, h, {"account": f"a{i % 4}", "amount": 1}) for i, h in enumerate(old + new)]
    results = await asyncio.gather(*calls)
    assert all(r.startswith("paid") for r in results), results
    async with aiohttp.ClientSession() as http, http.get(f"{world.gateway}/.well-known/jwks.json") as resp:
        kids = [k["kid"] for k in (await resp.json())["keys"]]
    assert kids == [new_kid, old_kid]  # newest first; the newest signs
    assert len({c["jti"] for c in world.verifier.accepted}) == 8


async def test_revocation_visible_from_second_replica(tmp_path, redis_server) -> None:
    store = {"redis": {"url": redis_server.url}}
    defs = upstream_defs("http://127.0.0.1:9/mcp")
    # Two replicas behind one public URL, sharing the key directory and one real redis-server.
    configs = [make_config(tmp_path, defs, port=port, public_url="http://customs.test", store=store)
               for port in (1, 2)]
    connections = [RedisConnection(c.store.redis) for c in configs]  # type: ignore[union-attr]
    for conn in connections:
        await conn.start()
    try:
        a = CredentialService(configs[0], redis=connections[0])
        b = CredentialService(configs[1], redis=connections[1])
        await a.start()
        await b.start()
        headers = await headers_for(a, "payments", {"account": "acme-1"})
        token = headers["Authorization"].removeprefix("Bearer ")
        assert (await b.introspector.introspect(token))["active"] is True
        assert await a.session_ended("sess-1") != []
        assert await b.introspector.introspect(token) == {"active": False}
        # b never saw the task, yet refuses to mint for it: the ended marker is shared too.
        with pytest.raises(GatewayError) as err:
            await headers_for(b, "payments", {"account": "acme-1"})
        assert err.value.reason == "credential_unavailable"
        await a.close()
        await b.close()
    finally:
        for conn in connections:
            await conn.close()
