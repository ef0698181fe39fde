"""The JWT attack corpus: requests that must each be answered 401 (and never reach an upstream).

Each case builds one request from a `TestIssuer` and the audience the gateway expects. The gateway
(or identifier) under test must trust exactly `issuer.config(audience=AUD)` (default algorithms
RS256/ES256/EdDSA, default clock skew 30 s). Re-run through a real gateway::

    from tests.identity.corpus import ATTACKS
    for case in ATTACKS:
        request = case.build(issuer, f"{gw.url}/mcp")
        # POST f"{gw.url}/mcp" with request.headers (+ JSON-RPC headers), params=request.query
        # expect 401, a WWW-Authenticate header naming resource_metadata, and 0 upstream requests.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tests.support.tokens import TestIssuer, act_chain, b64url, forge, generate_key


@dataclass(frozen=True)
class AttackRequest:
    headers: dict[str, str]
    query: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class AttackCase:
    id: str
    expect: str  # a substring of the rejection message: proves the intended check fired, not an incidental one
    build: Callable[[TestIssuer, str], AttackRequest]


def _bearer(token: str) -> AttackRequest:
    return AttackRequest({"Authorization": f"Bearer {token}"})


def _claims(issuer: TestIssuer, aud: str, **extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"iss": issuer.issuer, "sub": "spiffe://acme.test/agent/evil", "aud": aud, "iat": now,
            "exp": now + 300, "tenant": "acme", **extra}


def _token(**mint: Any) -> Callable[[TestIssuer, str], AttackRequest]:
    """A case minted by the real issuer with a twist (mint keyword overrides).

    `exp_in`/`iat_in`/`nbf_in` are seconds from now; `key_of` signs with the issuer's key for another alg
    (header alg stays `alg`); `kid_of` advertises the kid of the issuer's key for that alg.
    """
    def build(issuer: TestIssuer, aud: str) -> AttackRequest:
        options = {"aud": aud, **mint}
        sub = options.pop("sub", "spiffe://acme.test/agent/evil")
        now = time.time()
        for name in ("exp", "iat", "nbf"):
            if f"{name}_in" in options:
                options[name] = now + options.pop(f"{name}_in")
        if "key_of" in options:
            options["key"] = issuer.keys[options.pop("key_of")]
        if "kid_of" in options:
            options["kid"] = issuer.keys[options.pop("kid_of")].kid
        return _bearer(issuer.mint(sub, **options))
    return build


def _forged(header: Mapping[str, Any], hmac_with_public_pem: bool = False,
            **claims: Any) -> Callable[[TestIssuer, str], AttackRequest]:
    def build(issuer: TestIssuer, aud: str) -> AttackRequest:
        key = issuer.keys["RS256"].public_pem if hmac_with_public_pem else None
        return _bearer(forge({"kid": issuer.keys["RS256"].kid, **header}, _claims(issuer, aud, **claims), key))
    return build


def _attacker(header: Callable[[Any], dict[str, Any]], *, alg: str = "RS256",
              kid_from_issuer: bool = False) -> Callable[[TestIssuer, str], AttackRequest]:
    """Signed by a key the attacker controls, advertised in the header (or under the issuer's own kid)."""
    def build(issuer: TestIssuer, aud: str) -> AttackRequest:
        rogue = generate_key(alg, issuer.keys[alg].kid if kid_from_issuer else "rogue-1")
        return _bearer(issuer.mint("spiffe://acme.test/agent/evil", aud=aud, alg=alg, key=rogue,
                                   headers=header(rogue)))
    return build


def _raw(value: str) -> Callable[[TestIssuer, str], AttackRequest]:
    return lambda issuer, aud: AttackRequest({"Authorization": value})


JKT = b64url(bytes(range(32)))  # a JWK SHA-256 thumbprint's shape (RFC 7638): 43 base64url characters


def _scheme(scheme: str, claims: Mapping[str, Any]) -> Callable[[TestIssuer, str], AttackRequest]:
    """A valid token of the issuer under another authorization scheme (`DPoP <token>`, RFC 9449 §7.1)."""
    def build(issuer: TestIssuer, aud: str) -> AttackRequest:
        token = issuer.mint("spiffe://acme.test/agent/evil", aud=aud, claims=claims)
        return AttackRequest({"Authorization": f"{scheme} {token}", "DPoP": "proof-not-checked"})
    return build


def _query_token(issuer: TestIssuer, aud: str) -> AttackRequest:
    return AttackRequest({}, {"access_token": issuer.mint("spiffe://acme.test/agent/evil", aud=aud)})


def _tampered(issuer: TestIssuer, aud: str) -> AttackRequest:
    good = issuer.mint("spiffe://acme.test/agent/evil", aud=aud, tenant="acme")
    header, _payload, signature = good.split(".")
    evil = forge({}, _claims(issuer, aud, tenant="globex")).split(".")[1]
    return _bearer(f"{header}.{evil}.{signature}")


def _stripped_signature(issuer: TestIssuer, aud: str) -> AttackRequest:
    header, payload, _signature = issuer.mint("spiffe://acme.test/agent/evil", aud=aud).split(".")
    return _bearer(f"{header}.{payload}.")


def _root_audience(issuer: TestIssuer, aud: str) -> AttackRequest:
    return _token(aud=aud.removesuffix("/mcp"))(issuer, aud)


def _issuer_prefix(issuer: TestIssuer, aud: str) -> AttackRequest:
    return _token(iss=issuer.issuer + ".evil")(issuer, aud)


def _deep_chain(issuer: TestIssuer, aud: str) -> AttackRequest:
    act = act_chain(*[f"spiffe://acme.test/agent/a{i}" for i in range(17)])
    return _bearer(issuer.mint("spiffe://acme.test/agent/evil", aud=aud, act=act))


ATTACKS: list[AttackCase] = [
    AttackCase("alg_none", "algorithm", _forged({"alg": "none"})),
    AttackCase("alg_None_mixed_case", "algorithm", _forged({"alg": "None"})),
    AttackCase("alg_missing", "algorithm", _forged({})),
    AttackCase("hs256_signed_with_issuer_public_key", "algorithm", _forged({"alg": "HS256", "typ": "JWT"}, True)),
    AttackCase("hs256_public_key_no_kid", "algorithm", lambda i, a: _bearer(forge({"alg": "HS256"}, _claims(i, a),
                                                                     i.keys["RS256"].public_pem))),
    AttackCase("alg_not_in_allow_list_ps256", "algorithm", _token(alg="PS256", key_of="RS256")),
    AttackCase("alg_key_type_mismatch", "Unknown signing key", _token(alg="EdDSA", kid_of="RS256")),
    AttackCase("wrong_aud", "audience", _token(aud="https://other.example/mcp")),
    AttackCase("aud_is_resource_root_not_mcp", "audience", _root_audience),
    AttackCase("missing_aud", "no aud", _token(aud=None)),
    AttackCase("wrong_iss", "issuer not accepted", _token(iss="https://evil.example")),
    AttackCase("iss_prefix_of_trusted", "issuer not accepted", _issuer_prefix),
    AttackCase("missing_iss", "no issuer", _token(omit=("iss",))),
    AttackCase("missing_exp", "no exp", _token(omit=("exp",))),
    AttackCase("exp_not_a_number", "exp must be a number", _token(claims={"exp": "tomorrow"})),
    AttackCase("expired_past_skew", "expired", _token(exp_in=-120, iat_in=-400)),
    AttackCase("nbf_in_future", "not yet valid", _token(nbf_in=600)),
    AttackCase("iat_in_future", "issued in the future", _token(iat_in=600, exp_in=900)),
    AttackCase("unknown_kid", "Unknown signing key", _token(kid="no-such-key")),
    AttackCase("unknown_kid_rogue_key", "Unknown signing key", _attacker(lambda rogue: {})),
    AttackCase("rogue_key_under_issuer_kid", "signature", _attacker(lambda rogue: {}, kid_from_issuer=True)),
    AttackCase("kid_path_traversal", "Unknown signing key", _token(kid="../../../../etc/passwd")),
    AttackCase("kid_with_slash", "Unknown signing key", _token(kid="keys/idp-rs256-1")),
    AttackCase("kid_with_nul", "key id", _token(kid="idp-rs256-1\u0000")),
    AttackCase("kid_sql", "key id", _token(kid="x' OR '1'='1")),
    AttackCase("kid_too_long", "key id", _token(kid="k" * 200)),
    AttackCase("kid_not_string", "key id", _forged({"alg": "RS256", "kid": 7})),
    AttackCase("embedded_jwk", "jwk", _attacker(lambda rogue: {"jwk": rogue.public_jwk})),
    AttackCase("embedded_jwk_ec", "jwk", _attacker(lambda rogue: {"jwk": rogue.public_jwk}, alg="ES256")),
    AttackCase("jku_remote_keys", "jku", _attacker(lambda rogue: {"jku": "http://127.0.0.1:9/jwks.json"})),
    AttackCase("x5u_remote_cert", "x5u", _attacker(lambda rogue: {"x5u": "http://127.0.0.1:9/cert.pem"})),
    AttackCase("x5c_embedded_chain", "x5c", _attacker(lambda rogue: {"x5c": ["MIIB"]})),
    AttackCase("crit_header", "crit", _token(headers={"crit": ["exp"]})),
    AttackCase("b64_false_header", "Malformed", _token(headers={"b64": False, "crit": ["b64"]})),
    AttackCase("tampered_payload", "signature", _tampered),
    AttackCase("signature_stripped", "signature", _stripped_signature),
    AttackCase("sub_missing", "subject", _token(sub=None)),
    AttackCase("sub_invalid_spiffe", "SPIFFE", _token(sub="spiffe://Acme.Test:8443/agent")),
    AttackCase("sub_not_string", "subject", _token(sub=None, claims={"sub": 42})),
    AttackCase("act_not_object", "act claim", _token(claims={"act": "spiffe://acme.test/agent/x"})),
    AttackCase("act_without_sub", "subject", _token(act={"tenant": "acme"})),
    AttackCase("act_chain_deeper_than_16", "deeper than 16", _deep_chain),
    # Sender-constrained tokens (a `cnf` claim, RFC 7800): bound to a key whose possession the gateway never checks,
    # so one presented as a bearer token must be refused (RFC 9449 §7.2 for DPoP); they were accepted as plain bearers.
    AttackCase("cnf_dpop_jkt", "sender-constrained", _token(claims={"cnf": {"jkt": JKT}})),
    AttackCase("cnf_mtls_x5t_s256", "sender-constrained", _token(claims={"cnf": {"x5t#S256": JKT}})),
    AttackCase("cnf_other_method", "sender-constrained", _token(claims={"cnf": {"kid": "holder-key-1"}})),
    AttackCase("cnf_not_an_object", "sender-constrained", _token(claims={"cnf": "bound"})),
    AttackCase("dpop_scheme", "DPoP", _scheme("DPoP", {"cnf": {"jkt": JKT}})),
    AttackCase("dpop_scheme_lower_case_unbound_token", "DPoP", _scheme("dpop", {})),
    AttackCase("token_in_query_string", "query string", _query_token),
    # Signed by the issuer, but a claim holds a lone surrogate (JSON's "\ud800" escape, no Unicode text): each
    # call of such a principal was an internal error (its id could not be encoded for Cedar or the decision log).
    AttackCase("sub_lone_surrogate", "Malformed", _token(sub="agent-evil\ud800")),
    AttackCase("tenant_lone_surrogate", "Malformed", _token(claims={"tenant": "ac\udc00me"})),
    AttackCase("act_sub_lone_surrogate", "Malformed", _token(act={"sub": "spiffe://acme.test/agent/x\ud800"})),
    AttackCase("garbage", "Malformed", _raw("Bearer garbage")),
    AttackCase("garbage_three_parts", "Malformed", _raw("Bearer a.b.c")),
    AttackCase("garbage_payload_array", "Malformed", lambda i, a: _bearer(forge({"alg": "RS256"}, {}).split(".")[0]
                                                             + ".WzFd.c2ln")),
    # JSON nested deeper than the parser's recursion limit, read before any signature check: each such request
    # got a 500 and a logged traceback. Short enough for the HTTP header line limit (8 KiB).
    AttackCase("deeply_nested_header", "Malformed", _raw("Bearer " + b64url(b"[" * 5000) + ".e30.c2ln")),
    AttackCase("deeply_nested_payload", "Malformed",
               _raw("Bearer " + b64url(b'{"alg": "RS256"}') + "." + b64url(b'{"a": ' + b"[" * 5000) + ".c2ln")),
    AttackCase("empty_bearer", "Bearer", _raw("Bearer ")),
    AttackCase("basic_auth", "Bearer", _raw("Basic dXNlcjpwYXNz")),
    AttackCase("oversized_token", "too large", _raw("Bearer " + "a" * 20_000 + ".b.c")),
    AttackCase("no_credentials", "Bearer token required", lambda i, a: AttackRequest({})),
]
