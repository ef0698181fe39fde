"""Keeping a stdio upstream's one child running: started, initialized, restarted with back-off, stopped.

The child is restarted with exponential back-off (capped) whenever it exits or closes its stdout;
consecutive failures to start or initialize open the circuit breaker. Writes to its stdin are
bounded, so a child that stopped reading cannot hold every writer. What its session does at each
step of the child's life (listing tools again, subscribing again, timing the session) is the
upstream's (stdio.py), told through `ChildEvents`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Protocol

from gateway import jsonrpc
from gateway.config.model import UpstreamConfig
from gateway.errors import GatewayError
from gateway.transport.base import ConnectParams, Health, Message
from gateway.transport.common import INITIALIZED, CircuitBreaker, Unsent, check_initialize, initialize_message, with_id
from gateway.transport.events import Oversized
from gateway.transport.inflight import InflightTable
from gateway.transport.stdio_fence import StdinStalled
from gateway.transport.stdio_inbound import read_line
from gateway.transport.stdio_process import exit_code, pump_stderr, spawn, terminate

RESTART_BASE_S = 0.1
RESTART_CAP_S = 5.0
STABLE_AFTER_S = 30.0  # a child that lived this long restarts from the shortest back-off again
SPAWN_CANCEL_S = 1.0  # a child cancelled while being created is killed and gone within milliseconds
# The least a new child is given to answer `initialize` (else the upstream's timeout_s, when longer): starting may
# take longer than any call (npx or uvx fetching the package, a JVM), and a child killed at a call's timeout would be
# started again only to be cut off as short, for good.
STARTUP_S = 60.0



def initialize_failure(exc: BaseException) -> str:
    """The health detail of a failed initialize, in the gateway's words: a refusal by its JSON-RPC code, never its
    message or data (the child's own text: "invalid API key <the key>")."""
    if not isinstance(exc, GatewayError) or not str(exc):
        return "initialize timed out"
    refusal = exc.data.get("upstream_error")
    if isinstance(refusal, dict):
        return f"initialize failed: the child refused it (JSON-RPC error {refusal.get('code')!r})"
    return f"initialize failed: {exc.message}"[:200]

class ChildEvents(Protocol):
    """What the upstream sharing the child does as the child comes and goes."""

    async def child_ready(self, restarted: bool) -> None:
        """The child is initialized (`restarted`: it is not the first one)."""

    def child_ending(self, stopping: bool) -> None:
        """The child's MCP session is over (`stopping`: because the upstream stops)."""

    def child_gone(self) -> None:
        """The child is gone and its in-flight requests failed."""

    def child_restarting(self) -> None:
        """A new child is about to be started after the last one ended."""


class StdioChild:
    """The supervised child process of one stdio upstream, and its stdin."""

    def __init__(self, config: UpstreamConfig, table: InflightTable, params: ConnectParams,
                 breaker: CircuitBreaker, dispatch: Callable[[bytes | Oversized], Awaitable[None]], events: ChildEvents,
                 log: logging.Logger, *, grace_s: float, restart_cap_s: float) -> None:
        self.config = config
        self.name = config.name
        self.breaker = breaker
        self.log = log
        self.init_result: Message = {}
        self.restarts = 0
        self._table = table
        self._params = params
        self._dispatch = dispatch  # one stdout line (stdio_inbound.py)
        self._events = events
        self._grace_s = grace_s
        self._restart_cap_s = restart_cap_s
        self._proc: asyncio.subprocess.Process | None = None
        self._ready = asyncio.Event()
        self._write_lock = asyncio.Lock()
        self._supervisor: asyncio.Task[None] | None = None
        self._detail = "not started"
        self._stopping = False
        self._spawning = False  # inside asyncio's create_subprocess_exec (see _end_supervisor)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.returncode is None else None

    async def start(self) -> None:
        if self._supervisor is None:
            self._stopping = False
            self._detail = "starting"
            self._supervisor = asyncio.create_task(self._supervise(), name=f"customs-{self.name}-supervisor")

    async def stop(self) -> None:
        """End the supervisor and the child; `stopped()` once what the upstream still runs has ended too."""
        self._stopping = True
        if self._supervisor is not None:
            await self._end_supervisor(self._supervisor)
            self._supervisor = None
        if self._proc is not None:
            await terminate(self._proc, self._grace_s)

    def stopped(self) -> None:
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
            return Health(False, f"{self.breaker.detail}; last: {self._detail}", self.restarts)
        ready = self._ready.is_set() and self.pid is not None
        return Health(ready, "ok" if ready else self._detail, self.restarts)

    async def wait_ready(self, limit: float) -> None:
        self.breaker.check()
        if self._supervisor is None and not self._stopping:
            await self.start()
        if self._stopping:
            raise Unsent("upstream stopped", data={"upstream": self.name})
        try:
            async with asyncio.timeout(limit):
                await self._ready.wait()
        except TimeoutError as exc:
            raise Unsent(f"upstream process not ready ({self._detail})", data={"upstream": self.name}) from exc

    async def write(self, message: Message, limit: float | None = None) -> None:
        proc = self._proc
        if proc is None or proc.stdin is None or proc.returncode is not None:
            raise Unsent("upstream process is not running", data={"upstream": self.name})
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

    async def restart_stuck(self) -> None:
        """Stop a child that answers nothing; the supervisor fails its calls and starts it again."""
        proc = self._proc
        if proc is not None and not self._stopping:
            await terminate(proc, self._grace_s)

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
            self.restarts += 1
            self._events.child_restarting()
            self.log.warning("restarting upstream %s in %.1fs (restart %d)", self.name, delay, self.restarts)
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
                if reader.done():  # it died before answering: /readyz names its exit code, as for a later crash
                    code = await exit_code(proc, self._grace_s)
                    if code is not None:
                        self._detail = f"initialize failed: child exited with code {code}"
                return
            await self._events.child_ready(self.restarts > 0)
            await reader  # returns when the child closes stdout (exit or crash)
            code = await exit_code(proc, self._grace_s)
            self._detail = (f"child exited with code {code}" if code is not None
                            else "child closed its stdout but kept running; stopped")
            self.log.warning("upstream %s: %s", self.name, self._detail)
        finally:
            self._ready.clear()
            self._events.child_ending(self._stopping)
            reader.cancel()
            await terminate(proc, self._grace_s)
            with suppress(TimeoutError):
                async with asyncio.timeout(1):
                    await stderr  # drain the last stderr lines (e.g. a traceback) into the log
            stderr.cancel()
            await asyncio.gather(reader, stderr, return_exceptions=True)
            self._table.fail_all(GatewayError("upstream_unavailable", "upstream process exited",
                                              data={"upstream": self.name}))
            self._events.child_gone()
            self._proc = None

    async def _initialize(self) -> bool:
        message = initialize_message(0, self._params)
        # Owned by the upstream, like all the gateway's own requests: they make no session look busy.
        pending = self._table.open(message, self._events, None)
        try:
            async with asyncio.timeout(max(self.config.timeout_s, STARTUP_S)):
                await self.write(with_id(message, pending.upstream_id))
                self.init_result = check_initialize(await pending.future)
                await self.write(INITIALIZED)
        except (GatewayError, TimeoutError) as exc:
            self.breaker.failure()
            self._detail = initialize_failure(exc)
            # The child's own words in the log only (redacted there): its refusal may quote the key it was given
            # (env, an option), and the detail goes to /readyz and to agents (upstream_unavailable).
            self.log.error("upstream %s: %s", self.name, f"initialize failed: {exc}"[:200] if str(exc)
                           else self._detail)
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
                line = await read_line(proc.stdout)
                if not line:  # not ready from now on: said so while its exit is waited for (up to grace_s)
                    self._detail = "child closed its stdout"
                    return
                await self._dispatch(line)
        finally:
            # Fail waiters the moment the pipe closes, before the exit status is even collected.
            self._ready.clear()
            self._table.fail_all(GatewayError("upstream_unavailable", "upstream process exited",
                                              data={"upstream": self.name}))
