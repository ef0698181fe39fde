"""Issuers are compared exactly (OpenID Connect), so `https://tenant.auth0.com/` (Auth0's issuers end in a slash)
configured as `https://tenant.auth0.com` refuses every token. The refusal named no issuer, and the operator could
not tell which side to fix: one that differs from a configured issuer only by a trailing slash is named."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.errors import GatewayError
from tests.identity.conftest import AUDIENCE, MakeIdentifier, bearer
from tests.support.tokens import TestIssuer


@pytest.mark.parametrize(("configured", "sent"), [("https://idp.test", "https://idp.test/"),
                                                  ("https://idp.test/", "https://idp.test")])
async def test_an_issuer_differing_by_a_trailing_slash_is_named(tmp_path: Path, make_identifier: MakeIdentifier,
                                                                configured: str, sent: str) -> None:
    issuer = TestIssuer(tmp_path, issuer=configured, algorithms=("ES256",))
    identifier = await make_identifier(issuer.config())
    token = issuer.mint("spiffe://acme.test/agent/a", aud=AUDIENCE, alg="ES256", iss=sent)
    with pytest.raises(GatewayError) as caught:
        await identifier.identify(bearer(token), None)
    assert caught.value.reason == "unauthenticated"
    assert caught.value.message == (f"Token issuer not accepted: {sent!r} is not the configured {configured!r} "
                                    "(issuers are compared exactly, trailing slash included)")


async def test_another_issuer_is_not_named(tmp_path: Path, make_identifier: MakeIdentifier) -> None:
    issuer = TestIssuer(tmp_path, algorithms=("ES256",))
    identifier = await make_identifier(issuer.config())
    token = issuer.mint("a", aud=AUDIENCE, alg="ES256", iss="https://evil.example/\n")
    with pytest.raises(GatewayError) as caught:
        await identifier.identify(bearer(token), None)
    assert caught.value.message == "Token issuer not accepted"


async def test_an_audience_refusal_names_the_audience_expected(tmp_path: Path, make_identifier: MakeIdentifier) -> None:
    """The audience is public (the `resource` of the RFC 9728 metadata): naming it shows a trailing slash or a
    missing /mcp at once, where `Token audience does not name this gateway` left the operator guessing."""
    issuer = TestIssuer(tmp_path, algorithms=("ES256",))
    identifier = await make_identifier(issuer.config())
    for aud in (AUDIENCE + "/", AUDIENCE.removesuffix("/mcp"), [AUDIENCE + "/", "https://other.example"]):
        token = issuer.mint("a", aud=aud, alg="ES256")
        with pytest.raises(GatewayError) as caught:
            await identifier.identify(bearer(token), None)
        assert caught.value.message == f"Token audience does not name this gateway (it must name {AUDIENCE!r})"
    # /mcp/{upstream} also takes its own resource, but the refusal names only the configured audience: the endpoint's
    # would echo the path asked for, and an unknown upstream is refused exactly as a known one (no enumeration).
    for path in ("/mcp/payments", "/mcp/nosuchupstream"):
        with pytest.raises(GatewayError) as caught:
            await identifier.identify(bearer(issuer.mint("a", aud="https://x.example", alg="ES256")), None, path)
        assert caught.value.message == f"Token audience does not name this gateway (it must name {AUDIENCE!r})"
