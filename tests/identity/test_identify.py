"""Accepted tokens become the right Principal: algorithms, audience, clock skew, typ, claims, key sources."""

from __future__ import annotations

import json
from pathlib import Path

import jwt
import pytest
from multidict import CIMultiDict

from gateway.config.model import IdentityConfig
from gateway.context import Principal
from gateway.errors import GatewayError
from gateway.identity import JwtIdentifier
from gateway.identity.jwks import FileKeySource, KeySetError
from tests.identity.conftest import AUDIENCE, RESOURCE, Clock, MakeIdentifier, bearer
from tests.support.tokens import TestIssuer, generate_key

SHOPPER = "spiffe://acme.test/agent/shopper"


async def rejected(identifier: JwtIdentifier, token: str) -> str:
    with pytest.raises(GatewayError) as caught:
        await identifier.identify(bearer(token), None)
    assert caught.value.reason == "unauthenticated"
    assert "WWW-Authenticate" in caught.value.headers
    return caught.value.message


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
async def test_each_algorithm_yields_the_principal(alg: str, issuer: TestIssuer,
                                                   make_identifier: MakeIdentifier) -> None:
    identifier = await make_identifier(issuer.config())
    token = issuer.mint(SHOPPER, aud=AUDIENCE, alg=alg, tenant="acme", exp=2_000_000_000)
    principal = await identifier.identify(bearer(token), None)
    assert principal == Principal(id=SHOPPER, issuer=issuer.issuer, subject=SHOPPER,
                                  attributes={"tenant": "acme"}, expires_at=2_000_000_000.0)
    assert principal.token == token
    assert principal.key == f"{issuer.issuer}|{SHOPPER}"
    assert token not in repr(principal)


async def test_configured_audience_replaces_the_default(issuer: TestIssuer, make_identifier: MakeIdentifier) -> None:
    identifier = await make_identifier(issuer.config(audience="https://gw.example/mcp"))
    assert (await identifier.identify(bearer(issuer.mint(SHOPPER, aud="https://gw.example/mcp")), None)).id == SHOPPER
    assert "audience" in await rejected(identifier, issuer.mint(SHOPPER, aud=AUDIENCE))


async def test_audience_list_naming_the_gateway_is_accepted(issuer: TestIssuer,
                                                            make_identifier: MakeIdentifier) -> None:
    identifier = await make_identifier(issuer.config())
    token = issuer.mint(SHOPPER, aud=["https://other.example", AUDIENCE])
    assert (await identifier.identify(bearer(token), None)).id == SHOPPER


@pytest.mark.parametrize(("skew", "claims", "accepted"), [
    (30, {"exp": -10}, True),            # expired 10 s ago, inside the skew
    (30, {"exp": -31}, False),
    (0, {"exp": 0}, False),              # exp is exclusive
    (0, {"exp": 1}, True),
    (30, {"nbf": 20}, True),
    (30, {"nbf": 31}, False),
    (30, {"iat": 25}, True),
    (30, {"iat": 45}, False),
], ids=["exp-in-skew", "exp-past-skew", "exp-now-no-skew", "exp-next-second", "nbf-in-skew", "nbf-past-skew",
        "iat-in-skew", "iat-past-skew"])
async def test_clock_skew(skew: int, claims: dict[str, int], accepted: bool, issuer: TestIssuer,
                          make_identifier: MakeIdentifier) -> None:
    now = 1_900_000_000
    identifier = await make_identifier(issuer.config(), clock_skew_s=skew, clock=Clock(now))
    times = {"exp": now + 300, "iat": now - 5} | {name: now + offset for name, offset in claims.items()}
    token = issuer.mint(SHOPPER, aud=AUDIENCE, **times)
    if accepted:
        assert (await identifier.identify(bearer(token), None)).id == SHOPPER
    else:
        await rejected(identifier, token)


@pytest.mark.parametrize("claims", [{"exp": float("inf")}, {"exp": float("nan")}, {"exp": 1e400},
                                    {"exp": 10**400}, {"nbf": float("nan")}, {"iat": float("nan")}],
                         ids=["exp-Infinity", "exp-NaN", "exp-1e400", "exp-10**400", "nbf-NaN", "iat-NaN"])
async def test_times_that_are_no_finite_number_are_refused(claims: dict[str, float], issuer: TestIssuer,
                                                           make_identifier: MakeIdentifier) -> None:
    """JSON has no NaN or Infinity, but the JSON parser reads them (and 1e400 as infinity): a signed
    `exp: Infinity` or `NaN` compared as never past, so the token never expired; an integer past a double's
    range raised OverflowError."""
    identifier = await make_identifier(issuer.config())
    token = issuer.mint(SHOPPER, aud=AUDIENCE, claims=claims)
    message = await rejected(identifier, token)
    assert message == f"Token claim {next(iter(claims))} must be a number"


@pytest.mark.parametrize(("typ", "accepted"), [("at+jwt", True), ("application/at+JWT", True), ("JWT", False),
                                               (None, False)])
async def test_typ_enforced_when_configured(typ: str | None, accepted: bool, issuer: TestIssuer,
                                            make_identifier: MakeIdentifier) -> None:
    identifier = await make_identifier(issuer.config(require_typ="at+jwt"))
    token = issuer.mint(SHOPPER, aud=AUDIENCE, typ=typ)
    if accepted:
        assert (await identifier.identify(bearer(token), None)).id == SHOPPER
    else:
        assert "type" in await rejected(identifier, token)


async def test_typ_free_when_not_configured(issuer: TestIssuer, make_identifier: MakeIdentifier) -> None:
    identifier = await make_identifier(issuer.config())
    assert (await identifier.identify(bearer(issuer.mint(SHOPPER, aud=AUDIENCE, typ="JWT")), None)).id == SHOPPER


async def test_claims_mapping(issuer: TestIssuer, make_identifier: MakeIdentifier) -> None:
    identifier = await make_identifier(issuer.config(claims={"tenant": "org_id", "owner": "org.owner",
                                                             "team": "team"}))
    token = issuer.mint(SHOPPER, aud=AUDIENCE, tenant="ignored", groups=None, claims={
        "org_id": "acme", "org": {"owner": "bob"}, "team": "blue", "groups": "finance",
        "environment": "prod", "clearance": 3, "score": 0.5})
    principal = await identifier.identify(bearer(token), None)
    assert principal.attributes == {"tenant": "acme", "owner": "bob", "team": "blue", "groups": ["finance"],
                                    "environment": "prod", "clearance": "3"}  # a contract attribute: its text


async def test_a_dotted_claim_path_reaches_keys_that_hold_dots(issuer: TestIssuer,
                                                                make_identifier: MakeIdentifier) -> None:
    """Kubernetes service-account tokens carry the namespace under a key with a dot, `{"kubernetes.io":
    {"namespace": "acme", ...}}`: `kubernetes.io.namespace` was split at every dot and found nothing, so the
    tenant was silently missing (every tenant-scoped permit denied). A level may now be a key with dots."""
    identifier = await make_identifier(issuer.config(claims={"tenant": "kubernetes.io.namespace",
                                                             "owner": "kubernetes.io.serviceaccount.name"}))
    token = issuer.mint("system:serviceaccount:acme:shopper", aud=AUDIENCE, claims={
        "kubernetes.io": {"namespace": "acme", "serviceaccount": {"name": "shopper", "uid": "u-1"}},
        "act": {"sub": "system:serviceaccount:acme:planner", "kubernetes.io": {"namespace": "acme"}}})
    principal = await identifier.identify(bearer(token), None)
    assert principal.attributes == {"tenant": "acme", "owner": "shopper"}
    assert principal.chain[0].attributes == {"tenant": "acme"}
    # A flat claim of the whole name still wins, and a path that leads nowhere is no attribute.
    flat = issuer.mint("x", aud=AUDIENCE, claims={"kubernetes.io.namespace": "flat",
                                                  "kubernetes.io": {"namespace": "n"}})
    assert (await identifier.identify(bearer(flat), None)).attributes == {"tenant": "flat"}
    nowhere = issuer.mint("y", aud=AUDIENCE, claims={"kubernetes.io": {"name": "n"}, "kubernetes": "k"})
    assert (await identifier.identify(bearer(nowhere), None)).attributes == {}


async def test_non_plain_claim_values_are_left_out(issuer: TestIssuer, make_identifier: MakeIdentifier) -> None:
    identifier = await make_identifier(issuer.config(claims={"level": "level", "tags": "tags"}))
    token = issuer.mint(SHOPPER, aud=AUDIENCE, claims={"level": {"id": 1}, "tags": [1, 2], "environment": "dev"})
    assert (await identifier.identify(bearer(token), None)).attributes == {"environment": "dev"}


@pytest.mark.parametrize(("claims", "problem"), [
    ({"trust": ["low"]}, "claim 'trust' (attribute trust) must be a single value (a string), got a list"),
    ({"trust": {"level": "low"}}, "claim 'trust' (attribute trust) must be a single value (a string), got an object"),
    ({"owner": 1.5}, "claim 'owner' (attribute owner) must be a single value (a string), got a fractional number"),
    ({"groups": ["ops", 5]}, "claim 'groups' (attribute groups) must be a string or a list of strings"),
    # were left out, as no groups: a forbid on membership did not fire
    ({"groups": {"contractors": True}}, "claim 'groups' (attribute groups) must be a string or a list of strings"),
    ({"groups": 7}, "claim 'groups' (attribute groups) must be a string or a list of strings"),
    ({"groups": True}, "claim 'groups' (attribute groups) must be a string or a list of strings"),
    ({"act": {"sub": "spiffe://acme.test/agent/b", "trust": ["low"]}},
     "claim 'trust' (attribute trust) must be a single value (a string), got a list"),
], ids=["list", "object", "fraction", "mixed-groups", "object-groups", "number-groups", "bool-groups", "actor"])
async def test_a_contract_attribute_of_another_type_is_refused(issuer: TestIssuer, make_identifier: MakeIdentifier,
                                                               claims: dict[str, object], problem: str) -> None:
    """The contract's attributes are Strings (groups a Set of them). A multi-valued IdP attribute (`trust:
    ["low"]`) became a Set, and `principal.trust == "low"` is merely false on it, so the shipped forbid
    low-trust-read-only let a low-trust agent write; an object was left out, as absent, with the same effect,
    and a mixed groups list hid "contractors" from a forbid on membership. Such a token is refused."""
    identifier = await make_identifier(issuer.config(claims={"trust": "trust"}))
    message = await rejected(identifier, issuer.mint(SHOPPER, aud=AUDIENCE, tenant="acme", claims=claims))
    assert message == f"Invalid token: {problem}"


async def test_principal_without_claims_falls_back_to_registry(issuer: TestIssuer,
                                                               make_identifier: MakeIdentifier) -> None:
    identifier = await make_identifier(issuer.config(), agents={SHOPPER: {"tenant": "acme", "trust": "high",
                                                                          "groups": ["buyers"]}})
    principal = await identifier.identify(bearer(issuer.mint(SHOPPER, aud=AUDIENCE)), None)
    assert principal.attributes == {"tenant": "acme", "trust": "high", "groups": ["buyers"]}
    claimed = await identifier.identify(bearer(issuer.mint(SHOPPER, aud=AUDIENCE, tenant="globex")), None)
    assert claimed.attributes == {"tenant": "globex"}


async def test_person_subject_is_not_a_spiffe_id(issuer: TestIssuer, make_identifier: MakeIdentifier) -> None:
    identifier = await make_identifier(issuer.config())
    principal = await identifier.identify(bearer(issuer.mint("alice", aud=AUDIENCE, groups=["finance"])), None)
    assert (principal.id, principal.attributes) == ("alice", {"groups": ["finance"]})


async def test_header_forms(issuer: TestIssuer, make_identifier: MakeIdentifier) -> None:
    identifier = await make_identifier(issuer.config())
    token = issuer.mint(SHOPPER, aud=AUDIENCE)
    assert (await identifier.identify({"authorization": f"bearer {token}"}, None)).id == SHOPPER
    assert (await identifier.identify(CIMultiDict({"AUTHORIZATION": f"Bearer {token}"}), None)).id == SHOPPER
    twice = CIMultiDict([("Authorization", f"Bearer {token}"), ("Authorization", f"Bearer {token}")])
    with pytest.raises(GatewayError, match="More than one"):
        await identifier.identify(twice, None)


async def test_pem_source_and_kidless_tokens(issuer: TestIssuer, make_identifier: MakeIdentifier) -> None:
    identifier = await make_identifier(issuer.config(source="pem", algorithms=["ES256"]))
    assert (await identifier.identify(bearer(issuer.mint(SHOPPER, aud=AUDIENCE, alg="ES256")), None)).id == SHOPPER
    headers_without_kid = issuer.mint(SHOPPER, aud=AUDIENCE, alg="ES256", kid="")
    assert "key id" in await rejected(identifier, headers_without_kid)
    rogue = generate_key("ES256", issuer.keys["ES256"].kid)
    assert "signature" in await rejected(identifier, issuer.mint(SHOPPER, aud=AUDIENCE, alg="ES256", key=rogue))


async def test_kidless_token_needs_exactly_one_fitting_key(tmp_path: Path, make_identifier: MakeIdentifier) -> None:
    two = TestIssuer(tmp_path, algorithms=("ES256",))
    identifier = await make_identifier(two.config())
    token = _without_kid(two.mint(SHOPPER, aud=AUDIENCE, alg="ES256"), two)
    assert (await identifier.identify(bearer(token), None)).id == SHOPPER
    two.rotate("ES256")
    two.keys["ES256-old"] = two.retired[0]
    two.write_jwks()
    identifier = await make_identifier(two.config(algorithms=["ES256"]))
    assert "key id" in await rejected(identifier, _without_kid(two.mint(SHOPPER, aud=AUDIENCE, alg="ES256"), two))


async def test_a_token_kid_is_checked_with_its_own_key_beside_kidless_ones(tmp_path: Path,
                                                                          make_identifier: MakeIdentifier) -> None:
    """A kid-less key matches any kid, and the first fitting candidate was the only one tried: with a kid-less
    key listed before the token's own (a JWKS mid-migration to kids), a good token was refused as a bad
    signature. The key named by the kid is tried first, then the kid-less ones; a forged token still fails."""
    legacy, current = generate_key("ES256", "legacy"), generate_key("ES256", "idp-es256-2")
    jwks = tmp_path / "mixed.json"
    jwks.write_text(json.dumps({"keys": [{k: v for k, v in legacy.public_jwk.items() if k != "kid"},
                                         current.public_jwk]}))
    identifier = await make_identifier({"issuer": "https://idp.test", "jwks_file": str(jwks), "algorithms": ["ES256"]})
    issuer = TestIssuer(tmp_path, issuer="https://idp.test", algorithms=("ES256",))
    assert (await identifier.identify(bearer(issuer.mint(SHOPPER, aud=AUDIENCE, alg="ES256", key=current)),
                                      None)).id == SHOPPER
    assert (await identifier.identify(bearer(issuer.mint(SHOPPER, aud=AUDIENCE, alg="ES256", key=legacy,
                                                         kid="anything")), None)).id == SHOPPER
    forged = issuer.mint(SHOPPER, aud=AUDIENCE, alg="ES256", key=generate_key("ES256", "idp-es256-2"))
    assert await rejected(identifier, forged) == "Invalid token signature"


async def test_base64_kids_as_amazon_cognito_writes_them_are_accepted(tmp_path: Path,
                                                                     make_identifier: MakeIdentifier) -> None:
    """Cognito's kids are standard base64 (`+`, `/`, trailing `=`): each of its tokens was refused as a
    malformed key id, though its JWKS loaded without a word. A kid is only compared with the issuer's own
    kids, never used as a path, so path characters in one that names no key are merely an unknown key."""
    cognito = generate_key("RS256", "uYPIQUYk9+7IbZ/Tz9kx8Ts0wEVG7Fwc6FvHf2TnQQQ=")
    jwks = tmp_path / "cognito.json"
    jwks.write_text(json.dumps({"keys": [cognito.public_jwk]}))
    identifier = await make_identifier({"issuer": "https://idp.test", "jwks_file": str(jwks), "algorithms": ["RS256"]})
    issuer = TestIssuer(tmp_path, issuer="https://idp.test", algorithms=("ES256",))
    token = issuer.mint(SHOPPER, aud=AUDIENCE, alg="RS256", key=cognito)
    assert (await identifier.identify(bearer(token), None)).id == SHOPPER
    for kid in ("../../../../etc/passwd", "keys/idp-rs256-1"):
        assert await rejected(identifier, issuer.mint(SHOPPER, aud=AUDIENCE, alg="RS256", key=cognito, kid=kid)) \
            == "Unknown signing key"
    for kid in ("idp-rs256-1\u0000", "x' OR '1'='1", "k" * 129, "a b"):
        assert await rejected(identifier, issuer.mint(SHOPPER, aud=AUDIENCE, alg="RS256", key=cognito, kid=kid)) \
            == "Malformed key id"


async def test_certificate_thumbprints_in_the_header_are_ignored(issuer: TestIssuer,
                                                                  make_identifier: MakeIdentifier) -> None:
    """Microsoft Entra ID's v1.0 tokens (and AD FS access tokens) carry `x5t`, a thumbprint naming the same key as
    `kid`: every such token was refused ("header parameter not accepted: x5t"). A thumbprint is no key material;
    the key still comes from the issuer's own key set by `kid`, so a forged thumbprint changes nothing."""
    identifier = await make_identifier(issuer.config())
    kid = issuer.keys["RS256"].kid
    for extra in ({"x5t": kid}, {"x5t#S256": "bm90LWEtcmVhbC10aHVtYnByaW50"}, {"x5t": "forged"}):
        token = issuer.mint(SHOPPER, aud=AUDIENCE, typ="JWT", headers=extra)
        assert (await identifier.identify(bearer(token), None)).id == SHOPPER
    rogue = generate_key("RS256", kid)  # an attacker's key under the issuer's kid and thumbprint
    assert "signature" in await rejected(identifier, issuer.mint(SHOPPER, aud=AUDIENCE, key=rogue,
                                                                 headers={"x5t": kid}))
    for refused in ({"x5c": ["MIIB"]}, {"x5u": "https://evil.example/cert.pem"}, {"jwk": rogue.public_jwk}):
        assert "not accepted" in await rejected(identifier, issuer.mint(SHOPPER, aud=AUDIENCE, headers=refused))


def _without_kid(token: str, issuer: TestIssuer) -> str:
    """Re-sign with no kid header (PyJWT adds whatever headers it is given)."""
    claims = jwt.decode(token, options={"verify_signature": False})
    return jwt.encode(claims, issuer.keys["ES256"].private, algorithm="ES256", headers={"typ": "at+jwt"})


async def test_two_issuers_keep_their_keys_apart(tmp_path: Path, issuer: TestIssuer,
                                                 make_identifier: MakeIdentifier) -> None:
    other = TestIssuer(tmp_path, issuer="https://other-idp.test", algorithms=("ES256",), name="other")
    identifier = await make_identifier(issuer.config(), other.config())
    assert (await identifier.identify(bearer(other.mint("bob", aud=AUDIENCE, alg="ES256")), None)).issuer == \
        "https://other-idp.test"
    forged = other.mint("bob", aud=AUDIENCE, alg="ES256", iss=issuer.issuer)  # other's key, issuer's name
    assert "signing key" in await rejected(identifier, forged)
    forged_kid = other.mint("bob", aud=AUDIENCE, alg="ES256", iss=issuer.issuer, kid=issuer.keys["ES256"].kid)
    assert "signature" in await rejected(identifier, forged_kid)


async def test_duplicate_issuer_is_a_config_error(issuer: TestIssuer) -> None:
    config = IdentityConfig.model_validate({"mode": "jwt", "issuers": [issuer.config(), issuer.config()]})
    with pytest.raises(ValueError, match="configured twice"):
        JwtIdentifier(config, {}, RESOURCE, None)


@pytest.mark.parametrize(("field", "problem"), [
    ("audience", "identity.issuers[0].audience: must not be empty"),
    ("issuer", "identity.issuers[0].issuer: must not be empty"),
    ("require_typ", "identity.issuers[0].require_typ: must not be empty"),  # every real token refused
])
def test_an_empty_issuer_or_audience_is_a_config_error(issuer: TestIssuer, field: str, problem: str) -> None:
    """`audience: ${GW_AUDIENCE}` with the variable set to nothing made the audience "": every token for the
    gateway was refused, and a token with `aud: [""]` (named for no resource) was accepted."""
    from gateway.config import ConfigError, parse_config
    entry = {**issuer.config(), field: ""}
    with pytest.raises(ConfigError) as caught:
        parse_config({"upstreams": [{"name": "a", "url": "http://127.0.0.1:9/mcp"}],
                      "identity": {"mode": "jwt", "issuers": [entry]}})
    assert problem in str(caught.value)


@pytest.mark.parametrize(("content", "pem", "message"), [
    (None, False, "cannot read"),
    ("{not json", False, "not valid JSON"),
    ("[" * 100_000, False, "not valid JSON"),  # past the parser's recursion limit: was a RecursionError
    (json.dumps({"nope": []}), False, "not a JWKS"),
    (json.dumps({"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "h"}]}), False, "no usable"),
    (json.dumps({"keys": [{"kty": "RSA", "kid": "bad", "n": "!!", "e": "AQAB"}, "x"]}), False, "no usable"),
    ("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", True, "not a PEM"),
], ids=["missing", "bad-json", "deeply-nested", "not-jwks", "only-symmetric", "malformed-keys", "bad-pem"])
def test_unusable_key_files(tmp_path: Path, content: str | None, pem: bool, message: str) -> None:
    path = tmp_path / ("key.pem" if pem else "jwks.json")
    if content is not None:
        path.write_text(content)
    source = {"pem_file": str(path)} if pem else {"jwks_file": str(path)}
    config = IdentityConfig.model_validate({"mode": "jwt", "issuers": [{"issuer": "https://i", **source}]})
    with pytest.raises(KeySetError, match=message):
        JwtIdentifier(config, {}, RESOURCE, None)


async def test_jwks_file_rotation_is_picked_up_with_the_first_token_of_the_new_key(
        tmp_path: Path, make_identifier: MakeIdentifier) -> None:
    """Rotating the file takes effect at once: right after start-up, after a forged kid, and twice in a row
    (it used to wait out a 30 s cool-down that also started at start-up and at every unknown kid)."""
    rotating = TestIssuer(tmp_path, algorithms=("EdDSA",))
    monotonic = Clock(1000.0)
    identifier = await make_identifier(rotating.config(), monotonic=monotonic)
    assert await identifier.identify(bearer(rotating.mint(SHOPPER, aud=AUDIENCE, alg="EdDSA")), None)
    assert "signing key" in await rejected(identifier, rotating.mint(SHOPPER, aud=AUDIENCE, alg="EdDSA",
                                                                     kid="forged-1"))
    for _ in range(2):
        rotating.rotate("EdDSA")
        new_token = rotating.mint(SHOPPER, aud=AUDIENCE, alg="EdDSA")
        assert (await identifier.identify(bearer(new_token), None)).id == SHOPPER  # no clock advance needed
    assert "signing key" in await rejected(identifier, rotating.mint(SHOPPER, aud=AUDIENCE, alg="EdDSA",
                                                                     key=rotating.retired[0]))


async def test_broken_jwks_file_keeps_the_keys_and_is_not_reread_per_token(
        tmp_path: Path, make_identifier: MakeIdentifier, caplog: pytest.LogCaptureFixture) -> None:
    rotating = TestIssuer(tmp_path, algorithms=("EdDSA",))
    monotonic = Clock(1000.0)
    identifier = await make_identifier(rotating.config(), monotonic=monotonic)
    good = rotating.mint(SHOPPER, aud=AUDIENCE, alg="EdDSA")
    assert await identifier.identify(bearer(good), None)
    rotating.jwks_path.write_text("{not json")
    with caplog.at_level("WARNING", logger="customs.identity.jwks"):
        for n in range(5):
            forged = rotating.mint(SHOPPER, aud=AUDIENCE, alg="EdDSA", kid=f"forged-{n}")
            assert "signing key" in await rejected(identifier, forged)
    # One attempt at the broken version, not one per forged kid.
    assert sum("JWKS file reload failed" in r.getMessage() for r in caplog.records) == 1
    assert (await identifier.identify(bearer(good), None)).id == SHOPPER  # the last good keys stay
    rotating.rotate("EdDSA")  # fixed: the next version is read at once
    assert (await identifier.identify(bearer(rotating.mint(SHOPPER, aud=AUDIENCE, alg="EdDSA")), None)).id == SHOPPER


@pytest.mark.parametrize(("key_alg", "token_alg", "fits"), [
    ("RS256", "RS256", True), ("RS256", "PS256", True), ("RS256", "ES256", False), ("RS256", "EdDSA", False),
    ("ES256", "ES256", True), ("ES256", "ES384", False), ("ES384", "ES384", True), ("ES256", "RS256", False),
    ("EdDSA", "EdDSA", True), ("EdDSA", "ES256", False), ("EdDSA", "RS256", False), ("RS256", "HS256", False),
    ("RS256", "none", False),
])
def test_key_type_must_fit_the_algorithm(key_alg: str, token_alg: str, fits: bool) -> None:
    from gateway.identity.jwks import VerifyKey

    public = generate_key(key_alg, "k").private.public_key()
    assert VerifyKey("k", public).allows(token_alg) is fits
    assert VerifyKey("k", public, alg="RS512").allows(token_alg) is False  # a key pinned to another alg


async def test_verified_tokens_are_cached_until_keys_change(tmp_path: Path, make_identifier: MakeIdentifier) -> None:
    """A repeated token skips the signature check, but never outlives its key set or its expiry."""
    issuer = TestIssuer(tmp_path, algorithms=("ES256",))
    identifier = await make_identifier(issuer.config())
    token = issuer.mint(SHOPPER, aud=AUDIENCE, alg="ES256")
    first = await identifier.identify(bearer(token), None)
    assert await identifier.identify(bearer(token), None) is first  # served from the cache
    expired = issuer.mint(SHOPPER, aud=AUDIENCE, alg="ES256", ttl=-120)
    assert "expired" in (await rejected(identifier, expired)).lower()


async def test_a_token_of_a_removed_key_stays_refused_across_later_rotations(
        tmp_path: Path, make_identifier: MakeIdentifier) -> None:
    """Cached verifications are void once the key set changes, and stay void after further changes: the
    generation used to be id() of the key list, which CPython reuses, so a third key set could carry the
    first one's generation and revive the cached verification of a token whose key was removed."""
    rotating = TestIssuer(tmp_path, algorithms=("EdDSA",))
    identifier = await make_identifier(rotating.config(), monotonic=Clock(1000.0))
    old = rotating.mint(SHOPPER, aud=AUDIENCE, alg="EdDSA")
    assert (await identifier.identify(bearer(old), None)).id == SHOPPER  # cached
    source = FileKeySource(rotating.jwks_path, pem=False)
    generations = [source.generation]
    for _ in range(6):  # each rotation is read at once (first token of the new kid)
        key = rotating.rotate("EdDSA")
        assert (await identifier.identify(bearer(rotating.mint(SHOPPER, aud=AUDIENCE, alg="EdDSA")), None))
        assert await source.candidates(key.kid)
        generations.append(source.generation)
    assert len(set(generations)) == len(generations), generations
    assert "signing key" in await rejected(identifier, old)
