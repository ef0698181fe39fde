"""Decision-log lines from a call's facts, and the writer process that makes and writes them.

The event loop takes a finished call's facts (`decision_log.facts_of`: a plain tuple of values the call
already holds, laid out below); what turns them into a record (times as text, the arguments' digest, the
replay snapshot, JSON) and writes it costs more than taking them, and is done here: in the writer process
(`python -m gateway.telemetry.decision_writer`, fed marshalled batches on its stdin by
`log_process.WriterProcess`), or, for a stream with no file descriptor, in the log's writer thread. One
definition of the record serves both, and `decision_log.decision_record(ctx)` too.

This module imports nothing heavy (no aiohttp, OpenTelemetry, cedarpy): the writer process starts with it
alone, in a few tens of milliseconds.
"""

from __future__ import annotations

import json
import logging
import marshal
import os
import select
import signal
import struct
import sys
from typing import Any, BinaryIO

import orjson

from gateway.context import args_digest
from gateway.telemetry.child_pipe import settle_heap
from gateway.timefmt import iso_utc, rfc3339_ms

log = logging.getLogger("customs.decision_log")

FILE_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT
LEVEL_ENV = "CUSTOMS_DECISION_LOG_LEVEL"  # the gateway's level for this log (a number), so the child logs as it
FRAME = struct.Struct("!I")  # a batch on the writer's stdin: its length, then marshal.dumps(list of items)

# The facts of one decision record (a tuple, so marshal carries it; indices below). An item of a batch is
# either such a tuple or `bytes`, a line already encoded (event records).
(DECISION_ID, STARTED_WALL, TRACE_ID, SPAN_ID, PRINCIPAL, ISSUER, CHAIN, TENANT, SESSION_ID, TASK_ID, METHOD,
 UPSTREAM, TOOL, DIGEST, DIGEST_ARGS, OUTCOME, POLICY_IDS, POLICY_VERSION, EVAL_US, CREDENTIAL_MODE, REASON,
 DURATION_S, MISSING, TOOL_ERROR, SHADOW, POLICY_ERRORS, APPROVAL, ARGS, SNAPSHOT) = range(29)
FACTS_LEN = 29
# The replay snapshot's facts (`authz.record.snapshot_facts`); its arguments come from ARGS.
(S_ACTION, S_PRINCIPAL, S_TOOL, S_TRUNCATED, S_ENVIRONMENT, S_SECRET, S_TASK, S_DECIDED_AT, S_APPROVED) = range(9)
TOOL_FIELDS = ("upstream", "name", "read_only", "destructive", "idempotent", "open_world", "sensitivity", "leaves_org")


def record_of(facts: tuple[Any, ...]) -> dict[str, Any]:
    """The decision log record (docs/decision-log.md) of one call's facts."""
    reason = facts[REASON]
    decided = facts[OUTCOME] is not None
    digest = facts[DIGEST]
    record: dict[str, Any] = {
        "type": "decision",
        "decision_id": facts[DECISION_ID],
        "time": rfc3339_ms(facts[STARTED_WALL]),
        "trace_id": facts[TRACE_ID],
        "span_id": facts[SPAN_ID],
        "principal": facts[PRINCIPAL],
        "issuer": facts[ISSUER],
        "chain": list(facts[CHAIN]),
        "tenant": facts[TENANT],
        "session_id": facts[SESSION_ID],
        "task_id": facts[TASK_ID],
        "method": facts[METHOD],
        "upstream": facts[UPSTREAM],
        "tool": facts[TOOL],
        "args_digest": digest if digest is not None else args_digest(facts[DIGEST_ARGS]),
        "decision": facts[OUTCOME],
        "policy_ids": list(facts[POLICY_IDS]),
        "policy_version": facts[POLICY_VERSION],
        "eval_us": round(facts[EVAL_US], 1) if decided else None,
        "credential_mode": facts[CREDENTIAL_MODE],
        "outcome": "ok" if reason is None else "error",
        "duration_ms": round(facts[DURATION_S] * 1000, 3),
    }
    if reason is not None:
        record["reason"] = reason
        missing = facts[MISSING]
        if missing is not None:
            # No such item: the agent heard a denial's answer, the auditor learns that nothing by that name exists
            # (probing), which a policy denial (`policy_ids`, `policy_version`) is not.
            record.update(decision="deny", not_found=True, tool=record["tool"] or missing)
    elif facts[TOOL_ERROR]:
        record["reason"] = "tool_error"
    if facts[SHADOW] is not None:
        record["shadow_decision"] = facts[SHADOW]
    if facts[POLICY_ERRORS]:
        record["policy_errors"] = list(facts[POLICY_ERRORS])
    approval = facts[APPROVAL]
    if approval is not None:
        approval_id, outcome, decided_by, comment, waited_s = approval
        record["approval"] = {"id": approval_id, "outcome": outcome, "decided_by": list(decided_by),
                              "comment": comment, "wait_s": round(waited_s, 3)}
    args = facts[ARGS]  # (the redacted arguments,) when the log includes them
    if args is not None:
        record["args"] = args[0]
    if facts[SNAPSHOT] is not None:
        # What `customs policy replay` re-decides from; argument values only where config allows.
        record["authz_input"] = snapshot_of(facts[SNAPSHOT], args[0] if args is not None else None)
    return record


def snapshot_of(snapshot: tuple[Any, ...], args: Any) -> dict[str, Any]:
    """`authz_input`: a JSON-safe snapshot of everything a decision was made from (authz/record.py)."""
    principal_id, attributes, chain = snapshot[S_PRINCIPAL]
    return {
        "principal": {"id": principal_id, "attributes": dict(attributes)},
        "chain": [{"id": actor, "attributes": dict(actor_attributes)} for actor, actor_attributes in chain],
        "action": snapshot[S_ACTION],
        "tool": dict(zip(TOOL_FIELDS, snapshot[S_TOOL], strict=True)),
        "args": args,
        # Kept even without args (and computed before any redaction): a call denied for truncated or
        # escaped arguments must replay as denied under the same policies.
        "args_truncated": snapshot[S_TRUNCATED],
        "environment": snapshot[S_ENVIRONMENT],
        "args_contain_secret": snapshot[S_SECRET],
        "task": snapshot[S_TASK],
        "time": iso_utc(snapshot[S_DECIDED_AT]),
        "approved": snapshot[S_APPROVED],
    }


def dumps(record: Any) -> bytes:
    """One JSON line (UTF-8). default=str: a stray non-JSON value (datetime, Path) must not lose the record."""
    try:
        # orjson: ~10x faster than json.dumps for a record, the same JSON for what records hold.
        return orjson.dumps(record, default=str, option=orjson.OPT_APPEND_NEWLINE)
    except TypeError:  # what orjson refuses (integers past 64 bits, lone surrogates): the stdlib writes it
        text = json.dumps(record, separators=(",", ":"), ensure_ascii=False, default=str) + "\n"
        return text.encode("utf-8", "backslashreplace")


def line_of(item: Any) -> bytes:
    """The line of a batch item: an encoded event line as it is, facts made a record."""
    if isinstance(item, bytes):
        return item
    try:
        return dumps(record_of(item))
    except (ValueError, TypeError, KeyError, IndexError) as exc:  # a bug, never a lost batch
        # Its id and the error, not the facts: they hold the arguments before redaction (for the digest).
        log.error("decision record could not be built (%s): written without its facts", exc)
        decision_id = item[DECISION_ID] if isinstance(item, tuple) and item else None
        return dumps({"type": "decision", "decision_id": decision_id, "record_error": str(exc)})


class ShortWrite(OSError):
    """A write that failed after `written` bytes of its chunk, `lines` whole records among them, were written."""

    def __init__(self, written: int, cause: OSError) -> None:
        super().__init__(cause.errno, cause.strerror or str(cause))
        self.written = written
        self.lines = 0


class FileTarget:
    """A decision-log file (O_APPEND: one write per batch is never torn or interleaved, even with several
    gateways on one file), opened again when logrotate moved or deleted it; or, with no path, a stream."""

    def __init__(self, fd: int, path: str | None) -> None:
        self.fd = fd
        self.path = path
        self.torn = False  # a failed write (disk full) left part of a line at the end of the file
        # The path could not be opened again (or looked at): warned once, not on every batch (20 a second).
        self.stuck = False

    def write(self, chunk: bytes) -> None:
        """One write of `chunk`; a failure part way raises ShortWrite with the records that were written."""
        if self.path is not None:
            self._reopen_if_rotated(self.path)
        # The fragment a failed write left ends here, or the next record would be glued to it and lost too.
        prefixed = self.torn
        data = b"\n" + chunk if prefixed else chunk
        try:
            write_all(self.fd, data)
        except ShortWrite as exc:
            if exc.written:
                self.torn = data[exc.written - 1] != ord("\n")
                exc.lines = data.count(b"\n", 0, exc.written) - int(prefixed)
            raise
        self.torn = False

    def _reopen_if_rotated(self, path: str) -> None:
        """Write to `path` again when logrotate (its default `create` mode) moved the file away or deleted it:
        else the log would go on writing into the rotated file, or into none, while the path an operator reads
        stays empty. As logging's WatchedFileHandler: one stat per batch. A path that cannot be opened again, or
        looked at (ENOTDIR, EACCES, ELOOP: whether it was rotated is unknown), keeps the file it has: better
        there than lost."""
        try:
            now, ours = os.stat(path), os.fstat(self.fd)
            if (now.st_dev, now.st_ino) == (ours.st_dev, ours.st_ino):
                self._unstuck(path, reopened=False)
                return
        except FileNotFoundError:
            pass
        except OSError as exc:
            self._stuck(path, exc)
            return
        try:
            new = os.open(path, FILE_FLAGS, 0o640)
        except OSError as exc:
            self._stuck(path, exc)
            return
        os.close(self.fd)
        self.fd, self.torn = new, False
        self._unstuck(path, reopened=True)

    def _stuck(self, path: str, exc: OSError) -> None:
        if not self.stuck:
            self.stuck = True
            log.warning("decision log %s moved away and cannot be opened again (%s): still writing to the old file "
                        "(said once, until it can be)", path, exc.strerror or exc)

    def _unstuck(self, path: str, *, reopened: bool) -> None:
        if reopened:
            log.info("decision log %s was moved away or deleted: reopened", path)
        elif self.stuck:  # the path is the open file again (a directory renamed back)
            log.info("decision log %s can be looked at again: still writing to it", path)
        self.stuck = False


def write_all(fd: int, chunk: bytes) -> None:
    view = memoryview(chunk)
    done = 0
    while done < len(chunk):  # a regular file takes the whole O_APPEND write; loop for pipes and a full disk
        try:
            done += os.write(fd, view[done:])
        except BlockingIOError:
            # A stdout pipe another holder made O_NONBLOCK (the flag is shared): full is not failed. Giving up
            # here would leave a torn line in the pipe and drop the batch; wait as a blocking write would.
            select.select([], [fd], [])
        except OSError as exc:  # ENOSPC, EFBIG, EPIPE …: what was written before it stays written
            raise ShortWrite(done, exc) from exc


def read_frame(stream: BinaryIO) -> Any:
    head = stream.read(FRAME.size)
    if len(head) < FRAME.size:
        return None
    (size,) = FRAME.unpack(head)
    body = stream.read(size)
    if len(body) < size:
        return None
    return marshal.loads(body)  # our own parent (the same interpreter), over a private pipe


def main() -> None:
    """The writer process: `decision_writer FD [PATH]`; batches on stdin until EOF, reports on stdout.

    Each batch becomes one write to FD (the file the gateway opened, or its stdout); then `done N`, or
    `lost N <why>` when the write failed (after `done N` for the records written before it failed). The
    gateway counts what this process held if it dies."""
    level = os.environ.get(LEVEL_ENV, "")
    logging.basicConfig(level=int(level) if level.isdigit() else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")  # as `customs serve` logs
    # Ctrl-C in a terminal, or a service manager stopping the whole group, signals this process too: it must
    # not die holding records the gateway handed over. It ends when the gateway closes its stdin (also when
    # the gateway is killed outright: the pipe's end is all it waits for).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    fd = int(sys.argv[1])
    target = FileTarget(fd, sys.argv[2] if len(sys.argv) > 2 else None)
    stdin, reports = sys.stdin.buffer, sys.stdout.buffer
    settle_heap()
    while (batch := read_frame(stdin)) is not None:
        if isinstance(batch, int):  # a flush marker: everything before it is written
            reports.write(f"flushed {batch}\n".encode())
            reports.flush()
            continue
        chunk = b"".join(line_of(item) for item in batch)
        try:
            target.write(chunk)
            report = f"done {len(batch)}\n"
        except ShortWrite as exc:  # the records before the failure are in the file: only the rest is lost
            report = f"done {exc.lines}\nlost {len(batch) - exc.lines} {exc}\n"
        except (OSError, ValueError) as exc:
            report = f"lost {len(batch)} {exc}\n"
        reports.write(report.encode("utf-8", "replace"))
        reports.flush()


if __name__ == "__main__":
    main()
