"""Signing keys for minted credentials: load, generate, persist (0600 PEM), rotate, publish as a JWKS.

Keys live as PEM files in `signing.key_dir`. Generated keys are named `k<created_ms>-<kid>.pem` so
their age survives copies; any other `*.pem` an operator puts there (a mounted secret) is loaded too,
aged by its modification time. The newest key of the configured algorithm signs; older keys stay
published for `retain_s` after a newer key replaced them, so tokens minted just before a rotation
still verify until they expire. A missing key is generated only where that is allowed (dev
environments or `signing.generate: true`); elsewhere it is a start-up error naming the directory.
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

from gateway.config import ConfigError
from gateway.config.model import Config, SigningConfig, UpstreamConfig

log = logging.getLogger("customs.credentials.keys")

Algorithm = Literal["EdDSA", "ES256"]
PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey
_GENERATED = re.compile(r"^k(\d{13})-([A-Za-z0-9_-]+)\.pem$")
# Environments where a signing key may be generated on first start without `signing.generate: true`.
DEV_ENVIRONMENTS = frozenset({"dev", "development", "local"})


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


_CANNOT_KEEP = "signing.key_dir: {}: cannot keep signing keys there"


def unusable_key_dir(key_dir: Path) -> str | None:
    """Why no key can be generated in `key_dir`, as far as reading shows (no write is tried): it, or the nearest
    of its parents that exists, is not a directory."""
    path = key_dir
    while not path.exists() and not path.is_symlink() and path.parent != path:
        path = path.parent
    if path.is_dir():
        return None
    return f"{_CANNOT_KEEP.format(key_dir)} ({path} is not a directory)"


def generation_allowed(config: Config) -> bool:
    """Whether a missing signing key may be generated: `signing.generate`, else only in dev environments."""
    if config.signing.generate is not None:
        return config.signing.generate
    return config.environment.lower() in DEV_ENVIRONMENTS


def signer_needed_by(upstream: UpstreamConfig) -> bool:
    """Whether the upstream gets gateway-signed tokens (minted, or the actor token of a token exchange)."""
    return upstream.credentials.mode in ("minted", "token_exchange")


def signer_needed(config: Config) -> bool:
    return any(signer_needed_by(u) for u in config.upstreams)


class UnusableKey(Exception):
    """A key file that cannot sign; the message says why in words an operator can act on."""


def _unusable(data: bytes, exc: Exception) -> UnusableKey:
    # The exception's class name alone ("TypeError") told an operator nothing about the file they had put there.
    if isinstance(exc, TypeError):
        return UnusableKey("encrypted with a password: store it unencrypted (PKCS#8, no password)")
    if b"PUBLIC KEY-----" in data or b"CERTIFICATE-----" in data:
        return UnusableKey("a public key or certificate, not the private key")
    return UnusableKey("not a PEM private key")


def _load_key(path: Path) -> SigningKey:
    """One key file as a SigningKey; raises UnusableKey."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UnusableKey(f"cannot read it ({exc.strerror or type(exc).__name__})") from exc
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise _unusable(data, exc) from exc
    algorithm = _algorithm_of(key)
    if algorithm is None:
        raise UnusableKey("not Ed25519 or P-256")
    assert isinstance(key, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey)
    match = _GENERATED.match(path.name)
    created = int(match.group(1)) / 1000 if match else path.stat().st_mtime
    return SigningKey(thumbprint(key), algorithm, key, created, path)


def read_key(path: Path, *, tighten: bool = True) -> SigningKey | None:
    """One key file, or None (logged, with the reason) when it is unreadable or not Ed25519/P-256.
    `tighten`: chmod 0600."""
    if tighten:
        _tighten(path)
    try:
        return _load_key(path)
    except UnusableKey as exc:
        log.warning("ignoring signing key file %s: %s", path.name, exc)
        return None


def _tighten(path: Path) -> None:
    """chmod 0600 a key readable by group/others. A key that cannot be (a read-only mount such as a Kubernetes
    secret volume, a file owned by someone else) is still used: refusing it would not make it less exposed."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return  # reading it fails the same way, and says so
    if not mode & 0o077:
        return
    log.warning("signing key %s is readable by group/others; restricting to 0600", path.name)
    try:
        path.chmod(0o600)
    except OSError as exc:
        log.warning("signing key %s is readable by group/others and could not be restricted (%s); using it as it "
                    "is: give the file (or the secret volume's defaultMode) 0600 or 0400", path.name, exc.strerror)


def read_keys(key_dir: Path, *, tighten: bool = True) -> list[SigningKey]:
    """Every usable key in `key_dir`, oldest first (none when the directory does not exist)."""
    keys = [k for k in (read_key(p, tighten=tighten) for p in sorted(key_dir.glob("*.pem"))) if k is not None]
    return sorted(keys, key=lambda k: (k.created, k.kid))


def missing_key_problems(config: Config) -> list[str]:
    """What `config check` and `serve` report when the gateway needs a signing key it may not generate."""
    signing = config.signing
    if not signer_needed(config):
        return []
    if generation_allowed(config):
        problem = unusable_key_dir(signing.key_dir)
        return [] if problem is None else [problem]
    if any(k.algorithm == signing.algorithm for k in read_keys(signing.key_dir, tighten=False)):
        return []
    return [f"signing.key_dir: {signing.key_dir}: no {signing.algorithm} signing key (a PKCS#8 PEM file)"
            f"{_ignored(signing.key_dir)}; "
            f"keys are generated only in dev environments and environment is {config.environment!r}: "
            "put a key there or set signing.generate: true"]


def _ignored(key_dir: Path) -> str:
    """The key files found but not usable, with why: the operator did put a key there, just not one that works."""
    reasons = []
    for path in sorted(key_dir.glob("*.pem")):
        try:
            _load_key(path)
        except UnusableKey as exc:
            reasons.append(f"{path.name}: {exc}")
    return f" (unusable: {'; '.join(reasons)})" if reasons else ""


class SigningKeys:
    """The key ring: the current signer plus recently retired keys still published in the JWKS."""

    def __init__(self, config: SigningConfig, *, retain_s: float = 3660.0, generate: bool = True,
                 required: bool = True, clock: Callable[[], float] = time.time) -> None:
        """`generate`: a missing key may be generated; else `required` makes a missing key a ConfigError."""
        self.config = config
        self.retain_s = retain_s
        self.generate = generate
        self.required = required
        self._clock = clock
        self._keys: list[SigningKey] = []  # oldest first; replaced, never mutated (read from other threads)

    @property
    def key_dir(self) -> Path:
        return self.config.key_dir

    def load(self) -> None:
        """Read every key in key_dir; generate and persist one if none signs with the configured algorithm.

        A key_dir that cannot take the key refuses the start only when an upstream needs signed tokens (`required`):
        otherwise the key would serve nothing, and the JWKS stays empty (a warning says why)."""
        generated: SigningKey | None = None
        problem = unusable_key_dir(self.key_dir) if self.generate else None  # what config check reports too
        try:
            if problem is None and self.generate:
                self.key_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._keys = read_keys(self.key_dir)
            if problem is None and self._signer() is None and self.generate:
                generated = self._generate()
        except OSError as exc:  # only a write shows these (read-only or missing mount): serve's own check
            problem = f"{_CANNOT_KEEP.format(self.key_dir)} ({exc.strerror or exc}: {exc.filename})"
        if problem is not None:
            if self.required:
                raise ConfigError([problem], "signing")
            log.warning("%s; no upstream needs gateway-signed tokens, so the JWKS stays empty", problem)
        if self._signer() is None:
            if generated is not None:
                self._keys = [*self._keys, generated]
                log.info("generated %s signing key %s in %s", self.config.algorithm, self._keys[-1].kid,
                         self.key_dir)
            elif self.required:
                raise ConfigError([f"signing.key_dir: {self.key_dir}: no {self.config.algorithm} signing key "
                                   "(a PKCS#8 PEM file) and key generation is off (see signing.generate)"],
                                  "signing")
        self.prune()

    def reload(self) -> bool:
        """Re-read key_dir (SIGHUP): a key dropped there is published and, being the newest, signs; keys whose
        file was removed are withdrawn. Without a key of the configured algorithm there, the ring is kept.
        Returns whether the published set changed."""
        found = read_keys(self.key_dir)
        if not any(k.algorithm == self.config.algorithm for k in found):
            log.warning("signing keys: %s holds no %s key; keeping the loaded keys", self.key_dir,
                        self.config.algorithm)
            return False
        before = [k.kid for k in self._keys]
        signer = self._signer()
        self._keys = found
        self.prune()
        added = [k for k in found if k.kid not in before]
        for key in added:
            if key.algorithm != self.config.algorithm:  # `touch` would not make it sign: say what would
                log.warning("signing keys reloaded: the new key %s in %s is an %s key and signing.algorithm is %s: "
                            "it is published but does not sign", key.path.name, self.key_dir, key.algorithm,
                            self.config.algorithm)
        if signer is not None and self.current.kid != signer.kid:
            log.info("signing keys reloaded: %s now signs", self.current.kid)
        elif any(k.algorithm == self.config.algorithm for k in added):
            log.warning("signing keys reloaded: a new key in %s is older than the signer %s and does not sign "
                        "(give it a newer modification time)", self.key_dir, self.current.kid)
        return before != [k.kid for k in self._keys]

    def _signer(self) -> SigningKey | None:
        return next((k for k in reversed(self._keys) if k.algorithm == self.config.algorithm), None)

    def _generate(self) -> SigningKey:
        key = generate_private_key(self.config.algorithm)
        kid = thumbprint(key)
        # Strictly newer than every existing key, even within one millisecond.
        created_ms = max([int(self._clock() * 1000)] + [int(k.created * 1000) + 1 for k in self._keys])
        self.key_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self.key_dir / f"k{created_ms:013d}-{kid}.pem"
        _write_private(path, key)
        return SigningKey(kid, self.config.algorithm, key, created_ms / 1000, path)

    def rotate(self) -> SigningKey:
        """Generate a new key that signs from now on; older keys stay published for `retain_s`."""
        if not self._keys:
            self.load()
        key = self._generate()
        self._keys = [*self._keys, key]
        log.info("rotated signing key: %s now signs", key.kid)
        self.prune()
        return key

    def rotation_due(self) -> float | None:
        """When `signing.rotate_every_s` makes the signer due for replacement (None: never)."""
        signer = self._signer()
        if self.config.rotate_every_s is None or signer is None:
            return None
        return signer.created + self.config.rotate_every_s

    def next_due(self) -> float | None:
        """The next time `maintain` has work: a rotation, or a retired key leaving the JWKS."""
        times = [expiry for _, expiry in self._retirements()]
        rotation = self.rotation_due()
        return min([*times, *([rotation] if rotation is not None else [])], default=None)

    def maintain(self) -> list[str]:
        """Rotate if due, then prune. Returns the kids removed."""
        due = self.rotation_due()
        if due is not None and self._clock() >= due:
            self.rotate()
        return self.prune()

    def _retirements(self) -> list[tuple[SigningKey, float]]:
        """Every key that no longer signs, with the time it leaves the JWKS (its successor's age + retain_s)."""
        signer = self._signer()
        return [(key, successor.created + self.retain_s)
                for key, successor in zip(self._keys, self._keys[1:], strict=False) if key is not signer]

    def prune(self) -> list[str]:
        """Forget keys retired longer than `retain_s` ago, deleting the files of generated ones (an operator's
        file, perhaps a read-only mounted secret, is left alone). Returns the removed kids."""
        now = self._clock()
        expired = [key for key, expiry in self._retirements() if now >= expiry]
        for key in expired:
            if not _GENERATED.match(key.path.name):
                continue
            try:
                key.path.unlink()
            except OSError as exc:
                log.warning("could not delete retired key %s: %s", key.path.name, type(exc).__name__)
        gone = {id(k) for k in expired}
        self._keys = [k for k in self._keys if id(k) not in gone]
        return [k.kid for k in expired]

    @property
    def current(self) -> SigningKey:
        """The newest key of the configured algorithm: the one that signs."""
        signer = self._signer()
        if signer is None:
            raise RuntimeError(f"no {self.config.algorithm} signing key loaded from {self.key_dir}")
        return signer

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
