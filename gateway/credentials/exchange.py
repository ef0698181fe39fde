"""OAuth 2.0 Token Exchange (RFC 8693): trade the agent's token for one the upstream accepts, cached per task.

The request carries the agent's own token as `subject_token`, a gateway-minted JWT as
`actor_token` (so the authorization server sees who acts), and authenticates the gateway with
HTTP Basic client credentials. Neither tokens nor the client secret are ever logged. Every token
obtained is remembered with its task until the task ends here, then revoked at the upstream's
`revocation_endpoint` if it has one (gateway/credentials/as_revocation.py), in the background.
"""

from __future__ import annotations

import base64
import logging
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp

from gateway.config.model import UpstreamConfig
from gateway.context import Principal, canonical_json
from gateway.credentials.as_revocation import Outcome, Revocation, TokenRevoker
from gateway.credentials.minter import Minter, audience_of, refresh_margin
from gateway.credentials.task_cache import TaskCache
from gateway.errors import GatewayError
from gateway.transport.http_base import UPSTREAM_IDLE_S

log = logging.getLogger("customs.credentials.exchange")

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"


@dataclass(frozen=True)
class Exchanged:
    token: str
    expires_at: float
    reuse_until: float


def basic_auth(client_id: str, client_secret: str) -> str:
    """RFC 6749 §2.3.1: form-url-encode both parts before base64."""
    raw = f"{quote(client_id, safe='')}:{quote(client_secret, safe='')}".encode()
    return "Basic " + base64.b64encode(raw).decode()


class TokenExchanger:
    """Performs token exchanges at each upstream's configured token endpoint."""

    def __init__(self, minter: Minter, *, http: aiohttp.ClientSession | None = None,
                 clock: Callable[[], float] = time.time, timeout_s: float = 10.0,
                 on_revocation: Outcome | None = None) -> None:
        self._minter = minter
        self._http = http
        self._own_http = http is None
        self._clock = clock
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._cache: TaskCache[Exchanged] = TaskCache(lambda hit, now: hit.reuse_until <= now)
        # Every token obtained for a task, also those a refresh replaced in the cache (still valid for a while).
        self._issued: dict[str, list[Revocation]] = {}
        self._exchanging: dict[str, int] = {}  # task id -> exchanges awaiting the server
        self._ended_meanwhile: set[str] = set()  # tasks that ended while one of their exchanges was awaited
        self.revoker = TokenRevoker(lambda: self._http, _client_auth, timeout=self._timeout, clock=clock,
                                    on_outcome=on_revocation)

    async def start(self) -> None:
        if self._http is None:
            # Idle connections go after UPSTREAM_IDLE_S, as the upstreams' do: an authorization server served by
            # uvicorn or Node closes one after 5 s, and an exchange (a POST, never sent again) crossing that close
            # failed its call; aiohttp's default kept them 15 s.
            self._http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(keepalive_timeout=UPSTREAM_IDLE_S))

    async def close(self) -> None:
        await self.revoker.close()  # revocations of the tasks shutdown ended still use the HTTP session
        if self._own_http and self._http is not None:
            await self._http.close()
            self._http = None

    async def exchange(self, principal: Principal, upstream: UpstreamConfig, task_id: str,
                       task_end: float | None = None) -> tuple[str, float]:
        """(access token, expiry) for `principal` at `upstream`; reused within the task until near expiry."""
        now = self._clock()
        # The chain is part of the key: the token was issued for this subject token's `act` chain, and a
        # later token of the same agent in the same session may name other actors (as the minter's cache).
        key = (task_id, principal.key, canonical_json(principal.chain_ids), upstream.name)
        hit = self._cache.get(key)
        if hit is not None and hit.reuse_until > now:
            return hit.token, hit.expires_at
        if not principal.token:
            raise GatewayError("credential_unavailable", "No agent token to exchange")
        creds = upstream.credentials
        assert creds.token_endpoint is not None and creds.client_id is not None
        actor, _ = await self._minter.mint_actor(creds.token_endpoint, task_id, creds.ttl_s, task_end,
                                                 agent_expires_at=principal.expires_at)
        form = {"grant_type": GRANT_TYPE, "subject_token": principal.token, "subject_token_type": JWT_TYPE,
                "actor_token": actor, "actor_token_type": JWT_TYPE, "audience": audience_of(upstream),
                "requested_token_type": ACCESS_TOKEN_TYPE}
        if creds.scope:
            form["scope"] = creds.scope
        body, ended = await self._post_for_task(upstream, form, task_id)
        token = body.get("access_token")
        if not isinstance(token, str) or not token:
            log.warning("token exchange for upstream %s: response without access_token", upstream.name)
            raise GatewayError("credential_unavailable")
        if not _ACCESS_TOKEN.fullmatch(token):  # it goes into a header: aiohttp refused it there (internal_error)
            log.warning("token exchange for upstream %s: the access_token holds characters no header may",
                        upstream.name)
            raise GatewayError("credential_unavailable")
        if token == principal.token:  # a no-op exchange: the tool would get the agent's own token
            log.warning("token exchange for upstream %s: the authorization server answered with the agent's own "
                        "token (the subject token); it is never sent to an upstream", upstream.name)
            raise GatewayError("credential_unavailable")
        lifetime = _lifetime(body.get("expires_in"), creds.ttl_s)
        expires_at = now + lifetime
        if ended:  # neither handed out nor cached: the task's end already revoked the rest of its tokens
            self.revoker.submit([Revocation(upstream, token, expires_at)])
            raise GatewayError("credential_unavailable", "The task has ended", data={"task_ended": True})
        reuse_until = expires_at - refresh_margin(lifetime)
        if task_end is not None:
            reuse_until = min(reuse_until, task_end)
        self._cache.put(key, Exchanged(token, expires_at, reuse_until), now)
        if self.revoker.wanted(upstream):
            issued = [i for i in self._issued.get(task_id, []) if i.expires_at > now]
            self._issued[task_id] = [*issued, Revocation(upstream, token, expires_at)]
        return token, expires_at

    async def _post_for_task(self, upstream: UpstreamConfig, form: dict[str, str],
                             task_id: str) -> tuple[dict[str, Any], bool]:
        """The server's answer, and whether the task ended while it was awaited (forget_task ran meanwhile)."""
        self._exchanging[task_id] = self._exchanging.get(task_id, 0) + 1
        try:
            body = await self._post(upstream, form)
        finally:
            left = self._exchanging.pop(task_id) - 1
            ended = task_id in self._ended_meanwhile
            if left:
                self._exchanging[task_id] = left
            else:
                self._ended_meanwhile.discard(task_id)
        return body, ended

    async def _post(self, upstream: UpstreamConfig, form: dict[str, str]) -> dict[str, Any]:
        creds = upstream.credentials
        assert creds.token_endpoint is not None and creds.client_id is not None and self._http is not None
        headers = {"Authorization": _client_auth(upstream), "Accept": "application/json"}
        try:
            # Never through a redirect: a 307/308 would carry the agent's own token (the form) to its Location.
            async with self._http.post(creds.token_endpoint, data=form, headers=headers, timeout=self._timeout,
                                       allow_redirects=False) as response:
                if response.status != 200:
                    error = await _oauth_error(response)
                    # Only the status and the OAuth error code: the body may echo what we sent.
                    log.warning("token exchange for upstream %s failed: HTTP %s %s",
                                upstream.name, response.status, error)
                    raise GatewayError("credential_unavailable", data={"oauth_error": error} if error else None)
                body = await response.json(content_type=None)
        except GatewayError:
            raise
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            log.warning("token exchange for upstream %s failed: %s", upstream.name, type(exc).__name__)
            raise GatewayError("credential_unavailable") from exc
        if not isinstance(body, dict):
            raise GatewayError("credential_unavailable")
        return body

    def forget_task(self, task_id: str) -> None:
        """The task ended here (or, with a shared store, this replica let go of it): drop its tokens and revoke
        them at the server, as no one will use them again (no other replica holds this replica's tokens)."""
        self._cache.forget_task(task_id)
        if task_id in self._exchanging:
            self._ended_meanwhile.add(task_id)
        issued = self._issued.pop(task_id, None)
        if issued:
            self.revoker.submit(issued)


# RFC 6749 §A.12: access-token = 1*VSCHAR, printable ASCII.
_ACCESS_TOKEN = re.compile(r"[\x20-\x7e]+")


def _lifetime(expires_in: Any, default: float) -> float:
    """The token's lifetime in seconds: `expires_in` when it is a positive finite number, else `default`. An
    infinite one (`Infinity`, `1e400`) was kept and failed every use of the token; `true` read as one second."""
    if isinstance(expires_in, bool) or not isinstance(expires_in, int | float):
        return default
    try:
        seconds = float(expires_in)
    except OverflowError:  # an integer past a double's range
        return default
    return seconds if 0 < seconds < math.inf else default


def _client_auth(upstream: UpstreamConfig) -> str:
    creds = upstream.credentials
    assert creds.client_id is not None
    return basic_auth(creds.client_id, creds.client_secret or "")


async def _oauth_error(response: aiohttp.ClientResponse) -> str:
    try:
        body = await response.json(content_type=None)
    except (ValueError, aiohttp.ClientError):
        return ""
    error = body.get("error") if isinstance(body, dict) else None
    # RFC 6749 error codes are short ASCII words; anything else is not echoed.
    return error if isinstance(error, str) and error.isascii() and len(error) <= 64 and error.isidentifier() else ""
