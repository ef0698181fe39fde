"""Revoke exchanged tokens at the authorization server (RFC 7009) in the background, with bounded retries.

A token obtained by token exchange is the authorization server's, not Customs': ending its task
only stops Customs handing it out. When the upstream's `credentials.revocation_endpoint` is set,
each such token is revoked there once its task ends (`token_type_hint=access_token`, the same
HTTP Basic client authentication as the exchange). Nothing waits for it: a slow or unreachable
server never delays a call or a task end. Failures are retried a bounded number of times, then
logged (never the token) and counted; a token that has expired meanwhile needs no revocation. At shutdown
`close()` waits for the revocations still running only until the drain deadline's bound (`shutdown_bound`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

from gateway.config.model import UpstreamConfig

log = logging.getLogger("customs.credentials.exchange")

ACCESS_TOKEN_HINT = "access_token"
# Delays before the second and third attempt: a restarting server gets a few seconds, a dead one costs
# three requests per token.
RETRY_DELAYS_S = (0.5, 2.0)
# Revocations waiting or running at once; past this a token is left to expire (logged and counted), so a
# flood of ending tasks against a dead server cannot grow memory without bound.
MAX_PENDING = 1024
# Shutdown ends every task: how long close() lets their revocations run before it gives up on them ...
CLOSE_WAIT_S = 5.0
# ... and, once SIGTERM set the drain deadline, at least this when its bound has come: the task ends before
# close() may have held their revocations back till then (each waited on a hung Redis until its cut-off), and a
# server that answers takes milliseconds; a mute one costs the exit this at most (the bound is 0.25 s before
# the deadline: gateway/app.py REDIS_CUT_BEFORE_S).
CLOSE_MIN_S = 0.25

Outcome = Callable[[str, str], None]  # (upstream name, ok | failed | dropped)


@dataclass(frozen=True)
class Revocation:
    upstream: UpstreamConfig
    token: str
    expires_at: float


class _Permanent(Exception):
    """The server refused the request itself (4xx, or a redirect): asking again would get the same answer."""


class _Retry(Exception):
    """A transient answer (5xx, 408, 429): worth another attempt."""


class TokenRevoker:
    """Runs RFC 7009 revocation requests in background tasks; `close()` waits for them, briefly."""

    def __init__(self, http: Callable[[], aiohttp.ClientSession | None], auth: Callable[[UpstreamConfig], str], *,
                 timeout: aiohttp.ClientTimeout, clock: Callable[[], float] = time.time,
                 on_outcome: Outcome | None = None) -> None:
        self._http = http
        self._auth = auth
        self._timeout = timeout
        self._clock = clock
        self._on_outcome = on_outcome
        self.retry_delays: tuple[float, ...] = RETRY_DELAYS_S
        self.close_wait_s = CLOSE_WAIT_S
        # Loop time by which close() gives up on the revocations (gateway/app.py: Gateway.close sets it from the drain
        # deadline); None: no deadline, close_wait_s alone.
        self.shutdown_bound: float | None = None
        self._running: set[asyncio.Task[None]] = set()

    @staticmethod
    def wanted(upstream: UpstreamConfig) -> bool:
        return upstream.credentials.revocation_endpoint is not None

    def submit(self, revocations: list[Revocation]) -> None:
        """Start revoking these tokens; returns at once."""
        now = self._clock()
        for item in revocations:
            if not self.wanted(item.upstream) or item.expires_at <= now:
                continue  # an expired token is already useless: nothing to ask the server
            if len(self._running) >= MAX_PENDING:
                log.warning("token revocation for upstream %s dropped: %d revocations already pending",
                            item.upstream.name, len(self._running))
                self._count(item.upstream, "dropped")
                continue
            task = asyncio.get_running_loop().create_task(self._revoke(item), name="customs-token-revocation")
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _revoke(self, item: Revocation) -> None:
        name = item.upstream.name
        attempts = len(self.retry_delays) + 1
        problem = ""
        for attempt in range(attempts):
            if attempt:
                await asyncio.sleep(self.retry_delays[attempt - 1])  # backoff between attempts
                if item.expires_at <= self._clock():
                    log.info("token revocation for upstream %s abandoned: the token has expired", name)
                    return
            try:
                await self._post(item)
            except _Permanent as exc:
                problem = str(exc)
                break
            except (aiohttp.ClientError, TimeoutError) as exc:
                problem = type(exc).__name__
                continue
            except _Retry as exc:
                problem = str(exc)
                continue
            self._count(item.upstream, "ok")
            return
        log.warning("token revocation for upstream %s failed after %d attempt(s): %s; the token stays valid "
                    "at the authorization server until it expires", name, attempt + 1, problem)
        self._count(item.upstream, "failed")

    async def _post(self, item: Revocation) -> None:
        http = self._http()
        if http is None:
            raise aiohttp.ClientConnectionError("closed")
        endpoint = item.upstream.credentials.revocation_endpoint
        assert endpoint is not None
        form = {"token": item.token, "token_type_hint": ACCESS_TOKEN_HINT}
        headers = {"Authorization": self._auth(item.upstream), "Accept": "application/json"}
        # Never through a redirect (the form carries the token): a 3xx is the server's answer, and not retried.
        async with http.post(endpoint, data=form, headers=headers, timeout=self._timeout,
                             allow_redirects=False) as response:
            # RFC 7009 §2.2: 200 also for a token the server no longer knows; §2.2.1: 503 asks for a retry.
            if response.status == 200:
                return
            if 300 <= response.status < 500 and response.status not in (408, 429):
                raise _Permanent(f"HTTP {response.status}")
            raise _Retry(f"HTTP {response.status}")

    def _count(self, upstream: UpstreamConfig, outcome: str) -> None:
        if self._on_outcome is None:
            return
        try:
            self._on_outcome(upstream.name, outcome)
        except Exception:
            log.exception("token revocation metric failed")

    def _close_wait_s(self) -> float:
        if self.shutdown_bound is None:
            return self.close_wait_s
        left = self.shutdown_bound - asyncio.get_running_loop().time()
        return min(self.close_wait_s, max(left, CLOSE_MIN_S))

    @property
    def pending(self) -> int:
        return len(self._running)

    async def wait_idle(self, timeout_s: float) -> set[asyncio.Task[None]]:
        """Wait up to `timeout_s` for the revocations running now; returns those still running."""
        if not self._running:
            return set()
        _, late = await asyncio.wait(set(self._running), timeout=timeout_s)
        return late

    async def close(self) -> None:
        """Let running revocations (shutdown ends every task) finish for up to `close_wait_s` and, with a drain
        deadline, only until `shutdown_bound` (at least CLOSE_MIN_S), then stop them. Waiting the whole 5 s held
        the exit that long past a shorter deadline when the authorization server did not answer."""
        late = await self.wait_idle(self._close_wait_s())
        for task in late:
            task.cancel()
        if late:
            await asyncio.wait(late)
            log.warning("%d token revocation(s) unfinished at shutdown; those tokens stay valid at the "
                        "authorization server until they expire", len(late))
