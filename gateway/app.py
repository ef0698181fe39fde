"""Composition root: builds every part from the validated config and wires the pipeline once.

`create_app(config)` constructs the parts (no I/O), `Gateway.lifecycle` opens them in order when the
application starts and closes them in reverse when it stops (aiohttp `cleanup_ctx`). Nothing here
is global: two gateways in one process do not share state.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
from aiohttp import web

from gateway.catalog import Catalog
from gateway.config.model import Config
from gateway.context import Principal
from gateway.credentials.tasks import explicit_task_id, session_task_id
from gateway.forward import ForwardStage
from gateway.health import HealthRoutes
from gateway.http.edge import answer_parser_refusals
from gateway.http.guards import HostOriginPolicy, guard_middleware
from gateway.http.legacy_sse import LegacySseEndpoint
from gateway.http.mcp import McpEndpoint, routes
from gateway.identity.jwt import MAX_TOKEN_BYTES
from gateway.keys import CONFIG, GATEWAY, ORIGINS
from gateway.parts import Parts, build_parts
from gateway.pin_watch import PinWatcher, gateway_headers
from gateway.pipeline import Pipeline
from gateway.router import Router
from gateway.sessions import Session, SessionManager
from gateway.telemetry.upstream_calls import UpstreamCalls, sent_id_recorder
from gateway.transport.base import Upstream
from gateway.transport.http_base import UPSTREAM_IDLE_S
from gateway.transport.registry import build_upstream

log = logging.getLogger("customs.app")
MAX_HEADER_BYTES = MAX_TOKEN_BYTES + 1024  # one request header field: a bearer token of the largest size identify takes
UPSTREAM_CONNECTIONS = 100  # open at once to one upstream (host and port); more calls wait for one
# Shutdown's Redis work is cut off this long before the drain deadline: what closes after it and the process's own exit
# take about 0.1 s (more on a loaded machine), and belong inside the deadline too.
REDIS_CUT_BEFORE_S = 0.25
# ... but gets at least this, past the deadline when calls ran up to it: a Redis that answers takes milliseconds for a
# session's revocation, so those are still made; one that hangs costs the exit this at most.
REDIS_CLOSE_MIN_S = 1.0


class Owner(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...


@dataclass
class Gateway:
    """The running parts of one gateway instance."""

    config: Config
    http: aiohttp.ClientSession
    parts: Parts
    sessions: SessionManager
    catalog: Catalog
    endpoint: McpEndpoint
    owners: list[Any] = field(default_factory=list)
    draining: bool = False
    shutdown_deadline: float | None = None  # loop time; set on SIGTERM (serve.py): the drain's deadline

    async def start(self) -> None:
        started: list[Any] = []
        try:
            for owner in self.owners:
                await owner.start()
                started.append(owner)
        except BaseException:
            for owner in reversed(started):
                await _close_quietly(owner)
            await self.http.close()  # close() never runs for a gateway that did not start
            raise

    async def close(self) -> None:
        """Close the owners in reverse order. Once SIGTERM set the deadline, shutdown's Redis work (sessions'
        revocations, the stores' last writes, what calls left running in the background) shares it: against a Redis
        that hangs each of those waited the client's 5 s socket timeout and the exit came seconds past it. So do
        the upstream sessions' closes: each DELETE waited up to 5 s, sixteen sessions at a time; the RFC 7009
        revocations of exchanged tokens at their authorization server, which close waited up to 5 s for; and the
        approval webhooks' deliveries still queued or retried, which close waited up to 5 s for too."""
        bound = self._redis_bound()
        self.sessions.shutdown_bound = bound  # and the upstream sessions' DELETEs, which a mute upstream never answers
        self.parts.credentials.exchanger.revoker.shutdown_bound = bound  # a mute authorization server, likewise
        if self.parts.webhooks is not None:
            self.parts.webhooks.shutdown_bound = bound  # and a webhook receiver that never answers
        for owner in reversed(self.owners):
            await _close_quietly(owner)
            if owner is self.sessions:  # no call runs any more: nothing new goes to the background
                await self._settle_background(bound)
        await self.http.close()

    def _redis_bound(self) -> float | None:
        """The moment (loop time) shutdown's Redis commands are cut off at: just before the drain deadline, or
        REDIS_CLOSE_MIN_S from now if that is later; None without a deadline (a runner cleaned up in tests)."""
        if self.shutdown_deadline is None:
            return None
        now = asyncio.get_running_loop().time()
        bound = max(self.shutdown_deadline - REDIS_CUT_BEFORE_S, now + REDIS_CLOSE_MIN_S)
        if self.parts.redis is not None:
            self.parts.redis.cut_off(bound)
        return bound

    async def _settle_background(self, bound: float | None) -> None:
        """Await the holds' releases and the task facts' give-backs calls left running, until `bound`; cancel
        those still running then (their in-flight command began before the cut-off, which does not bound it)."""
        running = self.parts.approve.in_background() | self.parts.facts.in_background()
        if not running:
            return
        timeout = None if bound is None else max(0.0, bound - asyncio.get_running_loop().time())
        _, late = await asyncio.wait(running, timeout=timeout)
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)

    async def lifecycle(self, app: web.Application) -> AsyncIterator[None]:
        await self.start()
        yield
        await self.close()


async def _close_quietly(owner: Any) -> None:
    try:
        close = getattr(owner, "close", None) or owner.stop  # upstreams stop(), other owners close()
        await close()
    except Exception:
        log.exception("error while closing %s", type(owner).__name__)


async def create_app(config: Config) -> web.Application:
    """Build the application for `config`. Invalid policies raise here: the gateway refuses to start."""
    # No cookie jar: a cookie one upstream sets must never ride along on another principal's call.
    # Pooled per upstream (host and port), not 100 connections for all together: one slow upstream holding
    # 100 calls would otherwise leave the others' calls waiting for a connection until they time out.
    http = aiohttp.ClientSession(auto_decompress=True, timeout=aiohttp.ClientTimeout(total=None),
                                 cookie_jar=aiohttp.DummyCookieJar(),
                                 connector=aiohttp.TCPConnector(limit=0, limit_per_host=UPSTREAM_CONNECTIONS,
                                                                keepalive_timeout=UPSTREAM_IDLE_S))
    try:
        gateway = await _build(config, http)
    except BaseException:
        await http.close()
        raise
    origins = HostOriginPolicy(config.listen)
    app = web.Application(client_max_size=config.listen.max_body_bytes + 1,
                          middlewares=[guard_middleware(origins, gateway.parts.observability.metrics.request_refused)])
    app[CONFIG] = config
    app[ORIGINS] = origins
    app[GATEWAY] = gateway
    app.cleanup_ctx.append(gateway.lifecycle)
    # Before aiohttp waits for requests to finish: server→client streams are not work to wait for.
    app.on_shutdown.append(lambda _app: gateway.endpoint.streams.end_all())
    app.add_routes(routes(gateway.endpoint))
    app.add_routes(LegacySseEndpoint(gateway.endpoint).routes())
    app.add_routes(gateway.parts.routes)
    health = HealthRoutes(gateway.parts.upstreams, gateway.parts.checks, lambda: gateway.draining)
    app.add_routes(health.routes())
    return app


async def _build(config: Config, http: aiohttp.ClientSession) -> Gateway:
    upstreams = {u.name: build_upstream(u, http) for u in config.upstreams}
    catalog = Catalog(config.upstreams)
    parts = await build_parts(config, http, upstreams, catalog)
    _hook_upstreams(upstreams, catalog, parts)
    calls = parts.observability.upstream_calls()
    sessions = _session_manager(config, upstreams, catalog, parts, calls)
    endpoint = _mcp_endpoint(config, upstreams, catalog, parts, sessions, calls)
    owners = _owners(config, upstreams, catalog, parts, sessions)
    return Gateway(config=config, http=http, parts=parts, sessions=sessions, catalog=catalog,
                   endpoint=endpoint, owners=owners)


def _hook_upstreams(upstreams: dict[str, Upstream], catalog: Catalog, parts: Parts) -> None:
    """Give each upstream whose transport has them its restart, session-end and notification hooks."""
    count_restart = parts.observability.metrics.upstream_restart

    def restarted(name: str) -> None:
        # A restarted child may be a new version: its tools are re-listed (and pins re-checked) before
        # the next call runs.
        count_restart(name)
        catalog.invalidate(name)

    for upstream in upstreams.values():
        if hasattr(upstream, "on_restart"):
            upstream.on_restart = restarted
        if hasattr(upstream, "on_session_end"):  # mcp.client.session.duration (None with metrics off)
            upstream.on_session_end = parts.observability.metrics.client_session_recorder(catalog.config(upstream.name))
        if hasattr(upstream, "on_notify"):  # notifications/cancelled's CLIENT span (None with telemetry off)
            upstream.on_notify = parts.observability.notify_hook(upstream.name)


def _session_manager(config: Config, upstreams: dict[str, Upstream], catalog: Catalog, parts: Parts,
                     calls: UpstreamCalls | None) -> SessionManager:
    """The agents' MCP sessions, each ending with its credentials and counted in the session metrics."""

    async def on_session_end(session: Session) -> None:
        if not session.stateless:  # the 2026-07-28 revision has no sessions: its implicit one is the gateway's own
            parts.observability.metrics.session_ended(time.monotonic() - session.opened, session.protocol_version)
        await parts.session_ended(session, "shutdown" if sessions.closing else "session_end")

    async def connect_headers(session: Session, upstream: str) -> dict[str, str]:
        principal = session.principal
        if principal is None:
            return {}
        return await parts.credentials.connect_headers(principal, upstream, session_task_id(session.id))

    sessions = SessionManager(upstreams, catalog, idle_s=config.tasks.idle_s, on_end=on_session_end,
                              credential_headers=connect_headers, max_sessions=config.limits.max_sessions,
                              max_per_principal=config.limits.max_sessions_per_principal,
                              handshake=calls.handshake if calls is not None else None,
                              notified=parts.observability.upstream_notices(),
                              scrub=parts.credentials.redactor.scrub_known)
    parts.observability.metrics.watch_sessions(sessions.open_counts)
    return sessions


def _mcp_endpoint(config: Config, upstreams: dict[str, Upstream], catalog: Catalog, parts: Parts,
                  sessions: SessionManager, calls: UpstreamCalls | None) -> McpEndpoint:
    """The `/mcp` endpoint, with the pipeline every call goes through and the router that runs it."""

    def timeout(upstream: str, tool: str | None) -> float | None:
        cfg = catalog.config(upstream)
        override = cfg.tools.get(tool) if tool else None
        return override.timeout_s if override and override.timeout_s else cfg.timeout_s

    async def on_task_end(principal: Principal, task: str) -> None:
        # The same scoping as `_meta["customs/task"]`: an agent can only end its own task.
        await parts.credentials.end_task(explicit_task_id(task, principal), "explicit", principal.key)

    obs = parts.observability
    obs.lists_tool = catalog.lists  # a failed call's tool name is a metric value only if listed
    pipeline = obs.instrument(Pipeline(
        authorize=parts.authorize, approve=parts.approve, credential=parts.credentials.stage,
        forward=ForwardStage(sessions, timeout, obs.inject, sent_id_recorder(obs.telemetry),
                             scrub=parts.credentials.redactor.scrub_known), record=obs.record,
        rate=parts.limiter.rate, facts=parts.facts, slot=parts.limiter.concurrency))
    router = Router(sessions, catalog, pipeline, parts.authorizer, parts.guard,
                    {u.name: u.timeout_s for u in config.upstreams}, upstream_call=calls,
                    notified=obs.upstream_notices(), scrub=parts.credentials.redactor.scrub_known)
    return McpEndpoint(identifier=parts.identifier, sessions=sessions, router=router,
                       upstream_names=frozenset(upstreams), max_body_bytes=config.listen.max_body_bytes,
                       body_timeout_s=config.listen.body_timeout_s,
                       max_json_depth=config.listen.max_json_depth, observability=obs,
                       resource_url=config.listen.resource_url, on_task_end=on_task_end)


def _owners(config: Config, upstreams: dict[str, Upstream], catalog: Catalog, parts: Parts,
            sessions: SessionManager) -> list[Any]:
    """What the gateway starts in this order and closes in reverse (Gateway.start, Gateway.close)."""
    owners: list[Any] = [*parts.owners_before_upstreams, *upstreams.values(), sessions, *parts.owners_after]
    if config.pinning.mode != "off":
        owners.append(PinWatcher(catalog, parts.guard, upstreams, config.pinning.verify_interval_s,
                                 gateway_headers(catalog, parts.credentials.static),
                                 upstream_call=parts.observability.upstream_calls(),
                                 scrub=parts.credentials.redactor.scrub_known))
    return owners


async def serving_runner(app: web.Application, **kwargs: Any) -> web.AppRunner:
    """The set-up `AppRunner` that serves a gateway app: aiohttp's handler cancellation on (a dropped client
    withdraws its call), except for a call whose stream the client can resume (gateway/http/resumable.py)."""
    # A header as long as the longest bearer token identity accepts (16 KiB), with room to spare: aiohttp's own
    # 8190-byte limit refused a valid 10 KiB token (many group claims) with a text/plain 400 before identify.
    kwargs.setdefault("max_field_size", MAX_HEADER_BYTES)
    runner = web.AppRunner(app, handler_cancellation=True, **kwargs)
    await runner.setup()
    assert runner.server is not None
    app[GATEWAY].endpoint.disconnects.install(runner.server)
    # br/zstd bodies: the gateway's 415 (not aiohttp's text/plain 400), counted as the guard counts edge refusals;
    # it and aiohttp's answer to a request it cannot parse name an allowed origin as the guard's answers do
    answer_parser_refusals(runner.server, app[GATEWAY].parts.observability.metrics.request_refused, app[ORIGINS])
    return runner
