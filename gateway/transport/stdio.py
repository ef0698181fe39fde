"""stdio upstreams: one supervised child process per upstream, newline-delimited JSON-RPC on its pipes.

The child is initialized once; every `connect()` returns a lightweight view that multiplexes the
one shared MCP session (upstream ids come from one counter, so views never collide; progress tokens
are replaced per request, and stdio_routes.py decides which view gets what the child sends). When the
child dies every in-flight request fails at once with upstream_unavailable, and the supervisor
restarts it with exponential back-off (capped); consecutive failures to start or initialize open
the circuit breaker. A child that stops answering (its fence pings, stdio_fence.py) is stopped and
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

from gateway import jsonrpc
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
    INITIALIZED,
    TOOLS_CHANGED,
    CircuitBreaker,
    SessionClock,
    cancelled_message,
    check_initialize,
    initialize_message,
    send_own,
    with_id,
)
from gateway.transport.events import MAX_MESSAGE_BYTES
from gateway.transport.inflight import InflightTable, Pending, with_progress_token
from gateway.transport.stdio_fence import STUCK_AFTER, Fence, StdinStalled
from gateway.transport.stdio_inbound import StdoutReader
from gateway.transport.stdio_process import exit_code, pump_stderr, spawn, terminate
from gateway.transport.stdio_routes import SUBSCRIPTION_METHODS, StdioRoutes

# The gateway relays server→client requests to the agent, so it declares what agents commonly offer.
GATEWAY_CAPABILITIES: Mapping[str, Any] = {"sampling": {}, "elicitation": {}}
RESTART_BASE_S = 0.1
RESTART_CAP_S = 5.0
STABLE_AFTER_S = 30.0  # a child that lived this long restarts from the shortest back-off again
SPAWN_CANCEL_S = 1.0  # a child cancelled while being created is killed and gone within milliseconds


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
        self.breaker = CircuitBreaker(breaker_threshold, breaker_cooldown_s)
        self.log = logging.getLogger(f"customs.upstream.{config.name}")
        self._params = ConnectParams(DEFAULT_UPSTREAM_PROTOCOL, None, capabilities)
        self._grace_s = grace_s
        self._restart_cap_s = restart_cap_s
        self._table = InflightTable()
        self._routes = StdioRoutes(self._table, self.write, self, self.log)
        self._stdout = StdoutReader(self._table, self._routes.route, self._negotiated, self.log)
        # The fence's ping may wait as long for the pipe as for its answer before the child counts as stuck.
        fence_write = partial(self.write, limit=config.timeout_s * STUCK_AFTER)
        self._fence = Fence(self._table, fence_write, self, config.timeout_s, self._spawn, self._restart_stuck,
                            self.log, self.name)
        self._proc: asyncio.subprocess.Process | None = None
        self._ready = asyncio.Event()
        self._write_lock = asyncio.Lock()
        self._supervisor: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._init_result: Message = {}
        self._restarts = 0
        self._detail = "not started"
        self._stopping = False
        self._spawning = False  # inside asyncio's create_subprocess_exec (see _end_supervisor)

    @property
    def pid(self) -> int | None:
        """The running child's pid (for operators and tests)."""
        return self._proc.pid if self._proc is not None and self._proc.returncode is None else None

    @property
    def initialize_result(self) -> Message:
        return self._init_result

    def _negotiated(self) -> str:
        version = self._init_result.get("protocolVersion")
        return version if isinstance(version, str) else self._params.protocol_version

    async def start(self) -> None:
        if self._supervisor is None:
            self._stopping = False
            self._detail = "starting"
            self._supervisor = asyncio.create_task(self._supervise(), name=f"customs-{self.name}-supervisor")

    async def stop(self) -> None:
        self._stopping = True
        if self._supervisor is not None:
            await self._end_supervisor(self._supervisor)
            self._supervisor = None
        if self._proc is not None:
            await terminate(self._proc, self._grace_s)
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        self._table.fail_all(GatewayError("upstream_unavailable", "upstream stopped", data={"upstream": self.name}))
        self._ready.clear()
        self._detail = "stopped"

    async def _end_supervisor(self, task: asyncio.Task[None]) -> None:
        """Cancel the supervisor and wait for it, bounded: its own clean-up (terminate()) takes at most
        3 x grace_s. One cancelled from outside while asyncio was still creating the child (asyncio.run's
        teardown cancels every task, asyncio's pipe-connecting one too) waits, inside asyncio, for the exit
        of the child asyncio killed, which is only reported once pipes that were never connected close:
        forever (CPython 3.11). Nothing is left to clean up there, so it is cancelled again."""
        limit = 3 * self._grace_s + 2.0
        for _ in range(3):
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=SPAWN_CANCEL_S if self._spawning else limit)
            if done:
                return
        self.log.error("upstream %s: its supervisor did not stop; left behind", self.name)

    def health(self) -> Health:
        if self.breaker.is_open:  # with why the child fails: a crash loop opens the circuit within a second
            return Health(False, f"{self.breaker.detail}; last: {self._detail}", self._restarts)
        ready = self._ready.is_set() and self.pid is not None
        return Health(ready, "ok" if ready else self._detail, self._restarts)

    async def probe(self) -> Health:
        """Ready when the child is alive and initialized (no traffic is sent)."""
        return self.health()

    async def connect(self, params: ConnectParams, on_message: MessageHandler,
                      headers: Mapping[str, str] | None = None, *,
                      credentials: HeadersSource | None = None) -> StdioSession:
        # Headers and credentials have no meaning over a child's pipes: both are accepted and unused.
        await self._wait_ready(self.config.timeout_s)
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
        await self._wait_ready(limit)
        pending = self._table.open(message, view, on_message)
        if sent_id is not None:
            sent_id(pending.upstream_id, None, self._negotiated())
        outbound = with_id(message, pending.upstream_id)
        if pending.progress_token is not None:
            # Every session's client may use token 1: upstream the token is unique (the upstream id).
            outbound = with_progress_token(outbound, pending.upstream_id)
        try:
            async with asyncio.timeout(limit) as deadline:
                await self.write(outbound)
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
        proc = self._proc
        if proc is None or proc.stdin is None or proc.returncode is not None:
            raise GatewayError("upstream_unavailable", "upstream process is not running", data={"upstream": self.name})
        line = jsonrpc.dumps(message) + b"\n"
        try:
            # Bounded: a child that stopped reading fills its stdin pipe, and every writer would wait behind
            # the lock for good. A line taken into the buffer is sent whole once the child reads again.
            async with asyncio.timeout(limit or self.config.timeout_s), self._write_lock:
                proc.stdin.write(line)
                await proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise GatewayError("upstream_unavailable", "upstream process went away",
                               data={"upstream": self.name}) from exc
        except TimeoutError as exc:
            raise StdinStalled(self.name) from exc

    # -- supervision ------------------------------------------------------------------------------

    async def _wait_ready(self, limit: float) -> None:
        self.breaker.check()
        if self._supervisor is None and not self._stopping:
            await self.start()
        if self._stopping:
            raise GatewayError("upstream_unavailable", "upstream stopped", data={"upstream": self.name})
        try:
            async with asyncio.timeout(limit):
                await self._ready.wait()
        except TimeoutError as exc:
            raise GatewayError("upstream_unavailable", f"upstream process not ready ({self._detail})",
                               data={"upstream": self.name}) from exc

    async def _supervise(self) -> None:
        loop = asyncio.get_running_loop()
        attempt = 0
        while not self._stopping:
            started = loop.time()
            try:
                await self._run_child()
            except Exception as exc:  # the command could not be started at all (or a bug: keep supervising)
                self.breaker.failure()
                self._detail = f"could not start: {type(exc).__name__}: {exc}"[:200]
                self.log.error("upstream %s %s", self.name, self._detail)
            if self._stopping:
                return
            attempt = 0 if loop.time() - started > STABLE_AFTER_S else attempt + 1
            delay = min(self._restart_cap_s, RESTART_BASE_S * 2 ** max(attempt - 1, 0))
            self._restarts += 1
            if self.on_restart is not None:
                self.on_restart(self.name)
            self.log.warning("restarting upstream %s in %.1fs (restart %d)", self.name, delay, self._restarts)
            await asyncio.sleep(delay)  # restart back-off, not synchronisation

    async def _run_child(self) -> None:
        self._spawning = True
        try:
            proc = await spawn(self.config)
        finally:
            self._spawning = False
        self._proc = proc
        self._detail = "initializing"
        stderr = asyncio.create_task(pump_stderr(proc, self.log))
        reader = asyncio.create_task(self._read_stdout(proc))
        try:
            if not await self._initialize():
                return
            self._clock.began(self.on_session_end)
            if self._restarts:  # a new child, perhaps a new version (npx, uvx): its tools are listed again
                await self._routes.route(TOOLS_CHANGED)
                for uri in self._routes.held_uris():  # what sessions subscribed to, the new child holds again
                    self._spawn(self._tell_child("resources/subscribe", uri))
            await reader  # returns when the child closes stdout (exit or crash)
            code = await exit_code(proc, self._grace_s)
            self._detail = (f"child exited with code {code}" if code is not None
                            else "child closed its stdout but kept running; stopped")
            self.log.warning("upstream %s: %s", self.name, self._detail)
        finally:
            self._ready.clear()
            self._clock.ended(self._negotiated(), None if self._stopping else "upstream_unavailable")
            reader.cancel()
            await terminate(proc, self._grace_s)
            with suppress(TimeoutError):
                async with asyncio.timeout(1):
                    await stderr  # drain the last stderr lines (e.g. a traceback) into the log
            stderr.cancel()
            await asyncio.gather(reader, stderr, return_exceptions=True)
            self._table.fail_all(GatewayError("upstream_unavailable", "upstream process exited",
                                              data={"upstream": self.name}))
            self._routes.restarted()
            self._proc = None

    async def _initialize(self) -> bool:
        message = initialize_message(0, self._params)
        pending = self._table.open(message, self, None)
        try:
            async with asyncio.timeout(self.config.timeout_s):
                await self.write(with_id(message, pending.upstream_id))
                self._init_result = check_initialize(await pending.future)
                await self.write(INITIALIZED)
        except (GatewayError, TimeoutError) as exc:
            self.breaker.failure()
            self._detail = f"initialize failed: {exc}"[:200] if str(exc) else "initialize timed out"
            self.log.error("upstream %s: %s", self.name, self._detail)
            return False
        finally:
            self._table.discard(pending)
        self.breaker.success()
        self._detail = "ok"
        self._ready.set()
        return True

    async def _read_stdout(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        try:
            while True:
                try:
                    line = await proc.stdout.readline()
                except ValueError:
                    self.log.error("upstream %s sent a message over %d bytes; dropped", self.name, MAX_MESSAGE_BYTES)
                    continue
                if not line:
                    return
                await self._stdout.dispatch(line)
        finally:
            # Fail waiters the moment the pipe closes, before the exit status is even collected.
            self._ready.clear()
            self._table.fail_all(GatewayError("upstream_unavailable", "upstream process exited",
                                              data={"upstream": self.name}))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _cancel_upstream(self, upstream_id: int, reason: str) -> None:
        with suppress(GatewayError):
            await send_own(self.on_notify, cancelled_message(upstream_id, reason), self.write)

    def _give_up(self, pending: Pending, reason: str) -> None:
        """Stop awaiting a call; cancel it upstream and fence it in the background (a child that is not
        reading would otherwise hold the caller past its timeout)."""
        self._table.abandon(pending)
        self._spawn(self._cancel_and_fence(pending, reason))

    async def _cancel_and_fence(self, abandoned: Pending, reason: str) -> None:
        # The fence's ping must follow the cancellation on the wire, or its answer proves nothing.
        await self._cancel_upstream(abandoned.upstream_id, reason)
        self._fence.add(abandoned)

    async def _restart_stuck(self) -> None:
        """Stop a child that answers nothing; the supervisor fails its calls and starts it again."""
        proc = self._proc
        if proc is not None and not self._stopping:
            await terminate(proc, self._grace_s)


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
            raise GatewayError("upstream_unavailable", "upstream session closed")
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
