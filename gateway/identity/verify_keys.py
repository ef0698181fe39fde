"""Verification keys themselves: a JWKS or PEM document read into keys, and whether a key set fits the issuer.

Key objects are built once when a key set is loaded (PyJWT `PyJWK` → cryptography key), never per
token. Symmetric (`oct`) keys and keys marked for encryption are dropped: access tokens are only
accepted with asymmetric signatures. Where the documents come from (a file, a URL) is jwks.py's.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from jwt import PyJWK
from jwt.exceptions import PyJWTError

# The key sources' logger (docs/identity.md names it): an operator reads key set problems in one place.
log = logging.getLogger("customs.identity.jwks")

# The curve an EC algorithm needs (RFC 7518 §3.4): ES256 with a P-384 key is a mismatch.
_EC_CURVES = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1", "ES256K": "secp256k1"}


# RFC 7518 §3.3: RS*/PS* keys MUST be 2048 bits or larger. The verifier refuses a token of a shorter one (PyJWT's
# enforce_minimum_key_length, jwt.py); a key set of only such keys is reported as fitting no algorithm.
MIN_RSA_BITS = 2048


class KeySetError(ValueError):
    """A key source could not be read or holds no usable key."""


@dataclass(frozen=True)
class VerifyKey:
    """One public key, ready for PyJWT: the kid it is published under and the alg it is pinned to (if any)."""

    kid: str | None
    key: Any  # a cryptography public key object
    alg: str | None = None

    def allows(self, alg: str) -> bool:
        """Does this key's type (and pinned alg) fit the token's `alg`? Stops alg/key-type confusion."""
        if self.alg is not None and self.alg != alg:
            return False
        if alg.startswith(("RS", "PS")):
            return isinstance(self.key, rsa.RSAPublicKey)
        if alg in _EC_CURVES:
            return isinstance(self.key, ec.EllipticCurvePublicKey) and self.key.curve.name == _EC_CURVES[alg]
        if alg == "EdDSA":
            return isinstance(self.key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey)
        return False


def keys_from_jwks(document: Any, origin: str) -> list[VerifyKey]:
    """Parse a JWKS document into keys; unusable entries are skipped with a warning, none usable is an error."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise KeySetError(f"{origin}: not a JWKS document (expected an object with a 'keys' list)")
    keys: list[VerifyKey] = []
    for index, entry in enumerate(document["keys"]):
        key = _one_jwk(entry, f"{origin} keys[{index}]")
        if key is not None:
            keys.append(key)
    if not keys:
        raise KeySetError(f"{origin}: no usable signature keys")
    return keys


def _one_jwk(entry: Any, where: str) -> VerifyKey | None:
    if not isinstance(entry, dict):
        log.warning("%s: not an object; skipped", where)
        return None
    if entry.get("kty") == "oct" or "d" in entry:
        # Secret material in a public key set is a misconfiguration; never verify with it.
        log.warning("%s: symmetric or private key in a JWKS; skipped", where)
        return None
    if entry.get("use", "sig") != "sig":
        return None
    kid = entry.get("kid")
    alg = entry.get("alg")
    if (kid is not None and not isinstance(kid, str)) or (alg is not None and not isinstance(alg, str)):
        log.warning("%s: kid/alg must be strings; skipped", where)
        return None
    try:
        key = PyJWK(entry).key
    except (PyJWTError, ValueError, TypeError, KeyError) as exc:
        log.warning("%s: unusable key (%s); skipped", where, type(exc).__name__)
        return None
    return VerifyKey(kid, key, alg)


def keys_from_pem(data: bytes, origin: str) -> list[VerifyKey]:
    """A PEM public key (SubjectPublicKeyInfo) or certificate, as a single kid-less key."""
    try:
        if b"BEGIN CERTIFICATE" in data:
            key: Any = x509.load_pem_x509_certificate(data).public_key()
        else:
            key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise KeySetError(f"{origin}: not a PEM public key or certificate") from exc
    return [VerifyKey(None, key)]


def _weak(key: VerifyKey) -> bool:
    return isinstance(key.key, rsa.RSAPublicKey) and key.key.key_size < MIN_RSA_BITS


def _describe(key: VerifyKey) -> str:
    """`kid` with its key type (and pinned alg), for messages."""
    kind = type(key.key).__name__.removeprefix("_").replace("PublicKey", "")
    if isinstance(key.key, ec.EllipticCurvePublicKey):
        kind = f"EC {key.key.curve.name}"
    if _weak(key):
        kind = f"RSA {key.key.key_size} bits, under {MIN_RSA_BITS}"
    pinned = f" alg {key.alg}" if key.alg else ""
    return f"{key.kid or '(no kid)'}: {kind}{pinned}"


def unfit(keys: Iterable[VerifyKey], algorithms: Iterable[str], origin: str) -> str | None:
    """Why no key can verify a token of any of `algorithms` (None: some key can)."""
    keys, algorithms = list(keys), list(algorithms)
    if any(key.allows(alg) and not _weak(key) for key in keys for alg in algorithms):
        return None
    found = ", ".join(_describe(key) for key in keys)
    return f"{origin}: no key fits the issuer's algorithms {', '.join(algorithms)} (keys: {found})"


class FitCheck:
    """Whether the key set in use fits the issuer's `algorithms`. One that does not refuses every token of the
    issuer (401) while looking healthy, so it is logged (once per key set: a refresh fetching the same set
    again stays quiet) and /readyz says why."""

    def __init__(self, algorithms: Iterable[str] | None, origin: str) -> None:
        self._algorithms = list(algorithms) if algorithms is not None else None
        self._origin = origin
        self.problem: str | None = None

    def check(self, keys: list[VerifyKey]) -> None:
        problem = unfit(keys, self._algorithms, self._origin) if self._algorithms is not None and keys else None
        if problem is not None and problem != self.problem:
            log.warning("%s: every token of this issuer is refused", problem)
        self.problem = problem


def select(keys: Iterable[VerifyKey], kid: str | None) -> list[VerifyKey]:
    """Keys a token with this `kid` may be checked against: a kid-less key matches any kid, and a kid-less
    token may use any key (the verifier then insists on exactly one that fits the algorithm)."""
    return [key for key in keys if kid is None or key.kid is None or key.kid == kid]
