"""HTTP routes for upstreams: the JWKS, authorization-server metadata (RFC 8414) and introspection (RFC 7662).

Introspection answers `{"active": false}` for anything not signed by a key we publish, not issued
by us, expired, or revoked (its task ended); otherwise `active: true` with the token's claims. The
answer reveals nothing the token's holder cannot already read from the token itself, so the
endpoint needs no client authentication. If the revocation store cannot be asked, the answer is
inactive: an upstream must not accept a credential whose revocation we cannot rule out.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

import jwt
from aiohttp import web

from gateway.credentials.keys import SigningKeys
from gateway.credentials.revocation import RevocationStore
from gateway.errors import GatewayError
from gateway.http.guards import timed_read
from gateway.identity.metadata import split_base

log = logging.getLogger("customs.credentials.web")

JWKS_PATH = "/.well-known/jwks.json"
METADATA_PATH = "/.well-known/oauth-authorization-server"
INTROSPECT_PATH = "/oauth/introspect"
INACTIVE: dict[str, Any] = {"active": False}


class Introspector:
    """Verifies a token against our published keys and the revocation store."""

    def __init__(self, keys: SigningKeys, revocations: RevocationStore, issuer: str, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.keys = keys
        self.revocations = revocations
        self.issuer = issuer
        self._clock = clock

    def verify(self, token: str) -> dict[str, Any] | None:
        """The claims of a token we issued and that has not expired (signature checked), else None."""
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError:
            return None
        if not isinstance(kid, str):
            return None
        key, algorithm = self.keys.public_key(kid), self.keys.algorithm_of(kid)
        if key is None or algorithm is None:
            return None
        try:
            # The algorithm comes from our key, never from the token header.
            claims: dict[str, Any] = jwt.decode(
                token, key, algorithms=[algorithm], issuer=self.issuer,
                options={"verify_aud": False, "require": ["exp", "iat", "jti", "iss"], "verify_iat": False})
        except jwt.PyJWTError:
            return None
        if float(claims["exp"]) <= self._clock():  # our clock (tests and replicas agree on it)
            return None
        return claims

    async def introspect(self, token: str) -> dict[str, Any]:
        claims = self.verify(token)
        if claims is None:
            return dict(INACTIVE)
        try:
            active = await self.revocations.is_active(str(claims.get("task")), str(claims["jti"]))
        except Exception as exc:
            log.warning("introspection: revocation store unavailable (%s); answering inactive", type(exc).__name__)
            return dict(INACTIVE)
        if not active:
            return dict(INACTIVE)
        return {"active": True, "token_type": "Bearer", "client_id": claims.get("sub"), **claims}


def credential_routes(keys: SigningKeys, introspector: Introspector, issuer: str) -> list[web.RouteDef]:
    """GET /.well-known/jwks.json, GET /.well-known/oauth-authorization-server[/<issuer path>],
    POST /oauth/introspect."""

    async def jwks(request: web.Request) -> web.Response:
        # Short cache: verifiers pick up a rotated key quickly (and refetch on an unknown kid anyway).
        return web.json_response(keys.jwks(), headers={"Cache-Control": "public, max-age=60"})

    # RFC 8414 §3.1: an issuer with a path (a gateway under a proxy's prefix) has its metadata at
    # /.well-known/oauth-authorization-server/<path>, outside that prefix; a proxy may pass it on as it is.
    issuer_path = unquote(split_base(issuer)[1])

    async def metadata(request: web.Request) -> web.Response:
        tail = request.match_info.get("tail")
        if tail is not None and (not issuer_path or "/" + tail != issuer_path):
            raise web.HTTPNotFound()
        return web.json_response({
            "issuer": issuer,
            "jwks_uri": issuer + JWKS_PATH,
            "introspection_endpoint": issuer + INTROSPECT_PATH,
            "introspection_endpoint_auth_methods_supported": ["none"],
            "response_types_supported": [],
            "grant_types_supported": [],
        })

    async def introspect(request: web.Request) -> web.Response:
        if request.content_type != "application/x-www-form-urlencoded":
            return web.json_response({"error": "invalid_request",
                                      "error_description": "form-encoded body with token= required"}, status=400)
        try:
            form = await timed_read(request, request.post)
        except GatewayError as exc:  # a trickled body (body_timeout): OAuth's error shape, status 408
            return web.json_response({"error": "invalid_request", "error_description": exc.message},
                                     status=exc.http_status)
        except (UnicodeDecodeError, LookupError):  # bytes no text in the body's charset, or an unknown charset
            return web.json_response({"error": "invalid_request",
                                      "error_description": "the form body is not text in its charset"}, status=400)
        tokens = form.getall("token", [])
        if len(tokens) != 1 or not isinstance(tokens[0], str) or not tokens[0]:
            # RFC 6749 §3.1: a parameter given twice is an invalid request, not "the first one wins".
            return web.json_response({"error": "invalid_request",
                                      "error_description": "exactly one token is required"}, status=400)
        token = tokens[0]
        answer = await introspector.introspect(token)
        return web.json_response(answer, headers={"Cache-Control": "no-store"})

    return [web.get(JWKS_PATH, jwks), web.get(METADATA_PATH, metadata), web.get(METADATA_PATH + "/{tail:.+}", metadata),
            web.post(INTROSPECT_PATH, introspect)]
