"""The decision log: one JSON line per decision (OPA style) plus typed event records, to stdout or a file.

Writers never block the event loop: `record_decision` appends the call's facts (`facts_of`: a tuple of
values the call holds) to an in-memory buffer, `event` an encoded line. Everything buffered (at most
FLUSH_INTERVAL_S old) goes, one batch at a time, to the writer process (`log_process.WriterProcess`), which
makes each record (`decision_writer.record_of`), encodes it and writes the batch with a single `write`
(O_APPEND), so lines are never interleaved or torn, even with several gateways appending to one file. The
event loop's share of a record is the tuple and an append; building and encoding it, about as much work
again, is the writer's, on another core. A stream with no descriptor (a test's StringIO) is written by a
thread of this process instead, the same records. `close()` drains the buffer.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from gateway.config import ConfigError
from gateway.config.model import DecisionLogConfig
from gateway.context import NOT_FOUND_ITEM, CallContext
from gateway.preflight import decision_log_problem  # the line config check reports for a path serve cannot use
from gateway.telemetry.decision_writer import FILE_FLAGS, S_TOOL, FileTarget, dumps, line_of, record_of
from gateway.telemetry.log_process import WriterProcess, WriterUnavailable
from gateway.telemetry.span_errors import pattern_redactor
from gateway.telemetry.tracing import api_span_ids
from gateway.timefmt import rfc3339_ms as rfc3339  # record times: UTC, milliseconds, `Z`

log = logging.getLogger("customs.decision_log")

Redactor = Callable[[Any], Any]
DEFAULT_REDACT_KEYS = ("password", "secret", "token", "api_key", "apikey", "authorization")
FLUSH_INTERVAL_S = 0.05  # lines wait at most this long: one write (one thread hop) per batch, not per call
CLOSE_TIMEOUT_S = 10.0  # close: how long the writer process may take to accept and write what is left
MAX_BUFFERED_LINES = 100_000  # past this the writer is hopelessly behind: drop and count, never grow unbounded


def default_redactor(value: Any) -> Any:
    """Fallback when no redactor is given: mask values under secret-looking keys, recursively."""
    if isinstance(value, dict):
        return {k: "[REDACTED]" if isinstance(k, str) and any(s in k.lower() for s in DEFAULT_REDACT_KEYS)
                else default_redactor(v) for k, v in value.items()}
    if isinstance(value, list):
        return [default_redactor(v) for v in value]
    return value


def error_reason(exc: BaseException | None) -> str | None:
    if exc is None:
        return None
    reason = getattr(exc, "reason", None)
    if isinstance(reason, str):
        return reason
    if isinstance(exc, asyncio.CancelledError):
        return "request_cancelled"
    return "internal_error"


def facts_of(ctx: CallContext, *, include_args: bool = False, redactor: Redactor | None = None,
             now: float | None = None, current_ids: Callable[[], tuple[str | None, str | None]] | None = None,
             ) -> tuple[Any, ...]:
    """The facts of a finished call's record (`decision_writer` lays them out and makes the record): only
    values the call already holds, so the event loop's share of a record is this tuple."""
    principal = ctx.principal
    decision = ctx.decision
    trace_id, span_id = (current_ids or api_span_ids)()
    reason = error_reason(ctx.error)
    extra = ctx.extra
    digest = extra.get("args_digest")  # computed already (an approval binds to it): else by the writer
    approval = ctx.approval
    args = ((redactor or default_redactor)(ctx.args),) if include_args else None
    snapshot = extra.get("authz_input")
    facts = snapshot(ctx) if callable(snapshot) else None
    tool = ctx.tool.name if ctx.tool else None
    missing = extra.get(NOT_FOUND_ITEM) if reason is not None else None
    # Names the agent chose: a URI may carry a token, and so may the name of any call that failed, as its span
    # shows it: a prompt or tool denied before its upstream's list was known may be made up; only not_found ones are
    # marked `missing`.
    if reason is not None or ctx.method == "resources/read":
        tool, missing, facts = _redacted_names(redactor, tool, missing, facts)
    return (
        ctx.decision_id, ctx.started_wall, trace_id or ctx.trace_id, span_id or extra.get("span_id"),
        principal.id, principal.issuer, principal.chain_ids, principal.tenant, ctx.session_id, ctx.task_id,
        ctx.method, ctx.upstream, tool,
        digest, ctx.args if digest is None else None,
        decision.outcome if decision else None, decision.policy_ids if decision else (),
        decision.policy_version if decision else None, decision.eval_us if decision else None,
        ctx.credential_mode, reason, (now if now is not None else time.perf_counter()) - ctx.started,
        missing,
        reason is None and isinstance(ctx.result, dict) and ctx.result.get("isError") is True,  # is_tool_error
        decision.shadow_outcome if decision else None, decision.errors if decision else None,
        (approval.id, approval.outcome, approval.decided_by, approval.comment, approval.waited_s)
        if approval is not None else None,
        args,
        facts,
    )


def _redacted_names(redactor: Redactor | None, tool: Any, missing: Any,
                    facts: tuple[Any, ...] | None) -> tuple[Any, Any, tuple[Any, ...] | None]:
    """A resource URI or a name that exists nowhere, as spans show them (docs/tracing.md): through the secret
    redactor, in `tool` and in the replay snapshot's tool name (a policy never names a URI's token)."""
    redact = redactor or pattern_redactor()  # a log given no redactor (an embedding program's, a test's)
    if isinstance(tool, str):
        clean = redact(tool)
        if clean != tool and facts is not None:
            # The snapshot's tool: (upstream, name, labels...) at S_TOOL (decision_writer); the rest as it was.
            facts = (*facts[:S_TOOL], (facts[S_TOOL][0], clean, *facts[S_TOOL][2:]), *facts[S_TOOL + 1:])
        tool = clean
    if isinstance(missing, str):
        missing = redact(missing)
    return tool, missing, facts


def decision_record(ctx: CallContext, *, include_args: bool = False, redactor: Redactor | None = None,
                    now: float | None = None, current_ids: Callable[[], tuple[str | None, str | None]] | None = None,
                    ) -> dict[str, Any]:
    """The decision log record of a finished call (see docs/decision-log.md for the fields)."""
    return record_of(facts_of(ctx, include_args=include_args, redactor=redactor, now=now, current_ids=current_ids))


class DecisionLog:
    """Owner of the decision log sink (start/close).

    Records queued before `start` are written once it runs; records after `close` are dropped and
    counted (`dropped`), since the sink is gone. A file, or a stdout with a descriptor, is written by the
    writer process (`log_process.WriterProcess`); a stream with no descriptor (a test's, a CLI's) by a
    thread of this process.
    """

    def __init__(self, config: DecisionLogConfig, redactor: Redactor | None = None, *,
                 stream: TextIO | None = None, on_drop: Callable[[], None] | None = None,
                 current_ids: Callable[[], tuple[str | None, str | None]] | None = None) -> None:
        self.config = config
        self._current_ids = current_ids or api_span_ids  # (trace id, span id) of the span current now
        self.include_args = config.include_args
        self._redactor = redactor
        self._stream = stream
        self._on_drop = on_drop
        self._items: list[Any] = []  # facts tuples and encoded event lines, in order
        self._lock = threading.Lock()  # the buffer and `dropped`, shared by the loop and the writer thread
        self._wake = threading.Event()  # set by the first item of a batch, and by close()
        self._close_requested = threading.Event()
        self._writer: threading.Thread | None = None  # the thread sink
        self._process: WriterProcess | None = None  # the process sink
        self._shipper: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()  # the process sink's wake-up: set by the first item of a batch, and by close()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._file: FileTarget | None = None
        self._closing = False
        self.dropped = 0

    async def start(self) -> None:
        fd, path = None, None
        if self.config.path is not None:
            path = Path(self.config.path)
            if (problem := decision_log_problem(path)) is not None:  # mkdir would say "File exists" below a file
                raise ConfigError([problem], "decision_log")
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                fd = await asyncio.to_thread(os.open, path, FILE_FLAGS, 0o640)
            except OSError as exc:  # config check cannot try this (a write): serve refuses with the config key
                raise ConfigError([f"decision_log.path: {path}: cannot open it for appending "
                                   f"({exc.strerror or exc}: {exc.filename})"], "decision_log") from exc
            self._file = FileTarget(fd, str(path))
        elif self._stream is None:
            self._stream = sys.stdout  # looked up now, not at import (tests and CLIs swap stdout)
            fd = _descriptor(self._stream)
        self._closing = False
        self._close_requested.clear()
        self._loop = asyncio.get_running_loop()
        if fd is not None and await self._start_process(fd, None if path is None else str(path)):
            return
        self._start_thread()

    def _start_thread(self) -> None:
        self._writer = threading.Thread(target=self._run, name="decision-log-writer", daemon=True)
        self._writer.start()
        self._wake.set()  # records queued before start

    async def _start_process(self, fd: int, path: str | None) -> bool:
        process = WriterProcess(fd, path, self._lost)
        try:
            await process.start()
        except OSError as exc:  # no process to be had: this process writes, as it always could
            log.warning("decision log writer process not started (%s): writing from the gateway's process", exc)
            return False
        self._process = process
        self._ready = asyncio.Event()  # this loop's (a log may be started again, in another loop)
        self._shipper = asyncio.create_task(self._ship(), name="decision-log-shipper")
        if self._items:  # records queued before start
            self._ready.set()
        return True

    async def flush(self, timeout_s: float = 10.0) -> bool:
        """Write everything recorded so far (the process sink; the thread sink writes within FLUSH_INTERVAL_S)."""
        process = self._process
        if process is None:
            return False
        await self._send(self._take())
        return await process.flush(timeout_s)

    async def close(self, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        """Write everything buffered, then release the file. A writer process that cannot take it all within
        `timeout_s` (nothing reads its stdout) is stopped and what it did not write counted lost."""
        self._closing = True
        self._close_requested.set()
        self._wake.set()
        stuck = False
        if self._process is not None:
            stuck = not await self._ship_rest(timeout_s)
            process, self._process = self._process, None
            await process.close(0.0 if stuck else timeout_s)  # stuck: stopped now, its loss counted
        if stuck and self._items:  # recorded meanwhile, for an output that takes nothing
            self._lost(len(self._take()))
        if self._writer is not None:
            await asyncio.to_thread(self._writer.join)
            self._writer = None
        if self._items:  # queued before start and never started, or raced past the writer's last batch
            await asyncio.to_thread(self._write_batch, self._take())
        if self._file is not None:
            file, self._file = self._file, None
            await asyncio.to_thread(os.close, file.fd)

    async def _ship_rest(self, timeout_s: float) -> bool:
        """Hand the writer process what is left; False when it took nothing more for `timeout_s`: its output
        blocked (a paused pager, a stalled shipper on stdout), a stop must not wait for that reader."""
        try:
            async with asyncio.timeout(timeout_s):
                if self._shipper is not None:
                    self._loop_wake()
                    await asyncio.gather(self._shipper, return_exceptions=True)
                await self._send(self._take())
            return True
        except TimeoutError:
            log.error("decision log writer process took nothing for %.1f s (is its output read?): stopping it",
                      timeout_s)
            return False
        finally:
            self._shipper = None

    # -- records -----------------------------------------------------------------------------------

    def record_decision(self, ctx: CallContext) -> None:
        """Queue the record of a finished call: its facts, made a record by the writer."""
        self._append(facts_of(ctx, include_args=self.include_args, redactor=self._redactor,
                              current_ids=self._current_ids))

    def event(self, type: str, **fields: Any) -> dict[str, Any]:
        """Queue an event record (approval state change, revocation, quarantine, policy reload …)."""
        trace_id, span_id = self._current_ids()
        record: dict[str, Any] = {"type": type, "time": rfc3339(time.time())}
        if trace_id is not None:
            record.update(trace_id=trace_id, span_id=span_id)
        record.update(fields)
        self._append(dumps(record))
        return record

    def _append(self, item: Any) -> None:
        if len(self._items) >= MAX_BUFFERED_LINES or (
                self._closing and self._writer is None and self._process is None and self._shipper is None):
            self._lost(1)
            return
        with self._lock:
            self._items.append(item)
            first = len(self._items) == 1
        if first:
            if self._shipper is not None:
                self._loop_wake()
            else:
                self._wake.set()

    def _lost(self, count: int) -> None:
        with self._lock:
            self.dropped += count
        if self._on_drop is not None:
            for _ in range(count):
                self._on_drop()

    def _take(self) -> list[Any]:
        with self._lock:
            items, self._items = self._items, []
        return items

    # -- process sink ------------------------------------------------------------------------------

    def _loop_wake(self) -> None:
        # Once per batch; thread-safe, since an event record may come from a thread.
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._ready.set)

    async def _ship(self) -> None:
        ready = self._ready
        while True:
            await ready.wait()
            if not self._closing:
                await asyncio.sleep(FLUSH_INTERVAL_S)  # a batching delay: one write (one frame) per batch
            ready.clear()  # before taking: an item appended after the take sets it again
            await self._send(self._take())
            if self._closing or self._process is None:  # closed, or the thread sink writes from now on
                return

    async def _send(self, items: list[Any]) -> None:
        if not items:
            return
        process = self._process
        try:
            if process is None:
                raise ConnectionResetError("no decision log writer process")
            await process.send(items)
        except WriterUnavailable as exc:
            await self._to_thread(process, items, exc)
        except (ConnectionError, OSError) as exc:
            log.error("decision log write failed (%d records lost): %s", len(items), exc)
            self._lost(len(items))
        except asyncio.CancelledError:  # close gave up on a writer that took nothing (`_ship_rest`)
            log.error("decision log writer process did not take %d records: lost", len(items))
            self._lost(len(items))
            raise

    async def _to_thread(self, process: WriterProcess | None, items: list[Any], exc: OSError) -> None:
        """No writer process can be had any more (the interpreter replaced by an upgrade, no descriptors or memory
        left): this process writes from now on, this batch first, as it does when none could be had at start."""
        log.error("decision log writer process cannot be started again (%s): writing from the gateway's process", exc)
        self._process = None
        self._shipper = None  # (the task running this: it returns once this batch is handed over)
        if process is not None:
            await process.close(0.0)
        with self._lock:
            self._items[:0] = items
        self._start_thread()

    # -- thread sink -------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            self._wake.wait()
            if not self._closing:
                self._close_requested.wait(FLUSH_INTERVAL_S)  # a batching delay, cut short by close()
            self._wake.clear()  # before taking: an item appended after the take sets it again
            items = self._take()
            if items:
                self._write_batch(items)
            if self._closing and not self._items:
                return

    def _write_batch(self, items: list[Any]) -> None:
        chunk = b"".join(line_of(item) for item in items)
        try:
            if self._file is not None:
                self._file.write(chunk)
                return
            stream = self._stream or sys.stdout
            stream.write(chunk.decode("utf-8"))
            stream.flush()
        except (OSError, ValueError) as exc:  # ValueError: a stream closed under the log
            lost = len(items) - getattr(exc, "lines", 0)  # ShortWrite: the records before it are written
            log.error("decision log write failed (%d records lost): %s", lost, exc)
            self._lost(lost)


def _descriptor(stream: TextIO) -> int | None:
    """The descriptor under a stream (flushed first: the writer process writes to it directly), if any."""
    try:
        fd = stream.fileno()
        stream.flush()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both OSError and ValueError
        return None
    return fd
