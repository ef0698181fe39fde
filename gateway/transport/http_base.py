"""What the two HTTP upstream transports share: outgoing headers, error mapping, breaker, health, probe.

Outgoing headers are exactly: protocol headers (Accept, Content-Type, User-Agent, session and
version headers), the upstream's static `headers` from config, and the per-call headers the gateway
hands over (the credential, trace context). Nothing from the agent's request is ever forwarded.
Redirects are never followed: a 3xx is an upstream_error and the target is never contacted.
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Mapping
from contextlib import suppress
from typing import Any, NoReturn
from urllib.parse import urlsplit

import aiohttp

from gateway import __version__
from gateway.config.model import UpstreamConfig
from gateway.config.rules import RESERVED_HEADERS
from gateway.errors import GatewayError
from gateway.transport.base import (
    ROUTE_GUESSED,
    ConnectParams,
    HeadersSource,
    Health,
    Message,
    MessageHandler,
    NotifyHook,
    SessionEnded,
)
from gateway.transport.common import DEFAULT_BREAKER_COOLDOWN_S, DEFAULT_BREAKER_THRESHOLD, CircuitBreaker
from gateway.transport.deadlines import Deadlines

ACCEPT_BOTH = "application/json, text/event-stream"
USER_AGENT = f"customs/{__version__}"
# Headers a caller may not set: they belong to the HTTP exchange or the MCP session itself.
_RESERVED = RESERVED_HEADERS
PROBE_TIMEOUT_S = 2.0
# The probe's own MCP handshake (initialize, notifications/initialized, the GET stream, DELETE): within the 5 s a
# /readyz request waits for a probe (gateway/health.py).
PROBE_HANDSHAKE_S = 4.0
# HTTP statuses that refuse the caller (its credential), not the protocol: one agent's refused token says nothing
# about whether the URL serves MCP.
_REFUSING = (401, 403)
# How long an idle pooled connection to an upstream may be reused: under the 5 s after which uvicorn (the
# MCP SDK's server) and Node's http server close one. A connection kept longer can be picked just as the
# server closes it, and the request crossing that close fails a call that, being perhaps a write, cannot be
# sent again. aiohttp checks the age when it takes a connection from the pool, so the margin holds however
# late the event loop runs.
UPSTREAM_IDLE_S = 4.0


class HttpUpstreamBase(ABC):
    """Lifecycle, health, breaker and request plumbing of one HTTP upstream (subclassed per transport)."""

    def __init__(self, config: UpstreamConfig, http: aiohttp.ClientSession, *,
                 breaker_threshold: int = DEFAULT_BREAKER_THRESHOLD,
                 breaker_cooldown_s: float = DEFAULT_BREAKER_COOLDOWN_S) -> None:
        assert config.url is not None
        self.name = config.name
        self.config = config
        self.url = config.url
        self.http = http
        self.breaker = CircuitBreaker(breaker_threshold, breaker_cooldown_s, upstream=config.name)
        self.deadlines = Deadlines()  # its calls' timeouts (a sweep that stops by itself once no call is left)
        self.log = logging.getLogger(f"customs.upstream.{config.name}")
        self._state = Health(False, "not contacted yet")
        # Why the last handshake's answer was no MCP (a wrong path's 404, an HTML page): not ready until one succeeds.
        # Apart from _state, which every HTTP answer (a call's too) sets to "ok".
        self._not_mcp: str | None = None
        self._streams: aiohttp.ClientSession | None = None
        self._probing: asyncio.Task[Health] | None = None
        self.sessions: set[Any] = set()
        self.on_session_end: SessionEnded | None = None  # metrics hook: mcp.client.session.duration
        self.on_notify: NotifyHook | None = None  # tracing hook: notifications/cancelled's CLIENT span

    async def start(self) -> None:
        # Long-lived SSE streams get their own unlimited pool so that open GET streams can never
        # starve request POSTs of connections from the shared pool.
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=UPSTREAM_IDLE_S)
        self._streams = aiohttp.ClientSession(connector=connector,
                                              cookie_jar=aiohttp.DummyCookieJar(),
                                              timeout=aiohttp.ClientTimeout(total=None), auto_decompress=True)

    async def stop(self) -> None:
        await asyncio.gather(*(s.close() for s in list(self.sessions)), return_exceptions=True)
        self.sessions.clear()
        if self._probing is not None:
            self._probing.cancel()
            await asyncio.gather(self._probing, return_exceptions=True)
            self._probing = None
        if self._streams is not None:
            await self._streams.close()
            self._streams = None

    @property
    def stream_http(self) -> aiohttp.ClientSession:
        return self._streams if self._streams is not None else self.http

    def health(self) -> Health:
        if self.breaker.is_open:  # with why: the failure that opened it (as a stdio upstream says)
            return Health(False, f"{self.breaker.detail}; last: {self._state.detail}")
        if self._not_mcp is not None:
            return Health(False, self._not_mcp)
        return self._state

    @abstractmethod
    async def connect(self, params: ConnectParams, on_message: MessageHandler,
                      headers: Mapping[str, str] | None = None, *, credentials: HeadersSource | None = None) -> Any:
        """Open an upstream session, as each transport does (the probe's handshake opens one too)."""

    async def handshake(self, opening: Awaitable[None]) -> None:
        """Await a session's set-up (`open()`: at connect, or re-opening an expired session), noting for /readyz
        whether the upstream answered it in MCP. Connect and re-open paths only: a call pays nothing for it."""
        try:
            await opening
        except GatewayError as exc:
            self._handshake_failed(exc)
            raise
        self._not_mcp = None

    def _handshake_failed(self, exc: GatewayError) -> None:
        status = exc.data.get("status")
        if "upstream_error" in exc.data or status in _REFUSING:
            # A refusal (a JSON-RPC error, 401/403) is an answer in MCP's terms, perhaps to this caller's credential
            # alone: it must not take the replica out of rotation, and shows that the URL serves MCP again.
            self._not_mcp = None
            return
        if exc.reason == "upstream_error":
            detail = f"initialize failed: {exc.message}"[:200]
        elif exc.reason == "upstream_unavailable" and status in (502, 503, 504):
            detail = f"initialize failed: upstream answered HTTP {status}"
        else:
            return  # a connection failure (in _state, counted by the breaker) or a timeout: no answer to judge
        if detail != self._not_mcp:
            self.log.warning("upstream %s: %s", self.name, detail)
        self._not_mcp = detail

    async def probe(self) -> Health:
        """What /readyz reports; concurrent callers share the one probe in flight."""
        task = self._probing
        if task is None or task.done():
            task = self._probing = asyncio.create_task(self._probe_once(), name=f"customs-{self.name}-probe")
        # Shielded: a /readyz request that gives up must not cancel the probe the others wait for.
        return await asyncio.shield(task)

    async def _probe_once(self) -> Health:
        if self.breaker.is_open:
            # Only a real call or this trial can close the circuit; without it /readyz would stay red
            # after the upstream came back until some client happened to call (bounded: one per cooldown).
            if self.breaker.admit_trial():
                await self._trial_request()
            return self.health()
        if self._not_mcp is not None:
            # A TCP connect (or any HTTP answer) says nothing here: that much was there all along. Only a handshake
            # tells, and the probe makes one itself, since a replica that is not ready may get no agent to make it.
            await self._probe_handshake()
            return self.health()
        parts = urlsplit(self.url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_S):
                _, writer = await asyncio.open_connection(parts.hostname, port)
            writer.close()
            with suppress(OSError):
                await writer.wait_closed()
        except (OSError, TimeoutError) as exc:
            self._state = Health(False, f"connection failed: {type(exc).__name__}")
            return self.health()
        if not self._state.ready:
            self._state = Health(True, "reachable")
        return self.health()

    async def _probe_handshake(self) -> None:
        """Open an MCP session of the probe's own (the upstream's static headers, no credential) and close it;
        `handshake` notes how it went. Only while the last handshake's answer was no MCP."""
        async def ignore(message: Message) -> None:
            return None  # nothing the upstream volunteers concerns the probe

        with suppress(GatewayError, TimeoutError):
            async with asyncio.timeout(PROBE_HANDSHAKE_S):
                session = await self.connect(ConnectParams(internal=True), ignore)
                await session.close()

    async def _trial_request(self) -> None:
        """The open circuit's trial: one HEAD request. Any HTTP answer closes the circuit, as on calls.

        HTTP, not a bare TCP connect: a listener that accepts and then drops or resets connections
        is exactly the failure that opened the circuit."""
        headers = self.headers(None, json_body=False)
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_S):
                async with self.http.head(self.url, headers=headers, allow_redirects=False) as response:
                    response.close()  # never pool a connection whose server may still be writing a body
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            self.breaker.failure()
            self._state = Health(False, f"connection failed: {type(exc).__name__}")
            return
        except BaseException:
            self.breaker.release_trial()
            raise
        self.breaker.success()
        self._state = Health(True, "reachable")
        self.log.info("upstream %s reachable again: circuit closed by the readiness probe", self.name)

    # -- bookkeeping used by sessions -------------------------------------------------------------

    async def taken(self, post: Awaitable[None]) -> None:
        """A message POSTed on the session's behalf (a notification, an answer), taken within `timeout_s`: an
        agent's notification waits for this and must not wait for a mute upstream for good."""
        try:
            async with asyncio.timeout(self.config.timeout_s):
                await post
        except TimeoutError as exc:
            raise GatewayError("upstream_timeout", "upstream did not take the message in time",
                               data={"timeout_s": self.config.timeout_s, "upstream": self.name}) from exc

    def connected(self) -> None:
        self.breaker.success()
        self._state = Health(True, "ok")

    def connection_failed(self, exc: BaseException) -> NoReturn:
        self.breaker.failure()
        self._state = Health(False, f"connection failed: {type(exc).__name__}")
        raise GatewayError("upstream_unavailable", data={"upstream": self.name}) from exc

    def headers(self, extra: Mapping[str, str] | None, *, accept: str = ACCEPT_BOTH, json_body: bool = True,
                session_id: str | None = None, protocol_version: str | None = None) -> dict[str, str]:
        headers = {"Accept": accept, "User-Agent": USER_AGENT}
        if json_body:
            headers["Content-Type"] = "application/json"
        headers.update(self.config.headers)
        for name, value in (extra or {}).items():
            if name.lower() not in _RESERVED:
                headers[name] = value
        if session_id:
            headers["Mcp-Session-Id"] = session_id
        if protocol_version:
            headers["MCP-Protocol-Version"] = protocol_version
        return headers

    def check_status(self, response: aiohttp.ClientResponse) -> None:
        """Reject what can never carry a usable answer: redirects and gateway-style unavailability."""
        if 300 <= response.status < 400:
            raise GatewayError("upstream_error", "upstream answered with a redirect (not followed)",
                               data={"status": response.status, "upstream": self.name})
        if response.status in (502, 503, 504):
            raise GatewayError("upstream_unavailable", data={"status": response.status, "upstream": self.name})


async def deliver(handler: MessageHandler | None, message: Message, log: logging.Logger,
                  guessed: bool = False) -> None:
    """Hand an unsolicited message on; a failing handler must not break the upstream stream. `guessed`: the
    handler's request was a guess among several live ones (ROUTE_GUESSED is set while it runs)."""
    if handler is None:
        return
    token = ROUTE_GUESSED.set(True) if guessed else None
    try:
        await handler(message)
    except Exception:
        log.exception("message handler failed for %s", message.get("method"))
    finally:
        if token is not None:
            ROUTE_GUESSED.reset(token)


def same_origin(a: str, b: str) -> bool:
    pa, pb = urlsplit(a), urlsplit(b)
    return (pa.scheme, pa.hostname, pa.port) == (pb.scheme, pb.hostname, pb.port)
