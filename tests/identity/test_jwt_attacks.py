"""Every case of the JWT attack corpus is answered 401 with a WWW-Authenticate challenge."""

from __future__ import annotations

import pytest

from gateway.errors import GatewayError
from gateway.identity import reject_query_token
from tests.identity.conftest import AUDIENCE, RESOURCE, MakeIdentifier
from tests.identity.corpus import ATTACKS, AttackCase
from tests.support.tokens import TestIssuer

CHALLENGE = f'Bearer resource_metadata="{RESOURCE}/.well-known/oauth-protected-resource/mcp"'


@pytest.mark.parametrize("case", ATTACKS, ids=[case.id for case in ATTACKS])
async def test_attack_is_unauthenticated(case: AttackCase, issuer: TestIssuer,
                                         make_identifier: MakeIdentifier) -> None:
    identifier = await make_identifier(issuer.config())
    request = case.build(issuer, AUDIENCE)
    with pytest.raises(GatewayError) as caught:
        reject_query_token(request.query, RESOURCE)
        await identifier.identify(request.headers, None)
    error = caught.value
    assert error.reason == "unauthenticated"
    assert error.http_status == 401
    assert case.expect in error.message, error.message
    assert error.headers["WWW-Authenticate"].startswith(CHALLENGE)
    authorization = request.headers.get("Authorization", "")
    if request.query or (authorization[:7].lower() == "bearer " and authorization[7:].strip()):
        assert 'error="invalid_' in error.headers["WWW-Authenticate"]
    else:  # RFC 6750 §3.1: no error code without a bearer credential (none, an empty one, or another scheme)
        assert error.headers["WWW-Authenticate"] == CHALLENGE


async def test_corpus_control_token_is_accepted(issuer: TestIssuer, make_identifier: MakeIdentifier) -> None:
    """The corpus is only meaningful if the same issuer's honest token passes."""
    identifier = await make_identifier(issuer.config())
    token = issuer.mint("spiffe://acme.test/agent/ok", aud=AUDIENCE)
    principal = await identifier.identify({"Authorization": f"Bearer {token}"}, None)
    assert principal.id == "spiffe://acme.test/agent/ok"


async def test_rejection_never_echoes_the_token(issuer: TestIssuer, make_identifier: MakeIdentifier) -> None:
    identifier = await make_identifier(issuer.config())
    token = issuer.mint("spiffe://acme.test/agent/x", aud="https://other.example/mcp")
    with pytest.raises(GatewayError) as caught:
        await identifier.identify({"Authorization": f"Bearer {token}"}, None)
    assert token not in str(caught.value) and token.split(".")[1] not in caught.value.message
