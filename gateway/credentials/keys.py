"""Signing keys for minted credentials: load, generate, persist (0600 PEM), rotate, publish as a JWKS.

Keys live as PEM files in `signing.key_dir`. Generated keys are named `k<created_ms>-<kid>.pem` so
their age survives copies; any other `*.pem` an operator puts there (a mounted secret) is loaded too,
aged by its modification time. The newest key of the configured algorithm signs; older keys stay
published for `retain_s` after a newer key replaced them, so tokens minted just before a rotation
still verify until they expire.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from jwt.algorithms import ECAlgorithm, OKPAlgorithm

from gateway.config.model import SigningConfig

log = logging.getLogger("customs.credentials.keys")

Algorithm = Literal["EdDSA", "ES256"]
PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey
_GENERATED = re.compile(r"^k(\d{13})-([A-Za-z0-9_-]+)\.pem$")


@dataclass(frozen=True)
class SigningKey:
    """One key pair: its id (RFC 7638 thumbprint), algorithm, age and file."""

    kid: str
    algorithm: Algorithm
    private_key: PrivateKey = field(repr=False)
    created: float
    path: Path

    def public_jwk(self) -> dict[str, Any]:
        public = self.private_key.public_key()
        if isinstance(public, ed25519.Ed25519PublicKey):
            jwk: dict[str, Any] = dict(OKPAlgorithm.to_jwk(public, as_dict=True))
        else:
            jwk = dict(ECAlgorithm.to_jwk(public, as_dict=True))
        return {**jwk, "kid": self.kid, "alg": self.algorithm, "use": "sig"}


def _algorithm_of(key: object) -> Algorithm | None:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "EdDSA"
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
        return "ES256"
    return None


def thumbprint(private_key: PrivateKey) -> str:
    """RFC 7638 JWK thumbprint of the public key (base64url sha256 of the required members)."""
    public = private_key.public_key()
    if isinstance(public, ed25519.Ed25519PublicKey):
        jwk = OKPAlgorithm.to_jwk(public, as_dict=True)
        members = {k: jwk[k] for k in ("crv", "kty", "x")}
    else:
        jwk = ECAlgorithm.to_jwk(public, as_dict=True)
        members = {k: jwk[k] for k in ("crv", "kty", "x", "y")}
    digest = hashlib.sha256(json.dumps(members, sort_keys=True, separators=(",", ":")).encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def generate_private_key(algorithm: Algorithm) -> PrivateKey:
    if algorithm == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    return ec.generate_private_key(ec.SECP256R1())


def _write_private(path: Path, key: PrivateKey) -> None:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    # Create with 0600 from the start: the key must never be readable by others, not even briefly.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)


class SigningKeys:
    """The key ring: the current signer plus recently retired keys still published in the JWKS."""

    def __init__(self, config: SigningConfig, *, retain_s: float = 3660.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.retain_s = retain_s
        self._clock = clock
        self._keys: list[SigningKey] = []  # oldest first

    @property
    def key_dir(self) -> Path:
        return self.config.key_dir

    def load(self) -> None:
        """Read every key in key_dir; generate and persist one if none signs with the configured algorithm."""
        self.key_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        keys = [k for k in (self._read(p) for p in sorted(self.key_dir.glob("*.pem"))) if k is not None]
        self._keys = sorted(keys, key=lambda k: (k.created, k.kid))
        if not any(k.algorithm == self.config.algorithm for k in self._keys):
            self._keys.append(self._generate())
            log.info("generated %s signing key %s in %s", self.config.algorithm, self._keys[-1].kid, self.key_dir)
        self.prune()

    def _read(self, path: Path) -> SigningKey | None:
        try:
            if path.stat().st_mode & 0o077:
                log.warning("signing key %s is readable by group/others; restricting to 0600", path.name)
                path.chmod(0o600)
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as exc:
            log.warning("ignoring signing key file %s: %s", path.name, type(exc).__name__)
            return None
        algorithm = _algorithm_of(key)
        if algorithm is None:
            log.warning("ignoring signing key file %s: not Ed25519 or P-256", path.name)
            return None
        assert isinstance(key, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey)
        match = _GENERATED.match(path.name)
        created = int(match.group(1)) / 1000 if match else path.stat().st_mtime
        return SigningKey(thumbprint(key), algorithm, key, created, path)

    def _generate(self) -> SigningKey:
        key = generate_private_key(self.config.algorithm)
        kid = thumbprint(key)
        # Strictly newer than every existing key, even within one millisecond.
        created_ms = max([int(self._clock() * 1000)] + [int(k.created * 1000) + 1 for k in self._keys])
        path = self.key_dir / f"k{created_ms:013d}-{kid}.pem"
        _write_private(path, key)
        return SigningKey(kid, self.config.algorithm, key, created_ms / 1000, path)

    def rotate(self) -> SigningKey:
        """Generate a new key that signs from now on; older keys stay published for `retain_s`."""
        if not self._keys:
            self.load()
        key = self._generate()
        self._keys.append(key)
        log.info("rotated signing key: %s now signs", key.kid)
        self.prune()
        return key

    def prune(self) -> list[str]:
        """Forget (and delete) keys retired longer than `retain_s` ago. Returns the removed kids."""
        now = self._clock()
        current = self.current
        kept: list[SigningKey] = []
        removed: list[str] = []
        for index, key in enumerate(self._keys):
            successor = self._keys[index + 1] if index + 1 < len(self._keys) else None
            retired_at = successor.created if successor is not None else None
            if key is current or retired_at is None or now - retired_at < self.retain_s:
                kept.append(key)
                continue
            removed.append(key.kid)
            try:
                key.path.unlink()
            except OSError as exc:
                log.warning("could not delete retired key %s: %s", key.path.name, type(exc).__name__)
        self._keys = kept
        return removed

    @property
    def current(self) -> SigningKey:
        """The newest key of the configured algorithm: the one that signs."""
        for key in reversed(self._keys):
            if key.algorithm == self.config.algorithm:
                return key
        raise RuntimeError("signing keys not loaded")

    @property
    def keys(self) -> tuple[SigningKey, ...]:
        return tuple(self._keys)

    def public_key(self, kid: str) -> Any:
        """The public key object for `kid` (any published key), or None."""
        for key in self._keys:
            if key.kid == kid:
                return key.private_key.public_key()
        return None

    def algorithm_of(self, kid: str) -> Algorithm | None:
        return next((k.algorithm for k in self._keys if k.kid == kid), None)

    def jwks(self) -> dict[str, Any]:
        """The published key set, newest first."""
        return {"keys": [k.public_jwk() for k in reversed(self._keys)]}
