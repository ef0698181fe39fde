"""JWKS over HTTP against a real aiohttp server: caching, rate-limited refetch on unknown kid, failures."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from gateway.errors import GatewayError
from gateway.identity.jwks import UrlKeySource
from tests.identity.conftest import AUDIENCE, Clock, MakeIdentifier, bearer
from tests.support.tokens import TestIssuer

SHOPPER = "spiffe://acme.test/agent/shopper"


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[TestIssuer]:
    issuer = TestIssuer(tmp_path, algorithms=("ES256", "EdDSA"))
    await issuer.serve()
    yield issuer
    await issuer.close()


async def test_keys_are_fetched_once_and_cached(served: TestIssuer, make_identifier: MakeIdentifier) -> None:
    identifier = await make_identifier(served.config(source="url"))
    assert served.fetches == 1  # at start
    for alg in ("ES256", "EdDSA", "ES256"):
        assert (await identifier.identify(bearer(served.mint(SHOPPER, aud=AUDIENCE, alg=alg)), None)).id == SHOPPER
    assert served.fetches == 1


async def test_unknown_kid_refetches_at_most_once_per_cooldown(served: TestIssuer,
                                                               make_identifier: MakeIdentifier) -> None:
    monotonic = Clock(100.0)
    identifier = await make_identifier(served.config(source="url"), monotonic=monotonic)
    forged = [served.mint(SHOPPER, aud=AUDIENCE, alg="ES256", kid=f"nope-{i}") for i in range(20)]
    monotonic.now += 31  # past the 30 s cool-down since the start-up fetch
    for token in forged:
        with pytest.raises(GatewayError):
            await identifier.identify(bearer(token), None)
    assert served.fetches == 2  # one refetch for twenty unknown kids
    monotonic.now += 31
    with pytest.raises(GatewayError):
        await identifier.identify(bearer(forged[0]), None)
    assert served.fetches == 3


async def test_rotation_is_picked_up_by_the_unknown_kid_refetch(served: TestIssuer,
                                                                make_identifier: MakeIdentifier) -> None:
    monotonic = Clock(100.0)
    identifier = await make_identifier(served.config(source="url"), monotonic=monotonic)
    served.rotate("ES256")
    monotonic.now += 31
    token = served.mint(SHOPPER, aud=AUDIENCE, alg="ES256")
    assert (await identifier.identify(bearer(token), None)).id == SHOPPER
    assert served.fetches == 2


async def test_a_key_rotated_in_right_after_start_is_fetched_at_once(served: TestIssuer,
                                                                     make_identifier: MakeIdentifier) -> None:
    """The fetch at start counted as the last refetch, so a key the IdP rotated in within the cool-down after the
    gateway started (a restart during a rotation, a test rotating at once) was refused for up to 30 s. The start-up
    fetch no longer starts the cool-down; the first unknown kid's refetch does, so a flood still costs one fetch."""
    monotonic = Clock(100.0)
    identifier = await make_identifier(served.config(source="url"), monotonic=monotonic)
    served.rotate("ES256")
    token = served.mint(SHOPPER, aud=AUDIENCE, alg="ES256")
    assert (await identifier.identify(bearer(token), None)).id == SHOPPER
    assert served.fetches == 2
    for i in range(5):
        with pytest.raises(GatewayError):
            await identifier.identify(bearer(served.mint(SHOPPER, aud=AUDIENCE, alg="ES256", kid=f"nope-{i}")), None)
    assert served.fetches == 2  # within the cool-down of that refetch


async def test_concurrent_unknown_kids_share_one_fetch(served: TestIssuer, make_identifier: MakeIdentifier) -> None:
    monotonic = Clock(100.0)
    identifier = await make_identifier(served.config(source="url"), monotonic=monotonic)
    served.rotate("EdDSA")
    monotonic.now += 31
    token = served.mint(SHOPPER, aud=AUDIENCE, alg="EdDSA")
    results = await asyncio.gather(*(identifier.identify(bearer(token), None) for _ in range(10)))
    assert {principal.id for principal in results} == {SHOPPER}
    assert served.fetches == 2


async def test_stale_keys_are_refreshed_after_refresh_interval(served: TestIssuer,
                                                               make_identifier: MakeIdentifier) -> None:
    monotonic = Clock(100.0)
    identifier = await make_identifier(served.config(source="url", jwks_refresh_s=120), monotonic=monotonic)
    # Fresh tokens each time: a token already verified is served from the identifier's short cache.
    await identifier.identify(bearer(served.mint(SHOPPER, aud=AUDIENCE, alg="ES256")), None)
    monotonic.now += 119
    await identifier.identify(bearer(served.mint(SHOPPER, aud=AUDIENCE, alg="ES256")), None)
    assert served.fetches == 1
    monotonic.now += 2
    await identifier.identify(bearer(served.mint(SHOPPER, aud=AUDIENCE, alg="ES256")), None)
    await identifier.settle()  # stale keys are refreshed behind the token, not in front of it
    assert served.fetches == 2


@pytest.mark.parametrize("mode", ["error", "garbage", "oversize", "nested"])
async def test_failed_refetch_keeps_the_last_good_keys(mode: str, served: TestIssuer,
                                                       make_identifier: MakeIdentifier) -> None:
    monotonic = Clock(100.0)
    identifier = await make_identifier(served.config(source="url", jwks_refresh_s=60), monotonic=monotonic)
    served.jwks_mode = mode
    monotonic.now += 61  # stale: the next use refetches, which fails
    token = served.mint(SHOPPER, aud=AUDIENCE, alg="ES256")
    assert (await identifier.identify(bearer(token), None)).id == SHOPPER
    await identifier.settle()
    assert served.fetches == 2
    assert (await identifier.identify(bearer(served.mint(SHOPPER, aud=AUDIENCE, alg="ES256")), None)).id == SHOPPER


async def test_nested_json_at_start_is_a_failed_fetch(served: TestIssuer, make_identifier: MakeIdentifier) -> None:
    """A JWKS nested past the JSON parser's recursion limit raised RecursionError out of the fetch: the gateway did
    not start, and later a refresh answered the token's request with a 500. It is a failed fetch like bad JSON."""
    served.jwks_mode = "nested"
    identifier = await make_identifier(served.config(source="url"), monotonic=Clock(100.0))  # start must not raise
    ready, detail = await identifier.readiness()
    assert not ready and detail == {served.url: f"no keys from {served.url}: {served.url}: not valid JSON"}, detail


async def test_unreachable_at_start_then_recovers(served: TestIssuer, make_identifier: MakeIdentifier) -> None:
    served.jwks_mode = "error"
    monotonic = Clock(100.0)
    identifier = await make_identifier(served.config(source="url"), monotonic=monotonic)  # start must not raise
    ready, detail = await identifier.readiness()  # /readyz says why every token is refused
    assert not ready and detail == {served.url: f"no keys from {served.url}: {served.url}: HTTP 500"}, detail
    token = served.mint(SHOPPER, aud=AUDIENCE, alg="ES256")
    with pytest.raises(GatewayError, match="signing key"):
        await identifier.identify(bearer(token), None)
    assert served.fetches == 1  # within the cool-down of the failed start-up attempt
    served.jwks_mode = "normal"
    monotonic.now += 31
    assert (await identifier.identify(bearer(token), None)).id == SHOPPER
    assert served.fetches == 2
    assert await identifier.readiness() == (True, {served.url: "ok"})


async def test_readiness_probe_fetches_keys_while_it_has_none(served: TestIssuer,
                                                              make_identifier: MakeIdentifier) -> None:
    """A replica started while its IdP was down is taken out of rotation by /readyz, so no token arrives whose
    unknown kid would fetch again: it stayed not ready after the IdP came back. The probe now asks itself (at most
    once per cool-down, in the background, so the probe does not wait for the IdP)."""
    served.jwks_mode = "error"
    monotonic = Clock(100.0)
    identifier = await make_identifier(served.config(source="url"), monotonic=monotonic)
    assert not (await identifier.readiness())[0]
    await identifier.settle()
    assert served.fetches == 1  # within the cool-down of the failed start-up attempt: no fetch per probe
    served.jwks_mode = "normal"
    monotonic.now += 31
    assert not (await identifier.readiness())[0]  # this probe starts the fetch; the next one sees its keys
    await identifier.settle()
    assert served.fetches == 2
    assert await identifier.readiness() == (True, {served.url: "ok"})
    assert (await identifier.identify(bearer(served.mint(SHOPPER, aud=AUDIENCE, alg="ES256")), None)).id == SHOPPER
    assert served.fetches == 2


async def test_fetch_timeout_and_size_bound(served: TestIssuer) -> None:
    async with aiohttp.ClientSession() as http:
        served.jwks_mode = "hang"
        slow = UrlKeySource(served.url or "", http, refresh_s=300, timeout_s=0.2)
        await slow.start()  # the timeout fires; no keys, no exception
        assert await slow.candidates("idp-es256-1") == []
        served.jwks_mode = "oversize"
        big = UrlKeySource(served.url or "", http, refresh_s=300, max_bytes=64 * 1024)
        await big.start()
        assert await big.candidates("idp-es256-1") == []
        served.jwks_mode = "normal"
        fine = UrlKeySource(served.url or "", http, refresh_s=300)
        await fine.start()
        assert [key.kid for key in await fine.candidates("idp-es256-1")] == ["idp-es256-1"]


async def test_own_session_is_closed(served: TestIssuer) -> None:
    source = UrlKeySource(served.url or "", None, refresh_s=300)
    await source.start()
    assert len(await source.candidates(None)) == 2
    await source.close()
    await source.close()  # idempotent


async def test_slow_refresh_of_stale_keys_does_not_hold_up_calls(served: TestIssuer,
                                                                 make_identifier: MakeIdentifier) -> None:
    """Keys past jwks_refresh_s still verify while the refetch runs: every new token used to wait for the
    refetch (up to its 5 s timeout) behind one lock, so a slow IdP stalled all calls each refresh interval."""
    monotonic = Clock(100.0)
    identifier = await make_identifier(served.config(source="url", jwks_refresh_s=60), monotonic=monotonic)
    served.jwks_mode = "hang"
    monotonic.now += 61  # stale: the next use refetches, and the IdP does not answer
    tokens = [served.mint(SHOPPER, aud=AUDIENCE, alg="ES256") for _ in range(3)]
    # Well under the fetch timeout (5 s): the calls must not wait for the hanging fetch at all.
    results = await asyncio.wait_for(asyncio.gather(*(identifier.identify(bearer(t), None) for t in tokens)), 2.5)
    assert {principal.id for principal in results} == {SHOPPER}
    served.jwks_mode = "normal"
    await served.close()  # releases the hanging fetch
    await identifier.settle()
    assert served.fetches == 2  # one refetch, in the background
