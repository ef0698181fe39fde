"""A real test token issuer: key pairs, a JWKS file and a live JWKS server, and minted JWTs.

Usage (any test area)::

    from tests.support.tokens import TestIssuer, act_chain

    issuer = TestIssuer(tmp_path)                      # RS256 + ES256 + EdDSA keys, JWKS at issuer.jwks_path
    config = {"identity": {"mode": "jwt", "issuers": [issuer.config(audience=f"{gw_url}/mcp")]}, ...}
    token = issuer.mint("spiffe://acme.test/agent/shopper", aud=f"{gw_url}/mcp", tenant="acme")
    headers = {"Authorization": f"Bearer {token}"}

    # delegation: the shopper acts through the planner, which acts through the orchestrator
    token = issuer.mint("spiffe://acme.test/agent/shopper", aud=aud,
                        act=act_chain("spiffe://acme.test/agent/planner",
                                      ("spiffe://acme.test/agent/orch", {"tenant": "acme"})))

    # approvers are people: sub + groups
    token = issuer.mint("alice", aud=aud, groups=["finance"])

    # a JWKS URL instead of a file (a real aiohttp server on 127.0.0.1:0, fetches counted):
    url = await issuer.serve()          # -> http://127.0.0.1:<port>/jwks.json ; issuer.fetches counts GETs
    ...; await issuer.close()           # see the `served` fixture in tests/identity/test_jwks_url.py

`issuer.config(...)` returns the `identity.issuers[]` entry as a plain dict (jwks_file by default;
`source="url"` after `serve()`, or `source="pem"` for a single public key PEM).
`forge(header, payload, key)` builds tokens PyJWT refuses to make (HS256 with a PEM as secret, alg none).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import socket
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

DEFAULT_ISSUER = "https://idp.test"
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


@dataclass
class SigningKey:
    """One key pair of the issuer: its algorithm, kid, private key and public JWK."""

    alg: str
    kid: str
    private: PrivateKey

    @property
    def public_jwk(self) -> dict[str, Any]:
        public = self.private.public_key()
        if isinstance(public, rsa.RSAPublicKey):
            data = RSAAlgorithm.to_jwk(public, as_dict=True)
        elif isinstance(public, ec.EllipticCurvePublicKey):
            data = ECAlgorithm.to_jwk(public, as_dict=True)
        else:
            data = OKPAlgorithm.to_jwk(public, as_dict=True)
        assert isinstance(data, dict)
        return {**data, "kid": self.kid, "use": "sig", "alg": self.alg}

    @property
    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(serialization.Encoding.PEM,
                                                      serialization.PublicFormat.SubjectPublicKeyInfo)


def generate_key(alg: str, kid: str) -> SigningKey:
    """A fresh key pair for `alg` (RS*/PS* → RSA 2048, ES256 → P-256, ES384 → P-384, EdDSA → Ed25519)."""
    private: PrivateKey
    if alg.startswith(("RS", "PS")):
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    elif alg == "ES256":
        private = ec.generate_private_key(ec.SECP256R1())
    elif alg == "ES384":
        private = ec.generate_private_key(ec.SECP384R1())
    elif alg == "EdDSA":
        private = ed25519.Ed25519PrivateKey.generate()
    else:
        raise ValueError(f"no key type for {alg}")
    return SigningKey(alg, kid, private)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: Mapping[str, Any], payload: Mapping[str, Any], hmac_key: bytes | None = None) -> str:
    """A compact JWS built by hand: HS256 over `hmac_key`, or an empty signature when it is None."""
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(payload).encode())}"
    signature = b"" if hmac_key is None else hmac.new(hmac_key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(signature)}"


def act_chain(*actors: str | tuple[str, Mapping[str, Any]]) -> dict[str, Any] | None:
    """A nested RFC 8693 `act` claim, outermost (immediate) actor first.

    Each actor is an id, or (id, claims) whose claims sit inside that actor's own `act` object.
    `act_chain("a", "b")` == {"sub": "a", "act": {"sub": "b"}}.
    """
    result: dict[str, Any] | None = None
    for actor in reversed(actors):
        sub, claims = (actor, {}) if isinstance(actor, str) else actor
        node: dict[str, Any] = {"sub": sub, **claims}
        if result is not None:
            node["act"] = result
        result = node
    return result


class TestIssuer:
    """An OAuth issuer for tests: keys (one per algorithm), a JWKS file, an optional JWKS server, minting."""

    __test__ = False  # not a pytest test class

    def __init__(self, directory: Path, *, issuer: str = DEFAULT_ISSUER,
                 algorithms: Sequence[str] = ("RS256", "ES256", "EdDSA"), name: str = "idp") -> None:
        self.issuer = issuer
        self.directory = directory
        self.name = name
        self.keys: dict[str, SigningKey] = {alg: generate_key(alg, f"{name}-{alg.lower()}-1") for alg in algorithms}
        self.retired: list[SigningKey] = []
        self.jwks_path = directory / f"{name}-jwks.json"
        self.fetches = 0
        self.jwks_mode = "normal"  # normal | oversize | hang | error | garbage | nested
        self.close_connections = False  # answer with Connection: close, so every fetch needs a new connection
        self._runner: web.AppRunner | None = None
        self._hang: asyncio.Event | None = None
        self.url: str | None = None
        self.write_jwks()

    # -- keys --------------------------------------------------------------------------------------

    def jwks(self) -> dict[str, Any]:
        return {"keys": [key.public_jwk for key in self.keys.values()]}

    def write_jwks(self) -> Path:
        self.jwks_path.write_text(json.dumps(self.jwks()))
        return self.jwks_path

    def pem_path(self, alg: str = "RS256") -> Path:
        """Write the public key for `alg` as a PEM file (for `pem_file` issuers)."""
        path = self.directory / f"{self.name}-{alg.lower()}.pem"
        path.write_bytes(self.keys[alg].public_pem)
        return path

    def rotate(self, alg: str = "RS256") -> SigningKey:
        """Replace the key for `alg` with a new one (new kid); the JWKS file and server follow."""
        old = self.keys[alg]
        number = int(old.kid.rsplit("-", 1)[1]) + 1
        self.retired.append(old)
        self.keys[alg] = generate_key(alg, f"{self.name}-{alg.lower()}-{number}")
        self.write_jwks()
        return self.keys[alg]

    def config(self, audience: str | None = None, *, source: str = "file", algorithms: Iterable[str] | None = None,
               claims: Mapping[str, str] | None = None, require_typ: str | None = None,
               jwks_refresh_s: float | None = None) -> dict[str, Any]:
        """This issuer as an `identity.issuers[]` config entry (plain dict, YAML-ready)."""
        entry: dict[str, Any] = {"issuer": self.issuer,
                                 "algorithms": list(algorithms if algorithms is not None else self.keys)}
        if source == "file":
            entry["jwks_file"] = str(self.jwks_path)
        elif source == "url":
            if self.url is None:
                raise RuntimeError("call `await issuer.serve()` before config(source='url')")
            entry["jwks_url"] = self.url
        elif source == "pem":
            entry["pem_file"] = str(self.pem_path(entry["algorithms"][0]))
        else:
            raise ValueError(source)
        if audience is not None:
            entry["audience"] = audience
        if claims is not None:
            entry["claims"] = dict(claims)
        if require_typ is not None:
            entry["require_typ"] = require_typ
        if jwks_refresh_s is not None:
            entry["jwks_refresh_s"] = jwks_refresh_s
        return entry

    # -- minting -----------------------------------------------------------------------------------

    def mint(self, sub: str | None, *, aud: str | list[str] | None, alg: str = "RS256", tenant: str | None = None,
             groups: Sequence[str] | None = None, act: Mapping[str, Any] | None = None, ttl: float = 300,
             exp: float | None = None, iat: float | None = None, nbf: float | None = None, iss: str | None = None,
             kid: str | None = None, typ: str | None = "at+jwt", headers: Mapping[str, Any] | None = None,
             claims: Mapping[str, Any] | None = None, omit: Iterable[str] = (), key: SigningKey | None = None) -> str:
        """A signed access token. Times are absolute epoch seconds; `omit` drops claims (e.g. ("exp",))."""
        now = time.time()
        payload: dict[str, Any] = {"iss": iss or self.issuer, "sub": sub, "aud": aud,
                                   "iat": int(now if iat is None else iat),
                                   "exp": int(now + ttl if exp is None else exp),
                                   "jti": secrets.token_urlsafe(12)}
        if nbf is not None:
            payload["nbf"] = int(nbf)
        if tenant is not None:
            payload["tenant"] = tenant
        if groups is not None:
            payload["groups"] = list(groups)
        if act is not None:
            payload["act"] = dict(act)
        payload.update(claims or {})
        for name in omit:
            payload.pop(name, None)
        payload = {k: v for k, v in payload.items() if v is not None}
        signer = key or self.keys[alg]
        header: dict[str, Any] = {"kid": kid if kid is not None else signer.kid}
        if typ is not None:
            header["typ"] = typ
        header.update(headers or {})
        return jwt.encode(payload, signer.private, algorithm=alg, headers=header)

    # -- JWKS over HTTP ----------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.fetches += 1
        if self.jwks_mode == "oversize":
            return web.Response(body=b'{"keys": [' + b" " * (2 * 1024 * 1024) + b"]}",
                                content_type="application/json")
        if self.jwks_mode == "error":
            return web.Response(status=500, text="boom")
        if self.jwks_mode == "garbage":
            return web.Response(body=b"not json", content_type="application/json")
        if self.jwks_mode == "nested":  # deeper than the JSON parser's recursion limit
            return web.Response(body=b"[" * 100_000, content_type="application/json")
        if self.jwks_mode == "hang":
            assert self._hang is not None
            await self._hang.wait()  # released at close(); the client's timeout fires first
        response = web.json_response(self.jwks())
        if self.close_connections:
            response.force_close()
        return response

    async def serve(self) -> str:
        """Serve the JWKS at http://127.0.0.1:<port>/jwks.json (a real aiohttp server); returns the URL."""
        app = web.Application()
        self._hang = asyncio.Event()
        app.router.add_get("/jwks.json", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))  # bound first, so the port is known and never races
        port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()
        self.url = f"http://127.0.0.1:{port}/jwks.json"
        return self.url

    async def close(self) -> None:
        if self._runner is not None:
            if self._hang is not None:
                self._hang.set()
            await self._runner.cleanup()
            self._runner = None

