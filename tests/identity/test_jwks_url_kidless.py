"""A JWKS URL whose set holds a key without `kid` beside keys with one: a token naming a kid the gateway does not
have yet (the IdP rotated) refetches the set, as for any unknown kid.

A kid-less key matches any kid, so the token's kid counted as found and the set was not refetched: the token was
refused (`Unknown signing key` when the kid-less key is of another type, `Invalid token signature` when of the same)
until the keys were older than `jwks_refresh_s` (300 s by default) and a later token's background refresh brought
the new key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.identity.conftest import AUDIENCE, Clock, MakeIdentifier, bearer
from tests.support.tokens import TestIssuer, generate_key

SHOPPER = "spiffe://acme.test/agent/shopper"


class WithKidlessKey(TestIssuer):
    """Also publishes one key without a kid (a long-lived key of the IdP's)."""

    __test__ = False

    def __init__(self, directory: Path, kidless_alg: str) -> None:
        self.kidless = generate_key(kidless_alg, "unused")
        super().__init__(directory, algorithms=("ES256",))

    def jwks(self) -> dict[str, Any]:
        kidless = {k: v for k, v in self.kidless.public_jwk.items() if k != "kid"}
        return {"keys": [kidless, *super().jwks()["keys"]]}


@pytest.mark.parametrize("kidless_alg", ["EdDSA", "ES256"])
async def test_an_unknown_kid_refetches_though_a_kidless_key_is_in_the_set(
        tmp_path: Path, make_identifier: MakeIdentifier, kidless_alg: str) -> None:
    idp = WithKidlessKey(tmp_path, kidless_alg)
    await idp.serve()
    try:
        monotonic = Clock(100.0)
        identifier = await make_identifier(idp.config(source="url", algorithms=["ES256", "EdDSA"]),
                                           monotonic=monotonic)
        assert (await identifier.identify(bearer(idp.mint(SHOPPER, aud=AUDIENCE, alg="ES256")), None)).id == SHOPPER
        idp.rotate("ES256")
        monotonic.now += 31  # past the cool-down since the start-up fetch
        token = idp.mint(SHOPPER, aud=AUDIENCE, alg="ES256")
        assert (await identifier.identify(bearer(token), None)).id == SHOPPER
        assert idp.fetches == 2
        kidless = idp.mint(SHOPPER, aud=AUDIENCE, alg=kidless_alg, key=idp.kidless, kid="unnamed")
        assert (await identifier.identify(bearer(kidless), None)).id == SHOPPER  # the kid-less key matches any kid
        assert idp.fetches == 2  # within the cool-down: no second refetch for it
    finally:
        await idp.close()
