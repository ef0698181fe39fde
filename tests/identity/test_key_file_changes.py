"""A key file changed under a running gateway: a key taken out of a `jwks_file` stops verifying, and a replaced
`pem_file` verifies with its new key, without a restart and without waiting for a token of an unknown kid."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp

from tests.identity.conftest import AUDIENCE, Clock, MakeIdentifier, bearer
from tests.identity.test_identify import SHOPPER, rejected
from tests.support.tokens import TestIssuer, generate_key

INITIALIZE = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
              "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                         "clientInfo": {"name": "t", "version": "1"}}}


async def test_a_key_removed_from_the_jwks_file_no_longer_verifies(tmp_path: Path,
                                                                   make_identifier: MakeIdentifier) -> None:
    """An operator takes a compromised key out of the file. The file was re-read only when a token named a kid
    the gateway did not have, so every token the removed key signed was accepted until a restart."""
    idp = TestIssuer(tmp_path, algorithms=("ES256", "EdDSA"))
    identifier = await make_identifier(idp.config(), monotonic=Clock(1000.0))
    assert (await identifier.identify(bearer(idp.mint(SHOPPER, aud=AUDIENCE, alg="ES256")), None)).id == SHOPPER
    removed = idp.keys.pop("ES256")
    idp.write_jwks()  # the EdDSA key stays, so no token of an unknown kid is needed
    assert "signing key" in await rejected(identifier, idp.mint(SHOPPER, aud=AUDIENCE, alg="ES256", key=removed))
    assert (await identifier.identify(bearer(idp.mint(SHOPPER, aud=AUDIENCE, alg="EdDSA")), None)).id == SHOPPER


async def test_a_replaced_pem_file_verifies_with_its_new_key(tmp_path: Path, make_identifier: MakeIdentifier) -> None:
    """A `pem_file` (one kid-less key) was read once: replacing it (a renewed certificate, a rotated key) refused
    every token of the new key (`Invalid token signature`) and kept accepting the old key's until a restart."""
    idp = TestIssuer(tmp_path, algorithms=("ES256",))
    identifier = await make_identifier(idp.config(source="pem"), monotonic=Clock(1000.0))
    old = idp.keys["ES256"]
    assert (await identifier.identify(bearer(idp.mint(SHOPPER, aud=AUDIENCE, alg="ES256")), None)).id == SHOPPER
    idp.rotate("ES256")
    idp.pem_path("ES256")  # the same path, now the new key
    assert (await identifier.identify(bearer(idp.mint(SHOPPER, aud=AUDIENCE, alg="ES256")), None)).id == SHOPPER
    assert "signature" in await rejected(identifier, idp.mint(SHOPPER, aud=AUDIENCE, alg="ES256", key=old))


async def test_a_gateway_refuses_the_removed_key_at_once(start_gateway: Any, permissive_policies: Path,
                                                         tmp_path: Path) -> None:
    """The same through a running gateway: 401 with the RFC 9728 challenge for a token of the removed key."""
    idp = TestIssuer(tmp_path, algorithms=("ES256", "EdDSA"))
    gw = await start_gateway({"upstreams": [{"name": "time", "command": ["python", "-m", "mcp_server_time"]}],
                              "identity": {"mode": "jwt", "issuers": [idp.config()]},
                              "policies": {"dir": str(permissive_policies)}})
    audience = gw.mcp

    async def status(token: str) -> tuple[int, str | None]:
        headers = {**bearer(token), "Accept": "application/json, text/event-stream"}
        async with aiohttp.ClientSession() as http, http.post(gw.mcp, json=INITIALIZE, headers=headers) as resp:
            return resp.status, resp.headers.get("WWW-Authenticate")

    assert (await status(idp.mint(SHOPPER, aud=audience, alg="ES256", tenant="acme")))[0] == 200
    removed = idp.keys.pop("ES256")
    idp.write_jwks()
    code, challenge = await status(idp.mint(SHOPPER, aud=audience, alg="ES256", tenant="acme", key=removed))
    assert code == 401 and challenge is not None and 'error="invalid_token"' in challenge
    assert (await status(idp.mint(SHOPPER, aud=audience, alg="EdDSA", tenant="acme")))[0] == 200


async def test_readiness_sees_a_rewritten_jwks_file_without_a_token(tmp_path: Path,
                                                                    make_identifier: MakeIdentifier) -> None:
    """/readyz read the key set of the last verification: a file rewritten with keys that fit none of the issuer's
    algorithms reported ready until some token made the gateway read it (and was refused)."""
    idp = TestIssuer(tmp_path, algorithms=("ES256",))
    identifier = await make_identifier(idp.config(algorithms=["ES256"]), monotonic=Clock(1000.0))
    assert await identifier.readiness() == (True, "ok")
    idp.keys = {"RS256": generate_key("RS256", "idp-rs256-1")}
    idp.write_jwks()
    ready, detail = await identifier.readiness()
    assert not ready and "no key fits the issuer's algorithms ES256" in detail[str(idp.jwks_path)], detail
