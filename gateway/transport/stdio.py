"""stdio upstreams: one child process per upstream, its one MCP session shared by every client session.

Newline-delimited JSON-RPC on the child's pipes; stdio_child.py keeps the child running.

The child is initialized once; every `connect()` returns a lightweight view that multiplexes the
one shared MCP session (upstream ids come from one counter, so views never collide; progress tokens
are replaced per request, and stdio_routes.py decides which view gets what the child sends). When the
child dies every in-flight request fails at once with upstream_unavailable, and it is restarted with
exponential back-off (capped; stdio_child.py); consecutive failures to start or initialize open the
circuit breaker. A child that stops answering (its fence pings, stdio_fence.py) is stopped and
restarted the same way. The child gets a minimal environment (PATH, HOME, locale...) plus the
upstream's `env`, never the gateway's secrets. stderr lines go to logger `customs.upstream.<name>`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from contextlib import suppress
from functools import partial
from typing import Any

from gateway.config.model import UpstreamConfig
from gateway.errors import GatewayError
from gateway.transport.base import (
    DEFAULT_UPSTREAM_PROTOCOL,
    ConnectParams,
    HeadersSource,
    Health,
    Message,
    MessageHandler,
    NotifyHook,
    SentId,
    SessionEnded,
)
from gateway.transport.common import (
    DEFAULT_BREAKER_COOLDOWN_S,
    DEFAULT_BREAKER_THRESHOLD,
    TOOLS_CHANGED,
    CircuitBreaker,
    SessionClock,
    Unsent,
    cancelled_message,
    send_own,
    with_id,
)
from gateway.transport.inflight import InflightTable, Pending, with_progress_token
from gateway.transport.stdio_child import RESTART_CAP_S, StdioChild
from gateway.transport.stdio_fence import STUCK_AFTER, Fence, StdinStalled
from gateway.transport.stdio_inbound import StdoutReader
from gateway.transport.stdio_routes import SUBSCRIPTION_METHODS, StdioRoutes

# The gateway relays server→client requests to the agent, so it declares what agents commonly offer.
GATEWAY_CAPABILITIES: Mapping[str, Any] = {"sampling": {}, "elicitation": {}}


class StdioUpstream:
    """A supervised stdio MCP server shared by all client sessions."""

    def __init__(self, config: UpstreamConfig, *, capabilities: Mapping[str, Any] = GATEWAY_CAPABILITIES,
                 breaker_threshold: int = DEFAULT_BREAKER_THRESHOLD,
                 breaker_cooldown_s: float = DEFAULT_BREAKER_COOLDOWN_S, grace_s: float = 2.0,
                 restart_cap_s: float = RESTART_CAP_S, on_restart: Callable[[str], None] | None = None) -> None:
        assert config.command is not None
        self.on_restart = on_restart  # metrics hook: customs.upstream.restarts
        self.on_session_end: SessionEnded | None = None  # metrics hook: mcp.client.session.duration
        self.on_notify: NotifyHook | None = None  # tracing hook: notifications/cancelled's CLIENT span
        self._clock = SessionClock()  # the child's one MCP session: initialize to exit
        self.name = config.name
        self.config = config
        self.breaker = CircuitBreaker(breaker_threshold, breaker_cooldown_s, upstream=config.name)
        self.log = logging.getLogger(f"customs.upstream.{config.name}")
        self._params = ConnectParams(DEFAULT_UPSTREAM_PROTOCOL, None, capabilities)
        self._table = InflightTable()
        self._routes = StdioRoutes(self._table, self.write, self, self.log)
        self._stdout = StdoutReader(self._table, self._routes.route, self._negotiated, self.log, self.write)
        self._child = StdioChild(config, self._table, self._params, self.breaker, self._stdout.dispatch, self,
                                 self.log, grace_s=grace_s, restart_cap_s=restart_cap_s)
        # The fence's ping may wait as long for the pipe as for its answer before the child counts as stuck.
        fence_write = partial(self._child.write, limit=config.timeout_s * STUCK_AFTER)
        self._fence = Fence(self._table, fence_write, self, config.timeout_s, self._spawn, self._child.restart_stuck,
                            self.log, self.name)
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def pid(self) -> int | None:
        """The running child's pid (for operators and tests)."""
        return self._child.pid

    @property
    def initialize_result(self) -> Message:
        return self._child.init_result

    def _negotiated(self) -> str:
        version = self._child.init_result.get("protocolVersion")
        return version if isinstance(version, str) else self._params.protocol_version

    async def start(self) -> None:
        await self._child.start()

    async def stop(self) -> None:
        await self._child.stop()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        self._table.fail_all(GatewayError("upstream_unavailable", "upstream stopped", data={"upstream": self.name}))
        self._child.stopped()

    def health(self) -> Health:
        return self._child.health()

    async def probe(self) -> Health:
        """Ready when the child is alive and initialized (no traffic is sent)."""
        return self.health()

    async def connect(self, params: ConnectParams, on_message: MessageHandler,
                      headers: Mapping[str, str] | None = None, *,
                      credentials: HeadersSource | None = None) -> StdioSession:
        # Headers and credentials have no meaning over a child's pipes: both are accepted and unused.
        await self._child.wait_ready(self.config.timeout_s)
        view = StdioSession(self, on_message, internal=params.internal)
        self._routes.attach(view)
        if self._routes.levels_set:  # another session lowered the child's level: this one must get what it did
            with suppress(GatewayError):
                await self._routes.relevel(partial(self._exchange, self, on_message=None, timeout=None))
        return view

    # -- used by the views ------------------------------------------------------------------------

    async def request(self, view: StdioSession, message: Message, on_message: MessageHandler | None,
                      timeout: float | None, sent_id: SentId | None = None) -> Message:  # noqa: ASYNC109
        exchange = partial(self._exchange, view, message, on_message, timeout, sent_id)
        if message.get("method") in SUBSCRIPTION_METHODS:
            return await self._routes.subscription(view, message, exchange)
        if message.get("method") == "logging/setLevel":
            return await self._routes.set_level(view, message, partial(self._exchange, view, on_message=on_message,
                                                                       timeout=timeout, sent_id=sent_id))
        return await exchange()

    async def _exchange(self, view: object, message: Message, on_message: MessageHandler | None,
                        timeout: float | None, sent_id: SentId | None = None) -> Message:  # noqa: ASYNC109
        limit = timeout or self.config.timeout_s
        await self._child.wait_ready(limit)
        pending = self._table.open(message, view, on_message)
        if sent_id is not None:
            sent_id(pending.upstream_id, None, self._negotiated())
        outbound = with_id(message, pending.upstream_id)
        if pending.progress_token is not None:
            # Every session's client may use token 1: upstream the token is unique (the upstream id).
            outbound = with_progress_token(outbound, pending.upstream_id)
        try:
            # asyncio.timeout, not transport.deadlines: the write inside is bounded by the same limit, and the call's
            # own timeout must come first (upstream_timeout), which a sweep up to 50 ms late would not.
            async with asyncio.timeout(limit) as deadline:
                await self._child.write(outbound)
                response = await pending.future
        except TimeoutError as exc:
            if not deadline.expired():
                raise
            self._give_up(pending, "timeout")
            raise GatewayError("upstream_timeout", data={"timeout_s": limit, "upstream": self.name}) from exc
        except StdinStalled:  # its line may reach the child once it reads again: cancelled after it
            self._give_up(pending, "timeout")
            raise
        except asyncio.CancelledError:
            self._give_up(pending, "cancelled")
            raise
        finally:
            self._table.discard(pending)
        return with_id(response, message.get("id"))

    def upstream_id_for(self, view: StdioSession, caller_id: Any) -> int | None:
        return self._table.upstream_id_for(view, caller_id)

    async def detach(self, view: StdioSession) -> None:
        for uri in await self._routes.detach(view):
            # Nobody receives this URI's updates any more; the child need not keep sending them.
            self._spawn(self._unsubscribe_orphan(uri))

    async def _unsubscribe_orphan(self, uri: str) -> None:
        if not self._routes.is_subscribed(uri):  # else another session subscribed since: the child must keep it
            await self._tell_child("resources/unsubscribe", uri)

    async def _tell_child(self, method: str, uri: str) -> None:
        with suppress(GatewayError):  # the child is gone or busy: its subscriptions end with it anyway
            await self._exchange(self, {"jsonrpc": "2.0", "id": None, "method": method, "params": {"uri": uri}},
                                 None, None)

    async def respond(self, view: StdioSession, message: Message) -> None:
        if self._routes.may_answer(view, message):
            await self.write(message)
        else:
            self.log.warning("dropped an answer to server→client request %r: not this session's", message.get("id"))

    async def write(self, message: Message, limit: float | None = None) -> None:
        await self._child.write(message, limit)

    # -- the child's life (ChildEvents) -------------------------------------------------------------

    async def child_ready(self, restarted: bool) -> None:
        self._clock.began(self.on_session_end)
        if restarted:  # a new child, perhaps a new version (npx, uvx): its tools are listed again
            await self._routes.route(TOOLS_CHANGED)
            for uri in self._routes.held_uris():  # what sessions subscribed to, the new child holds again
                self._spawn(self._tell_child("resources/subscribe", uri))

    def child_ending(self, stopping: bool) -> None:
        self._clock.ended(self._negotiated(), None if stopping else "upstream_unavailable")

    def child_gone(self) -> None:
        self._routes.restarted()

    def child_restarting(self) -> None:
        if self.on_restart is not None:
            self.on_restart(self.name)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _cancel_upstream(self, upstream_id: int, reason: str) -> None:
        with suppress(GatewayError):
            await send_own(self.on_notify, cancelled_message(upstream_id, reason), self._child.write)

    def _give_up(self, pending: Pending, reason: str) -> None:
        """Stop awaiting a call; cancel it upstream and fence it in the background (a child that is not
        reading would otherwise hold the caller past its timeout)."""
        self._table.abandon(pending)
        self._spawn(self._cancel_and_fence(pending, reason))

    async def _cancel_and_fence(self, abandoned: Pending, reason: str) -> None:
        # The fence's ping must follow the cancellation on the wire, or its answer proves nothing.
        await self._cancel_upstream(abandoned.upstream_id, reason)
        self._fence.add(abandoned)


class StdioSession:
    """A client session's view of the shared stdio session."""

    def __init__(self, upstream: StdioUpstream, on_message: MessageHandler, *, internal: bool = False) -> None:
        self._up = upstream
        self.on_message = on_message
        self.internal = internal  # the gateway's own session: no client to route anything to
        self._closed = False

    @property
    def initialize_result(self) -> Message:
        return self._up.initialize_result

    async def request(self, message: Message, *, headers: Mapping[str, str] | None = None,
                      on_message: MessageHandler | None = None, timeout: float | None = None,  # noqa: ASYNC109
                      sent_id: SentId | None = None, refresh: HeadersSource | None = None) -> Message:
        # `headers` cannot travel over pipes; trace context reaches stdio servers through params._meta.
        if self._closed:
            raise Unsent("upstream session closed")
        return await self._up.request(self, message, on_message, timeout, sent_id)

    async def notify(self, message: Message, *, headers: Mapping[str, str] | None = None) -> None:
        if message.get("method") == "notifications/cancelled":
            params = dict(message.get("params") or {})
            upstream_id = self._up.upstream_id_for(self, params.get("requestId"))
            if upstream_id is None:
                return
            message = {**message, "params": {**params, "requestId": upstream_id}}
        await self._up.write(message)

    async def respond(self, message: Message) -> None:
        await self._up.respond(self, message)

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await self._up.detach(self)
