"""An issuer whose keys fit none of its `algorithms` refuses every token: /readyz says so (checks.identity)
and the log says it once per key set. Real aiohttp JWKS server, real gateway; a key file rewritten so."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.demo.servers import inventory_server
from gateway.errors import GatewayError
from tests.conftest import RunningGateway
from tests.identity.conftest import AUDIENCE, MakeIdentifier, bearer
from tests.support.servers import run_http_server
from tests.support.tokens import TestIssuer, generate_key

SHOPPER = "spiffe://acme.test/agent/shopper"
INITIALIZE = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
              "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                         "clientInfo": {"name": "t", "version": "1"}}}


@pytest.fixture
async def rsa_only(tmp_path: Path) -> AsyncIterator[TestIssuer]:
    issuer = TestIssuer(tmp_path, algorithms=("RS256",))
    await issuer.serve()
    yield issuer
    await issuer.close()


def unfit_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "customs.identity.jwks" and "no key fits" in r.getMessage()]


async def readyz(http: aiohttp.ClientSession, gw: RunningGateway) -> tuple[int, dict[str, Any]]:
    async with http.get(f"{gw.url}/readyz") as response:
        return response.status, await response.json()


async def initialize(http: aiohttp.ClientSession, gw: RunningGateway, token: str) -> int:
    headers = {**bearer(token), "Accept": "application/json, text/event-stream"}
    async with http.post(gw.mcp, json=INITIALIZE, headers=headers) as response:
        return response.status


async def test_a_jwks_url_whose_keys_fit_no_algorithm_is_not_ready_and_says_why(
        rsa_only: TestIssuer, start_gateway: Callable[[dict[str, Any]], Awaitable[RunningGateway]],
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "customs.identity.jwks")
    # jwks_refresh_s (and with it the cool-down) tiny: each probe below fetches the same key set again.
    issuer = {**rsa_only.config(source="url", algorithms=["ES256"], audience=AUDIENCE), "jwks_refresh_s": 0.001}
    async with run_http_server(inventory_server()) as upstream, aiohttp.ClientSession() as http:
        gw = await start_gateway({"listen": {"public_url": "http://gw.test:8700"},
                                  "upstreams": [{"name": "inventory", "url": upstream}],
                                  "identity": {"mode": "jwt", "issuers": [issuer]}})
        # Every token is refused, whatever it is signed with: RS256 is not allowed, ES256 has no key.
        assert await initialize(http, gw, rsa_only.mint(SHOPPER, aud=AUDIENCE, alg="RS256")) == 401
        # On the old code: 200, ready, checks.identity {url: "ok"}.
        status, body = await readyz(http, gw)
        assert status == 503 and not body["checks"]["identity"]["ready"], body
        detail = body["checks"]["identity"]["detail"][rsa_only.url]
        assert detail == (f"{rsa_only.url}: no key fits the issuer's algorithms ES256 "
                          f"(keys: idp-rs256-1: RSA alg RS256)"), detail
        fetched = rsa_only.fetches
        for _ in range(3):  # each probe refetches in the background (so a fixed IdP is seen): the same set
            await readyz(http, gw)
            await gw.gateway.parts.identifier.settle()
        assert rsa_only.fetches > fetched
        assert len(unfit_warnings(caplog)) == 1, unfit_warnings(caplog)  # once per key set, not per fetch

        # The IdP publishes an ES256 key: the next probe fetches it, the one after is ready.
        rsa_only.keys["ES256"] = generate_key("ES256", "idp-es256-1")
        await readyz(http, gw)
        await gw.gateway.parts.identifier.settle()
        status, body = await readyz(http, gw)
        assert status == 200 and body["checks"]["identity"] == {"ready": True, "detail": {rsa_only.url: "ok"}}, body
        assert await initialize(http, gw, rsa_only.mint(SHOPPER, aud=AUDIENCE, alg="ES256")) == 200


async def test_a_jwks_file_rewritten_with_keys_that_fit_no_algorithm_is_not_ready(
        tmp_path: Path, make_identifier: MakeIdentifier, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "customs.identity.jwks")
    issuer = TestIssuer(tmp_path, algorithms=("ES256",))
    identifier = await make_identifier(issuer.config(source="file", algorithms=["ES256"]))
    assert await identifier.readiness() == (True, "ok")
    issuer.keys = {"RS256": generate_key("RS256", "idp-rs256-1")}  # rotated to a key of the wrong type
    issuer.write_jwks()
    unknown = generate_key("ES256", "idp-es256-2")
    with pytest.raises(GatewayError, match="signing key"):  # its unknown kid re-reads the file
        await identifier.identify(bearer(issuer.mint(SHOPPER, aud=AUDIENCE, alg="ES256", key=unknown)), None)
    ready, detail = await identifier.readiness()
    path = str(issuer.jwks_path)
    assert not ready and detail == {path: f"{path}: no key fits the issuer's algorithms ES256 "
                                          f"(keys: idp-rs256-1: RSA alg RS256)"}, detail
    await identifier.readiness()
    assert len(unfit_warnings(caplog)) == 1
