"""mTLS: a real TLS listener with a client CA; the SVID's URI SAN becomes (or must match) the principal."""

from __future__ import annotations

import json
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.errors import GatewayError
from gateway.identity import JwtIdentifier
from gateway.identity.spiffe import uri_sans_from_der
from tests.identity.certs import Issued, client_context, make_ca, make_leaf, server_context
from tests.identity.conftest import AUDIENCE, Clock, MakeIdentifier
from tests.support.tokens import TestIssuer

AGENT = "spiffe://acme.test/agent/shopper"
Call = Callable[..., Awaitable[tuple[int, dict[str, Any]]]]


@pytest.fixture(scope="module")
def ca() -> Issued:
    return make_ca()


@pytest.fixture
def wall() -> Clock:
    """The identifier's wall clock (the TLS handshake keeps the real one)."""
    return Clock(time.time())


@pytest.fixture
async def tls_call(tmp_path: Path, ca: Issued, issuer: TestIssuer, make_identifier: MakeIdentifier,
                   wall: Clock) -> AsyncIterator[Call]:
    """A TLS server (client CA = `ca`) whose handler runs identify(); returns a caller taking a client leaf."""
    identifier: JwtIdentifier = await make_identifier(issuer.config(), agents={AGENT: {"tenant": "acme"}},
                                                      clock=wall)

    async def handler(request: web.Request) -> web.Response:
        peer = request.transport.get_extra_info("peercert") if request.transport else None
        ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
        der = ssl_object.getpeercert(binary_form=True) if ssl_object else None
        try:
            principal = await identifier.identify(request.headers, peer)
        except GatewayError as exc:
            return web.json_response({"message": exc.message, "www": exc.headers.get("WWW-Authenticate")},
                                     status=exc.http_status)
        return web.json_response({"id": principal.id, "issuer": principal.issuer,
                                  "attributes": principal.attributes, "expires_at": principal.expires_at,
                                  "der_sans": uri_sans_from_der(der) if der else []})

    app = web.Application()
    app.router.add_get("/whoami", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    await web.SockSite(runner, sock, ssl_context=server_context(tmp_path, ca)).start()

    async def call(leaf: Issued | None, token: str | None = None) -> tuple[int, dict[str, Any]]:
        context = client_context(tmp_path, ca, leaf)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with aiohttp.ClientSession() as http, \
                http.get(f"https://127.0.0.1:{port}/whoami", ssl=context, headers=headers) as response:
            return response.status, json.loads(await response.text())

    yield call
    await runner.cleanup()


async def test_mtls_only_principal_from_san(tls_call: Call, ca: Issued) -> None:
    leaf = make_leaf(ca, uris=[AGENT], dns=[])
    status, body = await tls_call(leaf)
    assert status == 200
    assert (body["id"], body["issuer"], body["attributes"]) == (AGENT, "mtls", {"tenant": "acme"})
    assert body["expires_at"] == pytest.approx(leaf.cert.not_valid_after_utc.timestamp(), abs=1)
    assert body["der_sans"] == [AGENT]


async def test_svid_that_expired_after_the_handshake_is_refused(tls_call: Call, ca: Issued, issuer: TestIssuer,
                                                                  wall: Clock) -> None:
    """TLS checks the validity period only at the handshake; a kept-alive connection outlives the SVID, and its
    requests went on identifying as the SPIFFE ID (alone or with a token naming it)."""
    leaf = make_leaf(ca, uris=[AGENT], dns=[])
    wall.now = leaf.cert.not_valid_after_utc.timestamp() + 1  # as on a connection opened before notAfter
    status, body = await tls_call(leaf)
    assert (status, body["message"]) == (401, "Client certificate has expired")
    status, body = await tls_call(leaf, issuer.mint(AGENT, aud=AUDIENCE, exp=int(wall.now) + 300))
    assert (status, body["message"]) == (401, "Client certificate has expired")
    wall.now -= 2
    assert (await tls_call(leaf))[0] == 200


async def test_token_and_matching_svid(tls_call: Call, ca: Issued, issuer: TestIssuer) -> None:
    status, body = await tls_call(make_leaf(ca, uris=[AGENT], dns=[]), issuer.mint(AGENT, aud=AUDIENCE,
                                                                                     tenant="acme"))
    assert (status, body["id"], body["issuer"]) == (200, AGENT, issuer.issuer)


async def test_token_subject_must_match_svid(tls_call: Call, ca: Issued, issuer: TestIssuer) -> None:
    token = issuer.mint("spiffe://acme.test/agent/other", aud=AUDIENCE)
    status, body = await tls_call(make_leaf(ca, uris=[AGENT], dns=[]), token)
    assert status == 401 and "does not match" in body["message"]
    assert 'error="invalid_token"' in body["www"]


async def test_person_token_over_workload_certificate(tls_call: Call, ca: Issued, issuer: TestIssuer) -> None:
    status, body = await tls_call(make_leaf(ca, uris=[AGENT], dns=[]), issuer.mint("alice", aud=AUDIENCE))
    assert (status, body["id"]) == (200, "alice")


async def test_certificate_with_two_uri_sans_is_not_an_svid(tls_call: Call, ca: Issued) -> None:
    status, body = await tls_call(make_leaf(ca, uris=[AGENT, "spiffe://acme.test/agent/b"], dns=[]))
    assert status == 401 and "SVID" in body["message"]


async def test_certificate_without_spiffe_san_needs_a_token(tls_call: Call, ca: Issued) -> None:
    status, body = await tls_call(make_leaf(ca, uris=[], dns=["agent.local"]))
    assert status == 401 and body["message"] == "Bearer token required"


async def test_no_client_certificate_needs_a_token(tls_call: Call) -> None:
    status, _ = await tls_call(None)
    assert status == 401


async def test_certificate_from_another_ca_is_refused_by_tls(tls_call: Call) -> None:
    stranger = make_leaf(make_ca("stranger"), uris=[AGENT], dns=[])
    with pytest.raises((aiohttp.ClientError, ssl.SSLError)):
        await tls_call(stranger)


async def test_peer_certificate_ignored_when_mtls_disabled(issuer: TestIssuer, make_identifier: MakeIdentifier) -> None:
    identifier = await make_identifier(issuer.config(), accept_mtls=False)
    cert = {"subjectAltName": (("URI", AGENT),), "notAfter": "Jan  1 00:00:00 2040 GMT"}
    with pytest.raises(GatewayError, match="Bearer token required"):
        await identifier.identify({}, cert)
