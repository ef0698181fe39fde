"""Client sessions: bound to a principal, owning their upstream sessions (routing: gateway/server_messages.py).

A session's own state is gateway/session.py's `Session` (re-exported here).

A session is created by `initialize` (or implicitly per principal for the stateless 2026-07-28
revision) and ends on DELETE, idle timeout or shutdown. Its id has 256 bits of randomness. Only
the principal that created it may use it: anyone else gets the same 404 as an unknown id.

Open sessions are capped per principal and in total (`limits.max_sessions_per_principal`,
`limits.max_sessions`): a client that creates sessions and never ends them is refused
(`rate_limited`) instead of growing memory until the idle expiry catches up. The sweep and shutdown
end sessions a bounded number at a time, since each end awaits its upstreams and revocation.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from gateway.catalog import Catalog
from gateway.context import Principal
from gateway.errors import GatewayError
from gateway.server_messages import NotificationHook, carried_scrub, route_server_message, scrub_error
from gateway.session import STREAM_END, Withdrawing, credential_values
from gateway.session import Session as Session
from gateway.transport.base import ConnectParams, Message, Upstream, UpstreamSession

log = logging.getLogger("customs.sessions")
# Sessions ended at once by the idle sweep and at shutdown: each end awaits upstream DELETEs and
# revocation (~20 ms under load), so one at a time falls behind a flood of abandoned sessions.
END_CONCURRENCY = 16
HeadersFn = Callable[["Session", str], Awaitable[dict[str, str]]]
# Opening a session with an upstream (by name) on a request's behalf, traced: the block runs inside the set-up's
# CLIENT span and gets the W3C context its requests carry (None: none to carry; telemetry/upstream_calls.py).
Handshake = Callable[[str], AbstractContextManager[Mapping[str, str] | None]]


class SessionManager:
    """Creates, finds and ends sessions; connects their upstream sessions on demand."""

    def __init__(self, upstreams: Mapping[str, Upstream], catalog: Catalog, *, idle_s: float = 1800.0,
                 on_end: Callable[[Session], Awaitable[None]] | None = None,
                 credential_headers: HeadersFn | None = None, max_sessions: int = 10_000,
                 max_per_principal: int = 1_000, end_concurrency: int = END_CONCURRENCY,
                 handshake: Handshake | None = None, notified: NotificationHook | None = None,
                 scrub: Callable[[Any], Any] | None = None) -> None:
        self._upstreams = upstreams
        self._scrub = scrub  # Redactor.scrub_known: given to each session (routing takes the secrets out)
        self._handshake = handshake
        self._notified = notified  # what upstreams send outside any call, traced (None: tracing off)
        self._credential_headers = credential_headers
        self._catalog = catalog
        self._sessions: dict[str, Session] = {}
        self._stateless: dict[tuple[str, str | None], Session] = {}
        self._idle_s = idle_s
        self._max_sessions = max_sessions
        self._max_per_principal = max_per_principal
        self._per_principal: dict[str, int] = {}  # open (non-stateless) sessions by principal key
        self._end_concurrency = end_concurrency
        self._on_end = on_end
        self._sweeper: asyncio.Task[None] | None = None
        self.closing = False  # the gateway is stopping: the sessions it ends now end by its shutdown
        self.shutdown_bound: float | None = None  # loop time by which shutdown's upstream closes give up (app.py)

    async def start(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep(), name="customs-session-sweeper")

    async def close(self) -> None:
        self.closing = True
        if self._sweeper:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
        await self._end_each([*self._sessions.values(), *self._stateless.values()], lambda _: True)

    def withdraw_calls(self) -> None:
        """Shutdown's drain deadline: every Streamable HTTP call still in flight is withdrawn and answered
        shutting_down (its HTTP handler then ends; aiohttp alone would wait the deadline again, then cut it)."""
        for session in [*self._sessions.values(), *self._stateless.values()]:
            for call in list(session.inflight.values()):
                if isinstance(call, Withdrawing):
                    call.cancel("shutting_down")

    def __len__(self) -> int:
        return len(self._sessions)

    def open_counts(self) -> dict[str, int]:
        """Open sessions by kind, for the `customs.sessions.open` gauge (len() is safe from another thread)."""
        return {"stateful": len(self._sessions), "stateless": len(self._stateless)}

    def create(self, principal: Principal, view: str | None, protocol_version: str,
               client_info: Mapping[str, Any] | None, capabilities: Mapping[str, Any] | None) -> Session:
        """A new session (initialize, legacy SSE), or `rate_limited` when a session cap is reached."""
        self._admit(principal.key)
        session = Session(id=secrets.token_hex(32), principal_key=principal.key, view=view,
                          protocol_version=protocol_version, client_info=client_info, capabilities=capabilities,
                          principal=principal, scrub=self._scrub)
        self._sessions[session.id] = session
        self._per_principal[principal.key] = self._per_principal.get(principal.key, 0) + 1
        return session

    def _admit(self, principal_key: str) -> None:
        # The principal's own cap first: a flooding client is told it is its own sessions that count.
        if self._per_principal.get(principal_key, 0) >= self._max_per_principal:
            raise _session_limited("sessions_per_principal",
                                   "Too many open sessions for this principal; end unused ones with DELETE")
        if len(self._sessions) >= self._max_sessions:
            raise _session_limited("sessions", "Too many open sessions on this gateway")

    def _release(self, principal_key: str) -> None:
        left = self._per_principal.get(principal_key, 0) - 1
        if left > 0:
            self._per_principal[principal_key] = left
        else:
            self._per_principal.pop(principal_key, None)

    def stateless(self, principal: Principal, view: str | None, protocol_version: str,
                  capabilities: Mapping[str, Any] | None) -> Session:
        """The implicit per-principal session of stateless clients (also their credential task)."""
        key = (principal.key, view)
        session = self._stateless.get(key)
        if session is None or session.closed:
            session = Session(id="stateless-" + secrets.token_hex(16), principal_key=principal.key, view=view,
                              protocol_version=protocol_version, capabilities=capabilities, stateless=True,
                              scrub=self._scrub)
            self._stateless[key] = session
        session.principal = principal
        session.touch()
        return session

    def get(self, session_id: str, principal: Principal, view: str | None) -> Session:
        """A Streamable HTTP session named by Mcp-Session-Id on /mcp or /mcp/{view}. A legacy HTTP+SSE session
        looks unknown there: a GET stream opened with its id took the answers its client awaits on /sse."""
        return self._owned(self._sessions.get(session_id), principal, view, legacy=False)

    def get_legacy(self, session_id: str, principal: Principal) -> Session:
        """A legacy HTTP+SSE session (any view) named by /messages?session_id=; Streamable HTTP sessions
        look unknown there, since their answers would go to a GET stream the poster may not be reading."""
        session = self._sessions.get(session_id)
        return self._owned(session, principal, session.view if session is not None else None, legacy=True)

    def _owned(self, session: Session | None, principal: Principal, view: str | None, *, legacy: bool) -> Session:
        # Another principal's session, another endpoint's (or transport's) session and an unknown id look the same.
        if (session is None or session.closed or session.principal_key != principal.key or session.view != view
                or session.legacy_sse != legacy):
            raise GatewayError("session_not_found")
        session.principal = principal
        session.touch()
        return session

    async def headers(self, session: Session, upstream: str) -> dict[str, str]:
        """Fresh credential headers for requests the gateway makes on the session's behalf (the upstream session's
        set-up, GET stream, DELETE, listings). They join what is taken out of what upstreams send the session, as a
        call's credential does: an upstream quoting the token it was opened with must not hand it to the agent."""
        if self._credential_headers is None:
            return {}
        headers = await self._credential_headers(session, upstream)
        session.carried.extend(credential_values(headers))
        return headers

    async def end(self, session: Session) -> None:
        if session.closed:
            return
        session.closed = True
        if self._sessions.pop(session.id, None) is session:
            self._release(session.principal_key)
        key = (session.principal_key, session.view)
        if session.stateless and self._stateless.get(key) is session:  # not its successor under the key
            del self._stateless[key]
        for task in list(session.inflight.values()):
            task.cancel()
        if session.get_stream_open:
            session.outbox.put_nowait(STREAM_END)
        await self._close_upstreams(session)
        session.upstreams.clear()
        if self._on_end is not None:
            try:
                await self._on_end(session)
            except Exception:
                log.exception("session end hook failed")

    async def _close_upstreams(self, session: Session) -> None:
        """Close the session's upstream sessions (their DELETEs); at shutdown only until `shutdown_bound`, then
        cancelled: a mute upstream's DELETE waits 5 s, and ending every session so held the exit past its deadline."""
        closes = [asyncio.ensure_future(s.close()) for s in session.upstreams.values()]
        if not closes:
            return
        bound = self.shutdown_bound
        timeout = None if bound is None else max(0.0, bound - asyncio.get_running_loop().time())
        _, late = await asyncio.wait(closes, timeout=timeout)
        for close in late:
            close.cancel()
        await asyncio.gather(*closes, return_exceptions=True)

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(min(60.0, self._idle_s / 4))
            now = time.monotonic()
            cutoff = now - self._idle_s
            every = (*self._sessions.values(), *self._stateless.values())
            for session in every:
                if session.inflight:  # busy: its idle time starts when its calls end, not when the last began
                    session.last_used = now
            idle = [s for s in every if s.last_used < cutoff]
            # Asked again at its turn: ending the ones before it awaits upstreams, and a call may
            # have arrived on this session meanwhile (ending it would cancel that call).
            await self._end_each(idle, _still_idle(cutoff))

    async def _end_each(self, sessions: list[Session], still: Callable[[Session], bool]) -> None:
        """End `sessions`, at most `end_concurrency` at once, each only if `still(session)` at its turn."""
        pending = iter(sessions)  # shared by the workers: each session is taken by exactly one

        async def worker() -> None:
            for session in pending:
                if not still(session):
                    continue
                try:
                    await self.end(session)
                except Exception:  # one failed end must not stop the sweep (or shutdown) for the rest
                    log.exception("ending session %s failed", session.id[:8])

        await asyncio.gather(*(worker() for _ in range(min(self._end_concurrency, len(sessions)))))

    async def upstream_session(self, session: Session, upstream: str) -> UpstreamSession:
        """The session's connection to one upstream, opened on first use."""
        existing = session.upstreams.get(upstream)
        if existing is not None:
            return existing
        lock = session.locks.setdefault(upstream, asyncio.Lock())
        async with lock:
            existing = session.upstreams.get(upstream)
            if existing is not None:
                return existing
            if session.closed:
                raise GatewayError("session_not_found")
            handler = self._message_handler(session, upstream)

            async def credentials() -> dict[str, str]:
                return await self.headers(session, upstream)
            headers = await credentials()
            with self._handshake(upstream) if self._handshake is not None else nullcontext() as trace:
                params = ConnectParams(protocol_version=_handshake_version(session.protocol_version),
                                       client_info=session.client_info, capabilities=session.capabilities,
                                       trace_context=trace)
                try:
                    connected = await self._upstreams[upstream].connect(params, handler, headers,
                                                                        credentials=credentials)
                except GatewayError as exc:  # its refusal may quote the key, or the token it was sent (carried)
                    scrub_error(self._scrub, exc)
                    raise scrub_error(carried_scrub(session), exc) from exc.__cause__
            if session.closed:
                # Ended while connecting (a legacy SSE client left during its initialize): `end` closed the
                # upstreams it knew of, not this one, which would stay open (a stdio view attached) for good.
                await connected.close()
                raise GatewayError("session_not_found")
            session.upstreams[upstream] = connected
            return connected

    def _message_handler(self, session: Session, upstream: str) -> Callable[[Message], Awaitable[None]]:
        notified = self._notified
        if notified is None:
            async def on_message(message: Message) -> None:
                await route_server_message(session, upstream, message, None, self._catalog)
            return on_message
        route = functools.partial(route_server_message, session, upstream, send=None, catalog=self._catalog)

        async def traced(message: Message) -> None:
            await notified(session, upstream, message, route, True)
        return traced


def _still_idle(cutoff: float) -> Callable[[Session], bool]:
    """Whether a session listed as idle may still be ended: unused since `cutoff`, no call in flight."""
    return lambda session: session.last_used < cutoff and not session.inflight


def _session_limited(limit: str, message: str) -> GatewayError:
    # Sessions free up only when ended (DELETE or idle expiry); 1 s as for the concurrency limit.
    return GatewayError("rate_limited", message, data={"limit": limit, "retry_after_s": 1},
                        headers={"Retry-After": "1"})


def _handshake_version(version: str) -> str:
    from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, LATEST_HANDSHAKE_VERSION
    return version if version in HANDSHAKE_PROTOCOL_VERSIONS else LATEST_HANDSHAKE_VERSION
