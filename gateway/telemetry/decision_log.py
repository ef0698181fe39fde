"""The decision log: one JSON line per decision (OPA style) plus typed event records, to stdout or a file.

Writers never block the event loop: `record_decision` / `event` serialise the record and append
the line to an in-memory buffer; one writer thread, owned by the log (started by `start`, joined by
`close`), moves everything buffered (at most FLUSH_INTERVAL_S old) to the file with a single `write`
per batch (O_APPEND), so lines are never interleaved or torn, even with several gateways appending to
one file. The loop's share of a record is one append under a lock: no task, timer or future per
batch, and the thread wakes the loop for nothing. `close()` drains the buffer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TextIO

import orjson

from gateway.config import ConfigError
from gateway.config.model import DecisionLogConfig
from gateway.context import NOT_FOUND_ITEM, CallContext
from gateway.telemetry.span_errors import is_tool_error
from gateway.telemetry.tracing import api_span_ids
from gateway.timefmt import rfc3339_ms as rfc3339  # record times: UTC, milliseconds, `Z`

log = logging.getLogger("customs.decision_log")

Redactor = Callable[[Any], Any]
DEFAULT_REDACT_KEYS = ("password", "secret", "token", "api_key", "apikey", "authorization")
FLUSH_INTERVAL_S = 0.05  # lines wait at most this long: one write (one thread hop) per batch, not per call
_FILE_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT
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


def decision_record(ctx: CallContext, *, include_args: bool = False, redactor: Redactor | None = None,
                    now: float | None = None, current_ids: Callable[[], tuple[str | None, str | None]] | None = None,
                    ) -> dict[str, Any]:
    """The decision log record of a finished call (see docs/decision-log.md for the fields)."""
    principal = ctx.principal
    decision = ctx.decision
    trace_id, span_id = (current_ids or api_span_ids)()
    reason = error_reason(ctx.error)
    record: dict[str, Any] = {
        "type": "decision",
        "decision_id": ctx.decision_id,
        "time": rfc3339(ctx.started_wall),
        "trace_id": trace_id or ctx.trace_id,
        "span_id": span_id or ctx.extra.get("span_id"),
        "principal": principal.id,
        "issuer": principal.issuer,
        "chain": principal.chain_ids,
        "tenant": principal.tenant,
        "session_id": ctx.session_id,
        "task_id": ctx.task_id,
        "method": ctx.method,
        "upstream": ctx.upstream,
        "tool": ctx.tool.name if ctx.tool else None,
        "args_digest": ctx.digest,
        "decision": decision.outcome if decision else None,
        "policy_ids": list(decision.policy_ids) if decision else [],
        "policy_version": decision.policy_version if decision else None,
        "eval_us": round(decision.eval_us, 1) if decision else None,
        "credential_mode": ctx.credential_mode,
        "outcome": "ok" if reason is None else "error",
        "duration_ms": round(((now if now is not None else time.perf_counter()) - ctx.started) * 1000, 3),
    }
    if reason is not None:
        record["reason"] = reason
        missing = ctx.extra.get(NOT_FOUND_ITEM)
        if missing is not None:
            # No such item: the agent heard a denial's answer, the auditor learns that nothing by that name exists
            # (probing), which a policy denial (`policy_ids`, `policy_version`) is not.
            record.update(decision="deny", not_found=True, tool=record["tool"] or missing)
    elif is_tool_error(ctx.result):
        record["reason"] = "tool_error"
    if decision is not None and decision.shadow_outcome is not None:
        record["shadow_decision"] = decision.shadow_outcome
    if decision is not None and decision.errors:
        record["policy_errors"] = list(decision.errors)
    if ctx.approval is not None:
        approval = ctx.approval
        record["approval"] = {"id": approval.id, "outcome": approval.outcome,
                              "decided_by": list(approval.decided_by), "comment": approval.comment,
                              "wait_s": round(approval.waited_s, 3)}
    if include_args:
        record["args"] = (redactor or default_redactor)(ctx.args)
    snapshot = ctx.extra.get("authz_input")
    if callable(snapshot):
        # What `customs policy replay` re-decides from; argument values only where config allows.
        facts = snapshot(ctx, include_args)
        if include_args and facts.get("args") is not None:
            facts["args"] = (redactor or default_redactor)(facts["args"])
        record["authz_input"] = facts
    return record


def _dumps(record: Mapping[str, Any]) -> bytes:
    """One JSON line (UTF-8). default=str: a stray non-JSON value (datetime, Path) must not lose the record."""
    try:
        # orjson: ~10x faster than json.dumps for a record, the same JSON for what records hold.
        return orjson.dumps(record, default=str, option=orjson.OPT_APPEND_NEWLINE)
    except TypeError:  # what orjson refuses (integers past 64 bits, lone surrogates): the stdlib writes it
        text = json.dumps(record, separators=(",", ":"), ensure_ascii=False, default=str) + "\n"
        return text.encode("utf-8", "backslashreplace")


class DecisionLog:
    """Owner of the decision log sink (start/close).

    Records queued before `start` are written once it runs; records after `close` are dropped and
    counted (`dropped`), since the sink is gone.
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
        self._lines: list[bytes] = []
        self._lock = threading.Lock()  # the buffer and `dropped`, shared by the loop and the writer thread
        self._wake = threading.Event()  # set by the first line of a batch, and by close()
        self._close_requested = threading.Event()
        self._writer: threading.Thread | None = None
        self._fd: int | None = None
        self._closing = False
        self.dropped = 0

    async def start(self) -> None:
        if self.config.path is not None:
            path = Path(self.config.path)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                self._fd = await asyncio.to_thread(os.open, path, _FILE_FLAGS, 0o640)
            except OSError as exc:  # config check cannot try this (a write): serve refuses with the config key
                raise ConfigError([f"decision_log.path: {path}: cannot open it for appending "
                                   f"({exc.strerror or exc}: {exc.filename})"], "decision_log") from exc
        elif self._stream is None:
            self._stream = sys.stdout  # looked up now, not at import (tests and CLIs swap stdout)
        self._closing = False
        self._close_requested.clear()
        self._writer = threading.Thread(target=self._run, name="decision-log-writer", daemon=True)
        self._writer.start()

    async def close(self) -> None:
        """Write everything buffered, then release the file."""
        self._closing = True
        self._close_requested.set()
        self._wake.set()
        if self._writer is not None:
            await asyncio.to_thread(self._writer.join)
            self._writer = None
        if self._lines:  # queued before start and never started, or raced past the writer's last batch
            await asyncio.to_thread(self._write_batch, self._take())
        if self._fd is not None:
            fd, self._fd = self._fd, None
            await asyncio.to_thread(os.close, fd)

    # -- records -----------------------------------------------------------------------------------

    def record_decision(self, ctx: CallContext) -> dict[str, Any]:
        """Queue the record of a finished call; returns it (the caller may reuse it)."""
        record = decision_record(ctx, include_args=self.include_args, redactor=self._redactor,
                                 current_ids=self._current_ids)
        self._append(_dumps(record))
        return record

    def event(self, type: str, **fields: Any) -> dict[str, Any]:
        """Queue an event record (approval state change, revocation, quarantine, policy reload …)."""
        trace_id, span_id = self._current_ids()
        record: dict[str, Any] = {"type": type, "time": rfc3339(time.time())}
        if trace_id is not None:
            record.update(trace_id=trace_id, span_id=span_id)
        record.update(fields)
        self._append(_dumps(record))
        return record

    def _append(self, line: bytes) -> None:
        if len(self._lines) >= MAX_BUFFERED_LINES or (self._closing and self._writer is None):
            with self._lock:
                self.dropped += 1
            if self._on_drop is not None:
                self._on_drop()
            return
        with self._lock:
            self._lines.append(line)
            first = len(self._lines) == 1
        if first:
            self._wake.set()

    # -- writer thread -----------------------------------------------------------------------------

    def _take(self) -> bytes:
        with self._lock:
            lines, self._lines = self._lines, []
        return b"".join(lines)

    def _run(self) -> None:
        while True:
            self._wake.wait()
            if not self._closing:
                self._close_requested.wait(FLUSH_INTERVAL_S)  # a batching delay, cut short by close()
            self._wake.clear()  # before taking: a line appended after the take sets it again
            chunk = self._take()
            if chunk:
                self._write_batch(chunk)
            if self._closing and not self._lines:
                return

    def _write_batch(self, chunk: bytes) -> None:
        try:
            self._write(chunk)
        except (OSError, ValueError) as exc:  # ValueError: a stream closed under the log
            log.error("decision log write failed (%d bytes lost): %s", len(chunk), exc)
            with self._lock:
                self.dropped += chunk.count(b"\n")

    def _write(self, chunk: bytes) -> None:
        if self._fd is not None:
            fd = self._reopened_if_rotated(self._fd)
            view = memoryview(chunk)
            while view:  # a regular file takes the whole O_APPEND write; loop only for the pathological case
                written = os.write(fd, view)
                view = view[written:]
            return
        stream = self._stream or sys.stdout
        stream.write(chunk.decode("utf-8"))
        stream.flush()

    def _reopened_if_rotated(self, fd: int) -> int:
        """The descriptor for the configured path: logrotate (its default `create` mode) moves the file away or
        deletes it, and the log would go on writing into the rotated file, or into none, while the path an
        operator reads stays empty. As logging's WatchedFileHandler: one stat per batch, in this thread."""
        path = self.config.path
        assert path is not None  # a file descriptor comes from a path
        try:
            now, ours = os.stat(path), os.fstat(fd)
            if (now.st_dev, now.st_ino) == (ours.st_dev, ours.st_ino):
                return fd
        except FileNotFoundError:
            pass
        try:
            new = os.open(path, _FILE_FLAGS, 0o640)
        except OSError as exc:  # keep writing where we can rather than lose the records
            log.warning("decision log %s moved away and cannot be opened again (%s): still writing to the old file",
                        path, exc.strerror or exc)
            return fd
        self._fd = new
        os.close(fd)
        log.info("decision log %s was moved away or deleted: reopened", path)
        return new
