"""Access-token verification: compact JWS → verified claims of exactly one configured issuer.

Order of checks (each failure is a `TokenError`, answered 401 by the identifier):
1. shape: three base64url parts, bounded size, header and payload JSON objects;
2. header: `alg` in the issuer's allow-list (never `none`/HS*), no embedded or remote key material
   (`jwk`, `jku`, `x5u`, `x5c`; the thumbprints `x5t*` are ignored), no `crit`/`b64` extensions, `kid` a plain token
   ([A-Za-z0-9._~+/=-], ≤128), `typ` as configured;
3. issuer: chosen by the *unverified* `iss`, which must equal a configured issuer exactly;
4. key: from that issuer's source only, by kid, and its key type must fit `alg`;
5. PyJWT verifies the signature, `aud` (the configured audience, RFC 8707; on an endpoint with its own
   protected-resource metadata, that resource's URL too) and `iss`;
6. times: `exp` required, `nbf`/`iat` honoured, all with the configured clock skew;
7. no `cnf` claim: a sender-constrained token (RFC 7800: DPoP's `jkt`, mTLS's `x5t#S256`, any other method) is
   bound to a key whose possession the gateway never checks, so it is refused (RFC 9449 §7.2).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.exceptions import (
    InvalidAudienceError,
    InvalidIssuerError,
    InvalidKeyError,
    InvalidSignatureError,
    MissingRequiredClaimError,
    PyJWTError,
)

from gateway.config.model import IssuerConfig
from gateway.identity.jwks import KeySource
from gateway.identity.verify_keys import MIN_RSA_BITS, VerifyKey

MAX_TOKEN_BYTES = 16 * 1024
# Printable and bounded: base64 in either alphabet (Amazon Cognito's kids are standard base64, with `+`, `/` and a
# trailing `=`), dots and tildes. A kid is only compared with the issuer's own kids, never used as a path or URL,
# so `../../etc/passwd` names no key (Unknown signing key); spaces, quotes, controls and non-ASCII are malformed.
KID_RE = re.compile(r"[A-Za-z0-9._~+/=-]{1,128}")
# Key material or where to fetch it (and extensions that change what is signed): refused. The certificate
# thumbprints `x5t` and `x5t#S256` are no key material (Microsoft Entra ID's v1.0 tokens and AD FS carry `x5t`
# beside or instead of `kid`): they are ignored, the key still comes from the issuer's own set.
FORBIDDEN_HEADERS = frozenset({"jwk", "jku", "x5u", "x5c", "crit", "b64"})
# Taking a bound token as a bearer token would let whoever copied it use it: the binding is its whole point.
SENDER_CONSTRAINED = ("Token is sender-constrained (cnf claim), which this gateway does not support: it checks no "
                      "proof of possession, so it accepts no bound token as a bearer token")
_SEGMENT_RE = re.compile(r"[A-Za-z0-9_-]*")
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


class TokenError(Exception):
    """The token is not acceptable; `message` is safe to show the caller (no token content)."""

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)


@dataclass(frozen=True)
class VerifiedToken:
    issuer: IssuerConfig
    header: dict[str, Any]
    claims: dict[str, Any]
    everywhere: bool = True  # `aud` names the issuer's audience, not only the endpoint's own resource


def names_audience(claims: Mapping[str, Any], audience: str) -> bool:
    aud = claims.get("aud")
    return aud == audience or (isinstance(aud, list) and audience in aud)


def _b64_json(segment: str, what: str) -> dict[str, Any]:
    if not _SEGMENT_RE.fullmatch(segment):
        raise TokenError(f"Malformed token {what}")
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        value = json.loads(raw)
    except (binascii.Error, ValueError, RecursionError) as exc:  # nesting past the parser's limit: not a JWT
        raise TokenError(f"Malformed token {what}") from exc
    if not isinstance(value, dict):
        raise TokenError(f"Malformed token {what}")
    if _SURROGATE_ESCAPE.search(raw) and not _unicode(value):
        # A lone surrogate (an escape such as \ud800 with no pair) is no Unicode text: as a subject, tenant or
        # actor it could not be encoded for the policy engine, the decision log or an upstream (internal errors).
        raise TokenError(f"Malformed token {what}")
    return value


def _unicode(value: Any) -> bool:
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except (UnicodeEncodeError, RecursionError):
        return False
    return True


def split_token(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Unverified header and payload of a compact JWS (shape checks only)."""
    if len(token) > MAX_TOKEN_BYTES:
        raise TokenError("Token too large")
    parts = token.split(".")
    if len(parts) != 3:
        raise TokenError("Malformed token")
    return _b64_json(parts[0], "header"), _b64_json(parts[1], "payload")


def _normal_typ(value: str) -> str:
    value = value.lower()
    return value[len("application/"):] if value.startswith("application/") else value


def check_header(header: Mapping[str, Any], issuer: IssuerConfig) -> tuple[str, str | None]:
    """(alg, kid) of an acceptable header; raises TokenError otherwise."""
    bad = FORBIDDEN_HEADERS.intersection(header)
    if bad:
        raise TokenError(f"Token header parameter not accepted: {sorted(bad)[0]}")
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in issuer.algorithms:
        raise TokenError("Token algorithm not accepted")
    kid = header.get("kid")
    if kid is not None and (not isinstance(kid, str) or not KID_RE.fullmatch(kid)):
        raise TokenError("Malformed key id")
    if issuer.require_typ is not None:
        typ = header.get("typ")
        if not isinstance(typ, str) or _normal_typ(typ) != _normal_typ(issuer.require_typ):
            raise TokenError("Token type not accepted")
    return alg, kid


def check_times(claims: Mapping[str, Any], now: float, skew: float) -> float:
    """Enforce exp (required), nbf and iat with `skew` seconds of tolerance; returns exp."""
    def number(name: str) -> float | None:
        value = claims.get(name)
        if value is None:
            return None
        # NaN and infinities (the parser reads NaN/Infinity literals and 1e400) are no JSON numbers, and
        # compare as never past: a signed `exp: Infinity` would never expire. An int past a double's range
        # (10**400) cannot be a time either.
        try:
            seconds = float(value) if isinstance(value, int | float) and not isinstance(value, bool) else math.nan
        except OverflowError:
            seconds = math.nan
        if not math.isfinite(seconds):
            raise TokenError(f"Token claim {name} must be a number")
        return seconds

    exp = number("exp")
    if exp is None:
        raise TokenError("Token has no expiry")
    if now >= exp + skew:
        raise TokenError("Token expired")
    nbf = number("nbf")
    if nbf is not None and now + skew < nbf:
        raise TokenError("Token not yet valid")
    iat = number("iat")
    if iat is not None and now + skew < iat:
        raise TokenError("Token issued in the future")
    return exp


class IssuerVerifier:
    """Verifies tokens of one configured issuer against its key source."""

    def __init__(self, config: IssuerConfig, audience: str, keys: KeySource, *, skew_s: float,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.audience = audience
        self.keys = keys
        self._skew = skew_s
        self._clock = clock
        # PyJWT checks signature, aud and iss; times are checked here with the injectable clock. An RSA key under
        # 2048 bits (RFC 7518 §3.3: MUST NOT be used) verifies nothing: PyJWT only warned and went on.
        self._options: Any = {"require": ["exp", "iss", "aud"], "verify_exp": False, "verify_nbf": False,
                              "verify_iat": False, "verify_aud": True, "verify_iss": True, "verify_sub": False,
                              "verify_jti": False, "enforce_minimum_key_length": True}

    async def _keys(self, alg: str, kid: str | None) -> list[VerifyKey]:
        """The keys to check the signature with, in order: the one the kid names, then kid-less ones (which
        match any kid, so one listed first must not hide the named key)."""
        candidates = [key for key in await self.keys.candidates(kid) if key.allows(alg)]
        if not candidates:
            raise TokenError("Unknown signing key")
        if kid is None and len(candidates) > 1:
            raise TokenError("Token needs a key id")
        return sorted(candidates, key=lambda key: key.kid != kid)

    async def verify(self, token: str, header: Mapping[str, Any], also_audience: str | None = None) -> dict[str, Any]:
        """Verified claims; `aud` must name the configured audience or, when given, `also_audience`."""
        alg, kid = check_header(header, self.config)
        keys = await self._keys(alg, kid)
        audience = self.audience if also_audience is None else [self.audience, also_audience]
        try:
            claims = self._decode(token, keys, alg, audience)
        except InvalidSignatureError as exc:
            raise TokenError("Invalid token signature") from exc
        except InvalidKeyError as exc:  # PyJWT's text names the key's size and the least it takes, nothing secret
            raise TokenError(f"Token signing key not accepted: {exc}") from exc
        except InvalidAudienceError as exc:
            # The configured audience is public (the `resource` of the RFC 9728 metadata): naming it shows a trailing
            # slash or a missing /mcp at once. Not the endpoint's own resource: that echoes the path asked for, and an
            # unknown upstream must be refused as a known one is (nothing tells which names exist).
            raise TokenError("Token audience does not name this gateway "
                             f"(it must name {self.audience!r})") from exc
        except InvalidIssuerError as exc:
            raise TokenError("Token issuer not accepted") from exc
        except MissingRequiredClaimError as exc:
            raise TokenError(f"Token has no {exc.claim} claim") from exc
        except PyJWTError as exc:
            raise TokenError(f"Invalid token ({type(exc).__name__})") from exc
        check_times(claims, self._clock(), self._skew)
        if "cnf" in claims:  # whatever its value: an unreadable confirmation is no lesser binding (fail closed)
            raise TokenError(SENDER_CONSTRAINED)
        return claims

    def _decode(self, token: str, keys: list[VerifyKey], alg: str, audience: str | list[str]) -> dict[str, Any]:
        for key in keys[:-1]:
            try:
                return self._decode_with(token, key, alg, audience)
            except (InvalidSignatureError, InvalidKeyError):
                continue  # another fitting key may have signed it (a weak one verifies nothing)
        return self._decode_with(token, keys[-1], alg, audience)

    def _decode_with(self, token: str, key: VerifyKey, alg: str, audience: str | list[str]) -> dict[str, Any]:
        # Checked here, not left to enforce_minimum_key_length: PyJWT 2.10 has no such option and 2.11 ignores it
        # in a decode's options (pyproject takes both), so a weak key verified tokens there, only warning.
        if isinstance(key.key, rsa.RSAPublicKey) and key.key.key_size < MIN_RSA_BITS:
            raise InvalidKeyError(f"The RSA key is {key.key.key_size} bits long, under the {MIN_RSA_BITS} bits "
                                  "RFC 7518 §3.3 requires")
        claims: dict[str, Any] = jwt.decode(token, key.key, algorithms=[alg], audience=audience,
                                            issuer=self.config.issuer, options=self._options)
        return claims


class TokenVerifier:
    """All configured issuers: picks one by the unverified `iss`, then verifies properly."""

    def __init__(self, issuers: Mapping[str, IssuerVerifier]) -> None:
        self._issuers = dict(issuers)

    async def verify(self, token: str, also_audience: str | None = None) -> VerifiedToken:
        header, payload = split_token(token)
        iss = payload.get("iss")
        if not isinstance(iss, str):
            raise TokenError("Token has no issuer")
        verifier = self._issuers.get(iss)
        if verifier is None:
            raise TokenError(unknown_issuer(iss, self._issuers))
        claims = await verifier.verify(token, header, also_audience)
        everywhere = also_audience is None or names_audience(claims, verifier.audience)
        return VerifiedToken(verifier.config, dict(header), claims, everywhere)


def unknown_issuer(iss: str, configured: Mapping[str, object]) -> str:
    """The refusal of an `iss` no issuer has. Issuers are compared exactly (OpenID Connect), and Auth0's end in a slash
    where an operator often writes none: one that differs from a configured issuer only so is named, with it, so the
    operator sees which side to fix (the text is then the configured issuer's, plus or minus a slash)."""
    for name in configured:
        if iss != name and iss.rstrip("/") == name.rstrip("/"):
            return (f"Token issuer not accepted: {iss!r} is not the configured {name!r} (issuers are compared "
                    "exactly, trailing slash included)")
    return "Token issuer not accepted"
