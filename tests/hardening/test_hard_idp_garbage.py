"""The gateway's own HTTP fetches from an identity provider answered with garbage (garbage_upstream.py's GARBAGE):
the JWKS download behind a `jwks_url` issuer and the OAuth token exchange of a `token_exchange` upstream. A token
whose keys could not be fetched is refused (401, JSON) and /readyz says why (503, JSON); an exchange that failed is
`credential_unavailable`; never aiohttp's text/plain 500 nor an ERROR in the log, and the gateway goes on serving.
(The upstream-facing paths are test_hard_upstream_garbage.py's.)"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.credentials import CredentialService
from gateway.errors import GatewayError
from tests.credentials.helpers import agent, call, make_config
from tests.hardening.garbage_upstream import GARBAGE, GarbageUpstream, garbage_upstream
from tests.identity.conftest import AUDIENCE, bearer
from tests.support.tokens import TestIssuer

INIT = {"jsonrpc": "2.0", "id": 0, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "g", "version": "1"}}}


def no_errors(caplog: pytest.LogCaptureFixture) -> None:
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [(r.name, r.getMessage()) for r in errors]


@pytest.mark.parametrize("kind", list(GARBAGE))
async def test_a_jwks_answered_with_garbage_refuses_the_token_cleanly(start_gateway: Any, permissive_policies: Path,
                                                                     tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                                     kind: str) -> None:
    caplog.set_level(logging.INFO)
    up = GarbageUpstream(garbage={"GET": GARBAGE[kind]})
    async with garbage_upstream(up), aiohttp.ClientSession() as http:
        issuer = TestIssuer(tmp_path)
        issuer.url = up.url.replace("/mcp", "/jwks.json")
        gw = await start_gateway({"upstreams": [{"name": "g", "url": up.url}],
                                  "identity": {"mode": "jwt", "issuers": [issuer.config(source="url",
                                                                                        audience=AUDIENCE)]},
                                  "policies": {"dir": str(permissive_policies), "watch": False}})
        token = issuer.mint("spiffe://acme.test/agent/a", aud=AUDIENCE, tenant="acme")
        headers = {**bearer(token), "Accept": "application/json, text/event-stream"}
        for _ in range(2):  # refused, and refused again: the gateway goes on serving
            async with asyncio.timeout(15), http.post(f"{gw.mcp}/g", json=INIT, headers=headers) as resp:
                assert resp.status == 401 and resp.content_type == "application/json", await resp.text()
        async with asyncio.timeout(15), http.get(f"{gw.url}/readyz") as resp:
            body = await resp.json()
            assert resp.status == 503 and body["checks"]["identity"]["ready"] is False, body
        assert "GET" in up.seen
    no_errors(caplog)


@pytest.mark.parametrize("kind", list(GARBAGE))
async def test_a_token_endpoint_answering_garbage_is_credential_unavailable(tmp_path: Path,
                                                                           caplog: pytest.LogCaptureFixture,
                                                                           kind: str) -> None:
    caplog.set_level(logging.INFO)
    up = GarbageUpstream(garbage={"form": GARBAGE[kind]})
    async with garbage_upstream(up):
        upstreams = [{"name": "crm", "url": "http://127.0.0.1:9/mcp", "credentials": {
            "mode": "token_exchange", "token_endpoint": up.url.replace("/mcp", "/token"), "client_id": "customs",
            "client_secret": "s3cret"}}]
        service = CredentialService(make_config(tmp_path, upstreams))
        await service.start()
        try:
            with pytest.raises(GatewayError) as err:
                async with asyncio.timeout(15):
                    await service.stage(call("crm", "find", principal=agent("agent-token")))
            assert err.value.reason == "credential_unavailable"
            up.garbage.clear()  # the endpoint behaves: the next exchange succeeds
            ctx = call("crm", "find", principal=agent("agent-token"), session_id="sess-2")
            await service.stage(ctx)
            assert ctx.upstream_headers == {"Authorization": "Bearer exchanged"}
        finally:
            await service.close()
        assert up.seen.count("form") == 2
    no_errors(caplog)
