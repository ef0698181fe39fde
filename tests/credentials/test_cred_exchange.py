"""Token exchange (RFC 8693) against a real aiohttp token endpoint (authz_server.py): request shape, caching per
task, failures."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any
from urllib.parse import unquote

import jwt
import pytest

from gateway.context import Actor
from gateway.credentials import CredentialService
from gateway.errors import GatewayError
from tests.credentials.authz_server import TokenEndpoint
from tests.credentials.helpers import agent, call, make_config
from tests.credentials.upstream import bound_socket

CLIENT_SECRET = "cl!ent:secret/with&odd=chars"
AGENT_TOKEN = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhZ2VudCJ9.c2lnbmF0dXJl"


@pytest.fixture
async def service(tmp_path, clock, endpoint: TokenEndpoint) -> AsyncIterator[CredentialService]:
    upstreams = [{"name": "crm", "url": "http://127.0.0.1:9003/mcp", "credentials": {
        "mode": "token_exchange", "token_endpoint": endpoint.url, "client_id": "customs gw",
        "client_secret": CLIENT_SECRET, "scope": "crm.read", "audience": "https://crm.example"}}]
    svc = CredentialService(make_config(tmp_path, upstreams), clock=clock)
    await svc.start()
    yield svc
    await svc.close()


async def exchange(svc: CredentialService, **kw: Any) -> dict[str, str]:
    ctx = call("crm", "find", principal=agent(AGENT_TOKEN), **kw)
    await svc.stage(ctx)
    assert ctx.credential_mode == "token_exchange" and ctx.credential_audience == "https://crm.example"
    return ctx.upstream_headers


async def test_request_shape(service: CredentialService, endpoint: TokenEndpoint) -> None:
    assert await exchange(service) == {"Authorization": "Bearer exchanged-1"}
    (req,) = endpoint.requests
    form = req["form"]
    assert form["grant_type"] == "urn:ietf:params:oauth:grant-type:token-exchange"
    assert form["subject_token"] == AGENT_TOKEN
    assert form["subject_token_type"] == "urn:ietf:params:oauth:token-type:jwt"
    assert form["actor_token_type"] == "urn:ietf:params:oauth:token-type:jwt"
    assert form["audience"] == "https://crm.example" and form["scope"] == "crm.read"
    key = service.keys.current
    actor = jwt.decode(form["actor_token"], key.private_key.public_key(), algorithms=[key.algorithm],
                       audience=endpoint.url, options={"verify_exp": False, "verify_iat": False})
    assert actor["sub"] == actor["iss"] == service.issuer
    scheme, _, encoded = req["authorization"].partition(" ")
    client_id, _, secret = base64.b64decode(encoded).decode().partition(":")
    assert scheme == "Basic" and unquote(client_id) == "customs gw" and unquote(secret) == CLIENT_SECRET


async def test_cached_per_task_until_near_expiry(service: CredentialService, endpoint: TokenEndpoint,
                                                 clock) -> None:
    assert (await exchange(service))["Authorization"] == "Bearer exchanged-1"
    assert (await exchange(service))["Authorization"] == "Bearer exchanged-1"
    assert (await exchange(service, session_id="other"))["Authorization"] == "Bearer exchanged-2"
    clock.advance(115)  # within the refresh margin of the 120 s token
    assert (await exchange(service))["Authorization"] == "Bearer exchanged-3"
    await service.session_ended("sess-1")
    with pytest.raises(GatewayError):  # the ended task gets nothing, cached or new
        await exchange(service)
    assert len(endpoint.requests) == 3


@pytest.mark.parametrize("reply", [(400, {"error": "invalid_grant"}), (200, {"token_type": "Bearer"}),
                                   (200, "not json"), (500, "boom")])
async def test_endpoint_failures(service: CredentialService, endpoint: TokenEndpoint, reply, caplog) -> None:
    endpoint.reply = reply
    with caplog.at_level(logging.WARNING), pytest.raises(GatewayError) as err:
        await exchange(service)
    assert err.value.reason == "credential_unavailable"
    if reply[1] == {"error": "invalid_grant"}:
        assert err.value.data == {"oauth_error": "invalid_grant"}
    assert AGENT_TOKEN not in caplog.text and CLIENT_SECRET not in caplog.text


async def test_an_access_token_no_header_can_carry_is_refused(service: CredentialService, endpoint: TokenEndpoint,
                                                               caplog) -> None:
    """An access_token with a line break (RFC 6749 §A.12 allows printable ASCII only) was handed out as the header
    value; aiohttp then refused to send it and the call answered internal_error."""
    endpoint.reply = (200, '{"access_token": "abc\\r\\nX-Injected: 1", "expires_in": 60}')
    with caplog.at_level(logging.WARNING), pytest.raises(GatewayError) as err:
        await exchange(service)
    assert err.value.reason == "credential_unavailable" and "no header may" in caplog.text


async def test_the_agents_own_token_handed_back_is_never_sent_upstream(service: CredentialService,
                                                                      endpoint: TokenEndpoint, caplog) -> None:
    """An authorization server that answers the exchange with the subject token itself (a no-op exchange) would
    have the gateway send the agent's own token to the tool: refused and not cached, and the log says why without
    quoting it."""
    endpoint.reply = (200, json.dumps({"access_token": AGENT_TOKEN, "expires_in": 60}))
    for _ in range(2):  # not cached: each call asks again, and is refused again
        with caplog.at_level(logging.WARNING), pytest.raises(GatewayError) as err:
            await exchange(service)
        assert err.value.reason == "credential_unavailable"
    assert len(endpoint.requests) == 2
    assert "the agent's own token" in caplog.text and AGENT_TOKEN not in caplog.text


@pytest.mark.parametrize("expires_in", ["Infinity", "1e400", "-5", "NaN", "true", "10" * 200])
async def test_an_expires_in_that_is_no_lifetime_falls_back_to_ttl(service: CredentialService, endpoint: TokenEndpoint,
                                                                   clock, expires_in: str) -> None:
    """An infinite `expires_in` (the JSON parser reads Infinity and 1e400) was kept: the token was cached for ever
    and every use failed (credential_unavailable, the expiry could not be an integer); `true` read as one second.
    Anything but a positive finite number is now no lifetime, and the upstream's ttl_s (60 s here) applies."""
    endpoint.reply = (200, f'{{"access_token": "good-token", "expires_in": {expires_in}}}')
    assert await exchange(service) == {"Authorization": "Bearer good-token"}
    assert await exchange(service) == {"Authorization": "Bearer good-token"} and len(endpoint.requests) == 1
    clock.advance(55)  # within the refresh margin of a 60 s lifetime: exchanged again
    await exchange(service)
    assert len(endpoint.requests) == 2


async def test_endpoint_unreachable(tmp_path, clock) -> None:
    dead = bound_socket()  # bound, never listening: connections are refused
    upstreams = [{"name": "crm", "url": "http://127.0.0.1:9003/mcp", "credentials": {
        "mode": "token_exchange", "token_endpoint": f"http://127.0.0.1:{dead.getsockname()[1]}/t",
        "client_id": "gw"}}]
    svc = CredentialService(make_config(tmp_path, upstreams), clock=clock)
    await svc.start()
    try:
        with pytest.raises(GatewayError) as err:
            await exchange(svc)
        assert err.value.reason == "credential_unavailable"
    finally:
        await svc.close()
        dead.close()


async def test_no_agent_token(service: CredentialService, endpoint: TokenEndpoint) -> None:
    with pytest.raises(GatewayError) as err:
        await service.stage(call("crm", "find", principal=agent(None)))
    assert err.value.reason == "credential_unavailable" and endpoint.requests == []


def test_client_secret_is_a_known_secret(service: CredentialService) -> None:
    assert service.redactor.redact(f"secret is {CLIENT_SECRET}") == "secret is [REDACTED]"


async def test_cache_is_per_delegation_chain(service: CredentialService, endpoint: TokenEndpoint) -> None:
    """The same agent in the same session (task) with a token naming other actors gets its own exchange: a
    token issued for one subject token's `act` chain was handed out for another chain's calls."""
    first = agent(AGENT_TOKEN)
    other_chain = replace(first, token=AGENT_TOKEN + "x", chain=(Actor("spiffe://acme/untrusted"),))
    for principal in (first, other_chain, first):
        ctx = call("crm", "find", principal=principal)
        await service.stage(ctx)
    assert [r["form"]["subject_token"] for r in endpoint.requests] == [AGENT_TOKEN, AGENT_TOKEN + "x"]
