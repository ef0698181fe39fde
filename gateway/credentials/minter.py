"""Mint short-lived JWTs for upstreams: audience-bound, scoped to the tool, tied to the task, cached per task.

Claims: `iss` (the gateway), `aud` (the upstream), `sub` (the agent), `act` (the delegation chain,
nested RFC 8693 form), `scope` (the tool names, space separated, and with `narrow_to_args` one
`name:value` token per selected argument), `task`, `jti`, `iat`, `exp` (no later than the TTL and
never after the task's known end), and with `narrow_to_args` an `args` claim holding the selected
argument values as JSON (not in session-level tokens, which name no item). Every jti is recorded under
its task before the token is handed out, so ending the task revokes it.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import jwt

from gateway.config.model import UpstreamConfig
from gateway.context import Actor, Principal, canonical_json
from gateway.credentials.keys import SigningKeys
from gateway.credentials.revocation import RevocationStore, TaskEnded
from gateway.credentials.task_cache import TaskCache
from gateway.errors import GatewayError

log = logging.getLogger(__name__)
# The longest token sent: what the gateway takes from agents itself (identity: 16 KiB), and Node's default for all of
# a request's headers (nginx takes 8 KiB a line). Far past it, uvicorn answered a bare 400 the agent read as
# upstream_error.
MAX_TOKEN_CHARS = 16384


def audience_of(upstream: UpstreamConfig) -> str:
    """The upstream's audience: configured, else its URL without user info, else a URN naming it (stdio upstreams).

    User info (`http://name:password@host/mcp`, sent as HTTP Basic) names no resource, and in `aud` its password
    went into every token, the introspection answer and the records naming the audience."""
    if upstream.credentials.audience:
        return upstream.credentials.audience
    if upstream.url:
        parts = urlsplit(upstream.url)
        if "@" not in parts.netloc:
            return upstream.url  # as written, byte for byte
        return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    return f"urn:customs:upstream:{upstream.name}"


def act_claim(chain: Sequence[Actor]) -> dict[str, Any] | None:
    """The chain (immediate actor first) as nested RFC 8693 `act` objects."""
    claim: dict[str, Any] | None = None
    for actor in reversed(chain):
        claim = {"sub": actor.id, **({"act": claim} if claim else {})}
    return claim


def scope_token(name: str, value: Any) -> str:
    """One narrowed argument as an OAuth scope token: `name:value` for a string, `name=<JSON>` for any other
    value (number, boolean, null for an argument the call did not pass, object, array). Name and value are
    percent-encoded (RFC 3986, only unreserved characters kept), so a token never holds a space, `:` or `=`
    of its own and the string "5" (`n:5`) never reads as the number 5 (`n=5`)."""
    if isinstance(value, str):
        return f"{quote(name, safe='')}:{quote(value, safe='')}"
    return f"{quote(name, safe='')}={quote(canonical_json(value), safe='')}"


def scope_of(tool_names: Sequence[str], narrowed: Mapping[str, Any] | None) -> str:
    """The `scope` claim: the item names, then (for a tool call) each narrowed argument's scope token.

    Names are percent-encoded like the values: MCP tool names are unreserved characters and stay as they
    are, but a resource URI (`inventory://skus`) would otherwise read as the narrowed argument `inventory`."""
    tokens = [quote(name, safe="") for name in tool_names]
    if narrowed is not None and tool_names:  # a session-level token names no tool and no argument
        tokens += [scope_token(name, value) for name, value in narrowed.items()]
    return " ".join(tokens)


def token_expiry(now: float, ttl_s: float, task_end: float | None, agent_expires_at: float | None = None) -> float:
    """When a token minted now expires: `ttl_s` from now, never after the task's known end.

    Refused only when the task itself ends within a second; a TTL that short (`ttl_s: 1`) is the
    operator's choice and still gets its token. When the end is the agent's own token expiry (a token
    past its `exp` is still accepted within `identity.clock_skew_s`), the refusal says so: the task goes
    on, and the same call with a refreshed token gets its credential.
    """
    if task_end is not None and task_end <= now + 1:
        if agent_expires_at is not None and agent_expires_at <= now + 1:
            raise GatewayError("credential_unavailable", "The agent's token has expired; a refreshed token fixes it",
                               data={"agent_token_expired": True})
        raise GatewayError("credential_unavailable", "The task has ended", data={"task_ended": True})
    return now + ttl_s if task_end is None else min(now + ttl_s, task_end)


def refresh_margin(ttl_s: float) -> float:
    """How long before expiry a cached token stops being reused: a fifth of its life, 1 to 10 s."""
    return max(1.0, min(10.0, ttl_s / 5))


@dataclass(frozen=True)
class _Cached:
    token: str
    claims: dict[str, Any]
    reuse_until: float
    kid: str


class Minter:
    """Signs credentials with the current key and keeps a per-task cache of unexpired ones."""

    def __init__(self, keys: SigningKeys, issuer: str, revocations: RevocationStore, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.keys = keys
        self.issuer = issuer
        self.revocations = revocations
        self._clock = clock
        self._cache: TaskCache[_Cached] = TaskCache(lambda cached, now: cached.reuse_until <= now)

    async def mint(self, principal: Principal, upstream: UpstreamConfig, tool_names: Sequence[str],
                   args: Mapping[str, Any] | None, task_id: str, task_end: float | None = None, *,
                   cache: bool = True) -> tuple[str, dict[str, Any]]:
        """A token for `principal` to call `tool_names` on `upstream` within `task_id`: (token, claims).

        Reuses a cached token for the same principal, task, upstream, scope and narrowed arguments
        until shortly before it expires, and only while the key that signed it still signs.
        Raises GatewayError("credential_unavailable") once the task ended.
        """
        now = self._clock()
        narrowed = self._narrowed(upstream, args)
        key = (task_id, principal.key, canonical_json(principal.chain_ids), upstream.name,
               " ".join(tool_names), canonical_json(narrowed))
        hit = self._cache.get(key) if cache else None
        # A cached token is reused only if it would also have been minted now: unexpired, within the task and
        # signed by the current key (a key withdrawn on SIGHUP may be compromised; a rotated one is on its way out).
        if (hit is not None and hit.reuse_until > now and (task_end is None or hit.claims["exp"] <= task_end)
                and hit.kid == self.keys.current.kid):
            return hit.token, hit.claims
        exp = token_expiry(now, upstream.credentials.ttl_s, task_end, principal.expires_at)
        claims: dict[str, Any] = {
            "iss": self.issuer, "aud": audience_of(upstream), "sub": principal.id,
            "scope": scope_of(tool_names, narrowed), "task": task_id, "jti": secrets.token_urlsafe(16),
            "iat": int(now), "exp": int(exp),
        }
        act = act_claim(principal.chain)
        if act is not None:
            claims["act"] = act
        if narrowed is not None and tool_names:  # a session-level token names no item, so no argument either
            claims["args"] = narrowed
        token, kid = await self._sign_recorded(claims, task_id, upstream)
        if cache:
            # From the `exp` the token carries (whole seconds, up to 1 s before `exp`), or a token reused near the
            # end of its window would have far less than the margin left, and expire on its way to the upstream.
            carried = claims["exp"]
            self._cache.put(key, _Cached(token, claims, carried - refresh_margin(carried - now), kid), now)
        return token, claims

    async def mint_actor(self, audience: str, task_id: str, ttl_s: float, task_end: float | None = None, *,
                         agent_expires_at: float | None = None) -> tuple[str, dict[str, Any]]:
        """The gateway's own token (sub = iss), used as the actor token in token exchange."""
        now = self._clock()
        exp = token_expiry(now, ttl_s, task_end, agent_expires_at)
        claims = {"iss": self.issuer, "aud": audience, "sub": self.issuer, "task": task_id,
                  "jti": secrets.token_urlsafe(16), "iat": int(now), "exp": int(exp)}
        return (await self._sign_recorded(claims, task_id))[0], claims

    def sign(self, claims: Mapping[str, Any]) -> str:
        return self._sign(claims)[0]

    def _sign(self, claims: Mapping[str, Any]) -> tuple[str, str]:
        """(token, the signer's kid): read once, so a concurrent rotation cannot mislabel the cache entry."""
        key = self.keys.current
        return jwt.encode(dict(claims), key.private_key, algorithm=key.algorithm,
                          headers={"kid": key.kid, "typ": "JWT"}), key.kid

    async def _sign_recorded(self, claims: dict[str, Any], task_id: str,
                             upstream: UpstreamConfig | None = None) -> tuple[str, str]:
        """(token, kid), once the jti is recorded under its task."""
        token, kid = self._sign(claims)
        if len(token) > MAX_TOKEN_CHARS:  # only narrowed values make one so long: the claims are otherwise bounded
            names = ", ".join(upstream.credentials.narrow_to_args) if upstream is not None else ""
            log.warning("credential for upstream %s not sent: narrowed to this call's arguments (%s) it is %d "
                        "characters, past the %d a request header carries", upstream.name if upstream else "?",
                        names, len(token), MAX_TOKEN_CHARS)
            raise GatewayError("credential_unavailable",
                               f"Could not obtain a credential for the upstream: narrowed to this call's arguments "
                               f"(narrow_to_args: {names}) it would be {len(token)} characters, past the "
                               f"{MAX_TOKEN_CHARS} a request header carries")
        try:
            await self.revocations.record(task_id, claims["jti"], float(claims["exp"]))
        except TaskEnded:
            raise GatewayError("credential_unavailable", "The task has ended", data={"task_ended": True}) from None
        except Exception as exc:  # the store is down: no token we could not revoke later
            raise GatewayError("credential_unavailable", "Revocation store unavailable") from exc
        return token, kid

    @staticmethod
    def _narrowed(upstream: UpstreamConfig, args: Mapping[str, Any] | None) -> dict[str, Any] | None:
        names = upstream.credentials.narrow_to_args
        if not names:
            return None
        args = args or {}
        return {name: args.get(name) for name in names}

    def forget_task(self, task_id: str) -> None:
        """Drop cached tokens of an ended task."""
        self._cache.forget_task(task_id)
