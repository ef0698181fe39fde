"""Identify the caller of one HTTP request: bearer JWT and/or mTLS SPIFFE SVID → Principal, or 401.

Rules (docs/identity.md):
- `Authorization: Bearer <jwt>` present: the token must verify (gateway.identity.jwt). Principal id and
  subject = `sub` (validated when it is a `spiffe://` id), issuer = `iss`, attributes from claims
  (else from the `agents:` registry), chain from nested `act`, expires_at = `exp`, token kept raw.
- An mTLS client certificate that is an X.509-SVID (one URI SAN, a SPIFFE ID) and a token whose `sub`
  is a SPIFFE ID must name the same workload, else 401. A non-SPIFFE `sub` (a person) may ride on
  any client certificate.
- An issuer with `spiffe_trust_domains` may assert SPIFFE IDs (as `sub` or in `act`) of those trust domains
  only; any other is refused (401) before a policy sees it. Non-SPIFFE subjects are not affected.
- No token, but a verified client SVID (the TLS listener has `client_ca_file`, so the peer certificate
  is only reported when it chained to that CA): principal = the SAN, issuer "mtls", attributes from
  the registry, expires_at = the certificate's notAfter.
- Otherwise 401 with `WWW-Authenticate: Bearer resource_metadata="…"` (+ `error="invalid_token"` when
  a bearer token was presented, `error="invalid_request"` for two Authorization headers; none for another
  scheme such as Basic, RFC 6750 §3.1).
- `resource_path` names the endpoint asked (`/mcp`, `/mcp/{upstream}`). `/mcp/{upstream}` publishes its
  own RFC 9728 metadata (resource `<public_url>/mcp/{upstream}`), so there a token for that resource is
  accepted too, and the 401 points to that metadata.
"""

from __future__ import annotations

import logging
import re
import ssl
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp

from gateway.config.model import MAX_CHAIN_DEPTH, AgentRecord, IdentityConfig, IssuerConfig
from gateway.context import Principal
from gateway.errors import GatewayError
from gateway.identity.chain import ChainError, claim_mapping
from gateway.identity.claims import mtls_principal, token_principal
from gateway.identity.jwks import FileKeySource, KeySource, UrlKeySource
from gateway.identity.jwt import IssuerVerifier, TokenError, TokenVerifier
from gateway.identity.metadata import www_authenticate
from gateway.identity.spiffe import InvalidSpiffeId, svid_id, uri_sans_from_peercert

log = logging.getLogger("customs.identity")

# RFC 9449 §7.1's scheme: the gateway checks no DPoP proof, so it is told apart from any other scheme it does not take.
DPOP_SCHEME = ("DPoP-bound tokens (Authorization: DPoP) are not supported: this gateway checks no proof of "
               "possession; use Authorization: Bearer with a token that has no cnf claim")
_BEARER_RE = re.compile(r"Bearer +([A-Za-z0-9\-._~+/]+=*) *", re.IGNORECASE)


def _header(headers: Mapping[str, str], name: str) -> list[str]:
    """All values of a header, case-insensitively (aiohttp's CIMultiDict or a plain dict)."""
    getall = getattr(headers, "getall", None)
    if getall is not None:
        return list(getall(name, []))
    return [value for key, value in headers.items() if key.lower() == name.lower()]


def is_dpop_scheme(authorization: str) -> bool:
    """Whether an Authorization value (or a pasted credential) is `DPoP <token>` (scheme case-insensitive)."""
    return authorization[:4].lower() == "dpop" and authorization[4:5].isspace()


def default_audience(resource_url: str) -> str:
    """The audience tokens must carry when an issuer sets none: the gateway's MCP endpoint (RFC 8707)."""
    return resource_url.rstrip("/") + "/mcp"


def key_source(issuer: IssuerConfig, http: aiohttp.ClientSession | None,
               monotonic: Callable[[], float]) -> KeySource:
    algorithms = issuer.algorithms
    if issuer.jwks_url is not None:
        return UrlKeySource(issuer.jwks_url, http, refresh_s=issuer.jwks_refresh_s, clock=monotonic,
                            algorithms=algorithms)
    if issuer.jwks_file is not None:
        return FileKeySource(issuer.jwks_file, pem=False, clock=monotonic, algorithms=algorithms)
    assert issuer.pem_file is not None  # the config model requires exactly one source
    return FileKeySource(issuer.pem_file, pem=True, clock=monotonic, algorithms=algorithms)


CACHE_S = 30.0
CACHE_SIZE = 4096
MCP_PATH = "/mcp"
CacheKey = str | tuple[str, str]  # a token valid everywhere, or (resource path, token) valid there only


class JwtIdentifier:
    """Bearer JWTs from the configured issuers, plus mTLS SPIFFE SVIDs."""

    def __init__(self, config: IdentityConfig, agents: Mapping[str, AgentRecord], resource_url: str,
                 http: aiohttp.ClientSession | None, *, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic, accept_mtls: bool = True,
                 max_chain_depth: int = MAX_CHAIN_DEPTH) -> None:
        self._agents = agents
        # `policies.max_chain_depth`, never above the parser's own bound.
        self._max_chain_depth = min(max_chain_depth, MAX_CHAIN_DEPTH)
        self._resource_url = resource_url.rstrip("/")
        self._accept_mtls = accept_mtls
        issuers: dict[str, IssuerVerifier] = {}
        self._mappings: dict[str, dict[str, str]] = {}
        for issuer in config.issuers:
            if issuer.issuer in issuers:
                raise ValueError(f"identity.issuers: issuer {issuer.issuer!r} is configured twice")
            audience = issuer.audience or default_audience(self._resource_url)
            issuers[issuer.issuer] = IssuerVerifier(issuer, audience, key_source(issuer, http, monotonic),
                                                    skew_s=config.clock_skew_s, clock=clock)
            self._mappings[issuer.issuer] = claim_mapping(issuer.claims)
        self._sources = [verifier.keys for verifier in issuers.values()]
        self._verifier = TokenVerifier(issuers)
        self._clock = clock
        self._skew = config.clock_skew_s
        # token (or (path, token)) -> (principal, valid until): an agent sends the same token on every
        # call, and a signature check costs 70-150 µs. Entries live at most CACHE_S and never past exp + skew.
        self._cache: OrderedDict[CacheKey, tuple[Principal, float, tuple[int, ...]]] = OrderedDict()

    async def start(self) -> None:
        for source in self._sources:
            await source.start()

    async def close(self) -> None:
        for source in self._sources:
            await source.close()

    async def readiness(self) -> tuple[bool, Any]:
        """/readyz: every issuer whose keys come from a URL has some, and every issuer's keys fit one of its
        algorithms (else each of its tokens is refused). A key file is named only when it does not fit."""
        details = {source.url: source.readiness() for source in self._sources if isinstance(source, UrlKeySource)}
        for source in self._sources:
            if isinstance(source, FileKeySource) and not (checked := source.readiness())[0]:
                details[source.path] = checked
        ready = all(ok for ok, _ in details.values())
        return ready, {url: detail for url, (_, detail) in details.items()} or "ok"

    async def settle(self) -> None:
        """Wait for background JWKS refreshes in flight (tests; calls never wait for them)."""
        for source in self._sources:
            if isinstance(source, UrlKeySource):
                await source.settle()

    def _reject(self, message: str, path: str = MCP_PATH, *, error: str | None = "invalid_token") -> GatewayError:
        challenge = www_authenticate(self._resource_url, error, path)
        return GatewayError("unauthenticated", message, headers={"WWW-Authenticate": challenge})

    async def identify(self, headers: Mapping[str, str], peer_cert: dict[str, Any] | None,
                       resource_path: str = MCP_PATH) -> Principal:
        values = _header(headers, "Authorization")
        svid = self._svid(peer_cert, resource_path)
        if not values:
            if svid is not None:
                return self._mtls_principal(svid, peer_cert or {})
            raise self._reject("Bearer token required", resource_path, error=None)
        if len(values) > 1:  # RFC 6750 §3.1: a malformed request, not a bad token
            raise self._reject("More than one Authorization header", resource_path, error="invalid_request")
        match = _BEARER_RE.fullmatch(values[0])
        if match is None:
            # Another scheme (Basic, Digest, DPoP) or a bare "Bearer": no bearer credential was presented, so
            # RFC 6750 §3.1 wants the challenge without an error code.
            error = "invalid_token" if values[0][:7].lower() == "bearer " and values[0][7:].strip() else None
            if is_dpop_scheme(values[0]):
                log.info("rejected DPoP token: %s", DPOP_SCHEME)
                raise self._reject(DPOP_SCHEME, resource_path, error=None)
            raise self._reject("Authorization must be a Bearer token", resource_path, error=error)
        token = match.group(1)
        own = None if resource_path == MCP_PATH else self._resource_url + resource_path
        if svid is None:
            cached = self._cached(token) or (self._cached((resource_path, token)) if own else None)
            if cached is not None:
                return cached
        try:
            principal, everywhere = await self._token_principal(token, svid, own)
        except (TokenError, ChainError) as exc:
            message = exc.message if isinstance(exc, TokenError) else f"Invalid token: {exc}"
            log.info("rejected bearer token: %s", message)
            raise self._reject(message, resource_path) from None
        if svid is None:
            # A token accepted only for this endpoint's own resource must not open the others from the cache.
            self._remember(token if everywhere else (resource_path, token), principal)
        return principal

    def _generation(self) -> tuple[int, ...]:
        return tuple(source.generation for source in self._sources)

    def _cached(self, key: CacheKey) -> Principal | None:
        cached = self._cache.get(key)
        if cached is not None and cached[1] > self._clock() and cached[2] == self._generation():
            return cached[0]
        return None

    def _remember(self, key: CacheKey, principal: Principal) -> None:
        now = self._clock()
        until = min(now + CACHE_S, (principal.expires_at or now) + self._skew)
        self._cache[key] = (principal, until, self._generation())
        self._cache.move_to_end(key)
        while len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)

    def _svid(self, peer_cert: Mapping[str, Any] | None, path: str) -> str | None:
        if not peer_cert or not self._accept_mtls:
            return None
        try:
            svid = svid_id(uri_sans_from_peercert(peer_cert))
        except InvalidSpiffeId as exc:
            raise self._reject(f"Client certificate is not a valid SPIFFE SVID: {exc}", path,
                               error=None) from None
        # TLS checked the validity period at the handshake only; a kept-alive connection outlives the SVID.
        not_after = _not_after(peer_cert)
        if svid is not None and (not_after is None or self._clock() >= not_after):
            raise self._reject("Client certificate has expired", path, error=None)
        return svid

    async def _token_principal(self, token: str, svid: str | None, own: str | None) -> tuple[Principal, bool]:
        """The token's principal, and whether the token is good on every endpoint (not only `own`)."""
        verified = await self._verifier.verify(token, own)
        principal = token_principal(verified.claims, verified.issuer, self._agents,
                                    mapping=self._mappings[verified.issuer.issuer],
                                    max_chain_depth=self._max_chain_depth, svid=svid, token=token,
                                    expires_at=float(verified.claims["exp"]))
        return principal, verified.everywhere

    def _mtls_principal(self, svid: str, peer_cert: Mapping[str, Any]) -> Principal:
        return mtls_principal(svid, self._agents, _not_after(peer_cert))


def _not_after(peer_cert: Mapping[str, Any]) -> float | None:
    """The certificate's notAfter as epoch seconds (None when absent or unreadable)."""
    value = peer_cert.get("notAfter")
    try:
        return float(ssl.cert_time_to_seconds(value)) if isinstance(value, str) else None
    except ValueError:
        return None


class AnonymousIdentifier:
    """Local use only: every caller is the same configured principal (a warning is logged once)."""

    def __init__(self, config: IdentityConfig) -> None:
        log.warning("identity mode anonymous: every caller is the same principal %r; use only for local work",
                    config.anonymous_principal)
        self._principal = Principal(id=config.anonymous_principal, issuer="anonymous",
                                    subject=config.anonymous_principal,
                                    attributes=dict(config.anonymous_attributes), anonymous=True)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def identify(self, headers: Mapping[str, str], peer_cert: dict[str, Any] | None,
                       resource_path: str = MCP_PATH) -> Principal:
        return self._principal
