"""SIGTERM exits within `listen.drain_timeout_s` when the authorization server never answers a token revocation.

Shutdown ends every task, and each exchanged token still valid is revoked at the upstream's `revocation_endpoint`
(RFC 7009). Shutdown waited up to 5 s for those revocations whatever the drain deadline was, so against a mute
authorization server a gateway told to drain in 1.5 s exited seconds past it. They now share what is left of the
deadline, as shutdown's Redis work and upstream session closes do; the unfinished ones are logged (how many).
A real gateway process (and a CredentialService in the test's loop), a real aiohttp authorization server
(tests/credentials/authz_server.py) and upstream.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.credentials.authz_server import TokenEndpoint
from tests.credentials.helpers import payments_server
from tests.credentials.test_cred_exchange import exchange
from tests.credentials.test_cred_exchange_revocation import Build, build  # noqa: F401  (fixture)
from tests.hardening.conftest import RawClient
from tests.support.processes import seconds_to_exit_after_sigterm
from tests.support.servers import run_http_server
from tests.support.tokens import TestIssuer

pytestmark = pytest.mark.asyncio
DRAIN_S = 1.5
SHOPPER = "spiffe://acme.test/agent/shopper"


async def test_sigterm_exits_within_the_deadline_although_the_authorization_server_never_answers_a_revocation(
        spawn_gateway: Any, permissive_policies: Path, tmp_path: Path, endpoint: TokenEndpoint) -> None:
    endpoint.revoke_gate = asyncio.Event()  # takes every revocation and never answers it (set only to clean up)
    idp = TestIssuer(tmp_path, algorithms=("ES256",))
    try:
        async with run_http_server(payments_server()) as crm:
            gw = await spawn_gateway({
                "upstreams": [{"name": "crm", "url": crm, "credentials": {
                    "mode": "token_exchange", "token_endpoint": endpoint.url, "client_id": "customs",
                    "client_secret": "s3cret", "revocation_endpoint": endpoint.revocation_url}}],
                "identity": {"mode": "jwt", "issuers": [idp.config()]},
                "policies": {"dir": str(permissive_policies), "watch": False},
                "signing": {"key_dir": str(tmp_path / "keys")}, "listen": {"drain_timeout_s": DRAIN_S}})
            token = idp.mint(SHOPPER, aud=gw.mcp, alg="ES256", tenant="acme")
            async with aiohttp.ClientSession() as http:
                client = RawClient(http, gw.mcp, {"Authorization": f"Bearer {token}"})
                await client.initialize()
                _, _, body = await client.call("crm__pay", {"account": "a-1", "amount": 1})
                assert body["result"]["content"][0]["text"] == "paid 1 to a-1", body
                assert endpoint.requests and endpoint.revocations.empty()  # exchanged; nothing revoked yet
                exited_after = await seconds_to_exit_after_sigterm(gw.proc)
    finally:
        endpoint.revoke_gate.set()
    assert gw.proc.returncode == 0, gw.log()
    assert exited_after < DRAIN_S + 0.5, f"exited {exited_after:.1f} s after SIGTERM, drain_timeout_s is {DRAIN_S}"
    revoked = endpoint.revocations.qsize()
    assert revoked >= 1  # shutdown's task ends sent them; only their answers were not waited for past the deadline
    assert f"{revoked} token revocation(s) unfinished at shutdown" in gw.log(), gw.log()


async def test_close_gives_up_on_unanswered_revocations_at_the_shutdown_bound(
        build: Build, endpoint: TokenEndpoint, caplog: pytest.LogCaptureFixture) -> None:  # noqa: F811
    endpoint.revoke_gate = asyncio.Event()  # never answers (the fixture sets it when the test is done)
    svc = await build()
    await exchange(svc)
    svc.exchanger.revoker.shutdown_bound = asyncio.get_running_loop().time() + 0.5
    began = time.monotonic()
    with caplog.at_level(logging.WARNING, "customs.credentials"):
        await svc.close()  # shutdown: ends the task, whose token's revocation the server takes and never answers
    took = time.monotonic() - began
    assert took < 1.5, f"close took {took:.1f} s, its bound was 0.5 s away"  # not the 5 s close_wait_s
    assert (await asyncio.wait_for(endpoint.revocations.get(), 5))["form"]["token"] == "exchanged-1"
    assert "1 token revocation(s) unfinished at shutdown" in caplog.text


async def test_revocations_still_get_a_moment_when_the_bound_has_passed(
        build: Build, endpoint: TokenEndpoint) -> None:  # noqa: F811
    """The task ends before close() can reach the bound (a hung Redis holds each until its cut-off): their
    revocations begin then, and a server that answers still gets them (CLOSE_MIN_S)."""
    outcomes: list[tuple[str, str]] = []
    svc = await build(outcomes)
    await exchange(svc)
    svc.exchanger.revoker.shutdown_bound = asyncio.get_running_loop().time() - 1.0
    await svc.close()
    assert outcomes == [("crm", "ok")]
    assert (await asyncio.wait_for(endpoint.revocations.get(), 5))["form"]["token"] == "exchanged-1"
