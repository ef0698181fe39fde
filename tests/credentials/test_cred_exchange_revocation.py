"""Exchanged tokens are revoked at the authorization server (RFC 7009) when their task ends: a real aiohttp AS.

Each way a task ends (session end, explicit end, idle expiry, shutdown) sends the AS one revocation per
token still valid, with the exchange's client authentication, in the background: a slow or dead AS never
delays a call or the end itself, and its failures are retried a bounded number of times, logged, counted.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import unquote

import pytest

from gateway.config import ConfigError, parse_config
from gateway.config.model import TelemetryConfig
from gateway.credentials import CredentialService
from gateway.credentials.tasks import explicit_task_id, session_task_id
from gateway.errors import GatewayError
from gateway.telemetry import Metrics
from tests.credentials.authz_server import TokenEndpoint
from tests.credentials.helpers import Clock, agent, make_config
from tests.credentials.test_cred_exchange import AGENT_TOKEN, CLIENT_SECRET, exchange
from tests.credentials.upstream import bound_socket

WAIT_S = 10.0  # an upper bound for things that happen at once; never reached when the code works


def crm(token_endpoint: str, revocation_endpoint: str | None) -> dict[str, Any]:
    credentials = {"mode": "token_exchange", "token_endpoint": token_endpoint, "client_id": "customs gw",
                   "client_secret": CLIENT_SECRET, "audience": "https://crm.example"}
    if revocation_endpoint is not None:
        credentials["revocation_endpoint"] = revocation_endpoint
    return {"name": "crm", "url": "http://127.0.0.1:9003/mcp", "credentials": credentials}


Build = Callable[..., Awaitable[CredentialService]]


@pytest.fixture
async def build(tmp_path, clock: Clock, endpoint: TokenEndpoint) -> AsyncIterator[Build]:
    """A started service for the crm upstream; `outcomes` collects (upstream, outcome) of each revocation."""
    started: list[CredentialService] = []

    async def make(outcomes: list[tuple[str, str]] | None = None, revocation_endpoint: str | None = "",
                   **extra: Any) -> CredentialService:
        url = endpoint.revocation_url if revocation_endpoint == "" else revocation_endpoint
        svc = CredentialService(make_config(tmp_path, [crm(endpoint.url, url)], **extra), clock=clock,
                                on_revocation=lambda *o: outcomes.append(o) if outcomes is not None else None)
        svc.exchanger.revoker.retry_delays = (0.01, 0.02)
        await svc.start()
        started.append(svc)
        return svc

    yield make
    if endpoint.revoke_gate is not None:
        endpoint.revoke_gate.set()
    for svc in started:
        await svc.close()


async def revoked_tokens(endpoint: TokenEndpoint, count: int) -> list[str]:
    """The tokens of the next `count` revocation requests, each checked for its form and client auth."""
    tokens = []
    for _ in range(count):
        request = await asyncio.wait_for(endpoint.revocations.get(), WAIT_S)
        form = request["form"]
        assert form["token_type_hint"] == "access_token" and set(form) == {"token", "token_type_hint"}
        scheme, _, encoded = request["authorization"].partition(" ")
        client_id, _, secret = base64.b64decode(encoded).decode().partition(":")
        assert scheme == "Basic" and unquote(client_id) == "customs gw" and unquote(secret) == CLIENT_SECRET
        tokens.append(form["token"])
    return sorted(tokens)


async def settled(svc: CredentialService) -> None:
    assert await svc.exchanger.revoker.wait_idle(WAIT_S) == set()


async def end(svc: CredentialService, clock: Clock, how: str) -> None:
    if how == "session_end":
        await svc.session_ended("sess-1")
    elif how == "explicit":
        await svc.end_task(explicit_task_id("order-42", agent(AGENT_TOKEN)))
    elif how == "idle_timeout":
        clock.advance(svc.tasks.idle_s)
        await svc.tasks.sweep()  # (or the sweeper's own pass, which ends it all the same)
    else:
        await svc.close()  # shutdown: waits (briefly) for the revocations it started


@pytest.mark.parametrize("how", ["session_end", "explicit", "idle_timeout", "shutdown"])
async def test_task_end_revokes_its_tokens(build: Build, endpoint: TokenEndpoint, clock: Clock, how: str) -> None:
    outcomes: list[tuple[str, str]] = []
    svc = await build(outcomes, tasks={"idle_s": 60})  # idle expiry well within the tokens' 120 s
    meta = None if how == "session_end" else {"customs/task": "order-42"}
    assert (await exchange(svc, meta=meta))["Authorization"] == "Bearer exchanged-1"
    assert (await exchange(svc, session_id="other"))["Authorization"] == "Bearer exchanged-2"  # another task
    await end(svc, clock, how)
    expected = ["exchanged-1", "exchanged-2"] if how == "shutdown" else ["exchanged-1"]  # shutdown ends all
    assert await revoked_tokens(endpoint, len(expected)) == expected
    await settled(svc)
    assert outcomes == [("crm", "ok")] * len(expected) and endpoint.revocations.empty()


async def test_a_refreshed_token_still_valid_is_revoked_too(build: Build, endpoint: TokenEndpoint,
                                                            clock: Clock) -> None:
    svc = await build()
    assert (await exchange(svc))["Authorization"] == "Bearer exchanged-1"
    clock.advance(115)  # within the refresh margin: exchanged-1 is no longer handed out, but valid for 5 s more
    assert (await exchange(svc))["Authorization"] == "Bearer exchanged-2"
    clock.advance(4)
    await svc.session_ended("sess-1")
    assert await revoked_tokens(endpoint, 2) == ["exchanged-1", "exchanged-2"]
    await settled(svc)


async def test_an_expired_token_is_not_sent(build: Build, endpoint: TokenEndpoint, clock: Clock) -> None:
    svc = await build()
    await exchange(svc)
    clock.advance(115)
    await exchange(svc)
    clock.advance(5)  # exchanged-1 has expired: the AS has nothing left to revoke for it
    await svc.session_ended("sess-1")
    assert await revoked_tokens(endpoint, 1) == ["exchanged-2"]
    await settled(svc)
    assert endpoint.revocations.empty()


async def test_end_and_calls_do_not_wait_for_the_server(build: Build, endpoint: TokenEndpoint) -> None:
    endpoint.revoke_gate = asyncio.Event()  # the AS takes the request and does not answer
    svc = await build()
    await exchange(svc)
    await asyncio.wait_for(svc.session_ended("sess-1"), WAIT_S)
    assert await revoked_tokens(endpoint, 1) == ["exchanged-1"]
    assert svc.exchanger.revoker.pending == 1  # still waiting for the AS's answer
    headers = await asyncio.wait_for(exchange(svc, session_id="sess-2"), WAIT_S)
    assert headers == {"Authorization": "Bearer exchanged-2"}
    endpoint.revoke_gate.set()
    await settled(svc)


@pytest.mark.parametrize(("status", "attempts"), [(503, 3), (500, 3), (400, 1)])
async def test_server_failures_are_retried_then_logged(build: Build, endpoint: TokenEndpoint, caplog,
                                                       status: int, attempts: int) -> None:
    endpoint.revoke_status = status
    outcomes: list[tuple[str, str]] = []
    svc = await build(outcomes)
    await exchange(svc)
    with caplog.at_level(logging.WARNING, "customs.credentials"):
        await svc.session_ended("sess-1")
        assert await revoked_tokens(endpoint, attempts) == ["exchanged-1"] * attempts
        await settled(svc)
    assert outcomes == [("crm", "failed")] and endpoint.revocations.empty()
    assert f"token revocation for upstream crm failed after {attempts} attempt(s): HTTP {status}" in caplog.text
    assert "exchanged-1" not in caplog.text and CLIENT_SECRET not in caplog.text


async def test_unreachable_server_is_logged_and_calls_go_on(build: Build, endpoint: TokenEndpoint, caplog) -> None:
    dead = bound_socket()  # bound, never listening: connections are refused
    outcomes: list[tuple[str, str]] = []
    svc = await build(outcomes, revocation_endpoint=f"http://127.0.0.1:{dead.getsockname()[1]}/revoke")
    try:
        await exchange(svc)
        with caplog.at_level(logging.WARNING, "customs.credentials"):
            await svc.session_ended("sess-1")
            assert (await exchange(svc, session_id="sess-2"))["Authorization"] == "Bearer exchanged-2"
            await settled(svc)
    finally:
        dead.close()
    assert outcomes == [("crm", "failed")]
    assert "token revocation for upstream crm failed after 3 attempt(s): ClientConnectorError" in caplog.text


async def test_token_obtained_while_its_task_ends_is_revoked_not_used(build: Build, endpoint: TokenEndpoint) -> None:
    """The task ends while its exchange awaits the AS: the token that arrives after the end would otherwise be
    handed out, cached for an ended task, and never revoked."""
    endpoint.token_gate = asyncio.Event()
    svc = await build()
    pending = asyncio.create_task(exchange(svc))
    await asyncio.wait_for(endpoint.token_arrived.wait(), WAIT_S)
    await svc.session_ended("sess-1")
    endpoint.token_gate.set()
    with pytest.raises(GatewayError) as err:
        await asyncio.wait_for(pending, WAIT_S)
    assert err.value.reason == "credential_unavailable" and err.value.data == {"task_ended": True}
    assert await revoked_tokens(endpoint, 1) == ["exchanged-1"]
    assert len(svc.exchanger._cache) == 0


async def test_nothing_is_sent_without_a_revocation_endpoint(build: Build, endpoint: TokenEndpoint) -> None:
    svc = await build(revocation_endpoint=None)
    await exchange(svc)
    await svc.end_task(session_task_id("sess-1"), "session_end")
    assert svc.exchanger.revoker.pending == 0 and endpoint.revocations.empty()
    assert svc.exchanger._issued == {}  # and nothing is kept for it


def test_config_revocation_endpoint_is_checked_at_its_path() -> None:
    def problems(credentials: dict[str, Any]) -> list[str]:
        with pytest.raises(ConfigError) as info:
            parse_config({"upstreams": [{"name": "a", "url": "http://h/mcp", "credentials": credentials}]})
        return info.value.problems

    exchange_creds = crm("https://idp.test/token", "ftp://idp.test/revoke")["credentials"]
    assert problems(exchange_creds) == [
        "upstreams[0].credentials.revocation_endpoint: not a URL (expected http:// or https:// with a host)"]
    assert problems({"mode": "minted", "revocation_endpoint": "https://idp.test/revoke"}) == [
        "upstreams[0].credentials.revocation_endpoint: only used by mode token_exchange (mode is minted)"]
    ok = parse_config({"upstreams": [crm("https://idp.test/token", "https://idp.test/revoke")]})
    assert ok.upstreams[0].credentials.revocation_endpoint == "https://idp.test/revoke"


def test_outcomes_are_counted_as_a_metric() -> None:
    metrics = Metrics(TelemetryConfig(), env={})
    metrics.token_revoked("crm", "ok")
    metrics.token_revoked("crm", "failed")
    metrics.token_revoked("crm", "failed")
    text = metrics.prometheus_text().decode()
    assert re.search(r'customs_credential_revocations_total\{[^}]*customs_outcome="failed"[^}]*\} 2\.0', text)
    assert re.search(r'customs_credential_revocations_total\{[^}]*customs_upstream="crm"[^}]*\} 1\.0', text)
