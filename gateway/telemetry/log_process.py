"""The decision-log writer process, seen from the gateway: batches of facts out, reports of what was written in.

Building a record from a call's facts (times as text, the arguments' digest, the replay snapshot) and
encoding it cost about as much again as taking the facts: ~6 % of a proxied call's instructions when the
event loop did it (docs/performance.md). `WriterProcess` (owned by `DecisionLog`) marshals each batch of
items (a plain list: a few microseconds) onto the stdin of a child (`decision_writer.main`), which builds,
encodes and writes them to the descriptor it was given. The child reports `done N` / `lost N <why>`
for every batch; lost records, and those it held when it died, are counted (`on_lost`). A child that dies
is started again; the gateway never waits on it except at `close`.
"""

from __future__ import annotations

import asyncio
import logging
import marshal
import os
import sys
from collections.abc import Callable
from typing import Any

from gateway.telemetry.child_pipe import stop_child, widen_pipe
from gateway.telemetry.decision_writer import FRAME, LEVEL_ENV, line_of

log = logging.getLogger("customs.decision_log")


class WriterUnavailable(OSError):
    """No writer process could be started again: the batch was not taken (nothing of it is lost yet)."""


class WriterProcess:
    """One child writing decision-log lines to `fd` (a file at `path` when given, else a stream)."""

    def __init__(self, fd: int, path: str | None, on_lost: Callable[[int], None]) -> None:
        # The child's 0-2 are its pipes to us: a standard stream is handed over as a copy above them.
        self._fd = os.dup(fd) if fd <= 2 else fd
        self._copied = fd <= 2
        self._path = path
        self._on_lost = on_lost
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._in_child = 0  # records written to the current child it has not reported done or lost
        self._flushes = 0
        self._acks: dict[int, asyncio.Future[bool]] = {}

    async def start(self) -> None:
        argv = [sys.executable, "-m", "gateway.telemetry.decision_writer", str(self._fd)]
        if self._path is not None:
            argv.append(self._path)
        # The child logs at the gateway's level (`--log-level`) for this log, in the gateway's format.
        env = {**os.environ, LEVEL_ENV: str(log.getEffectiveLevel())}
        self._proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, pass_fds=(self._fd,), env=env)
        self._reader = asyncio.create_task(self._read(self._proc), name="decision-log-reports")
        widen_pipe(self._proc)

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        """The child's reports until it exits: lost records are counted, flushes answered."""
        try:
            while proc.stdout is not None and (line := await proc.stdout.readline()):
                kind, _, rest = line.decode(errors="replace").strip().partition(" ")
                count, _, why = rest.partition(" ")
                if kind in ("done", "lost") and count.isdigit():
                    self._in_child -= int(count)
                    if kind == "lost":
                        log.error("decision log write failed (%s records lost): %s", count, why)
                        self._on_lost(int(count))
                elif kind == "flushed" and count.isdigit() and (ack := self._acks.pop(int(count), None)):
                    if not ack.done():
                        ack.set_result(True)
        finally:
            if self._in_child:  # what the child held when it ended (killed, crashed) is never written
                log.error("decision log writer process ended holding %d records: lost", self._in_child)
                self._on_lost(self._in_child)
                self._in_child = 0
            for number, ack in list(self._acks.items()):
                if not ack.done():
                    ack.set_result(False)
                del self._acks[number]

    async def send(self, items: list[Any]) -> None:
        """Ship one batch; records that cannot be marshalled are encoded here, and a dead child is replaced."""
        try:
            data = marshal.dumps(items)
        except ValueError:  # a value marshal cannot carry (a bug): those items are made lines here
            data = marshal.dumps([_marshallable(item) for item in items])
        try:
            await self._delivered(data, len(items))
        except (ConnectionError, OSError) as exc:
            log.warning("decision log writer process gone (%s): starting it again", exc)
            await self._stop(timeout_s=1.0)
            try:
                await self.start()
            except OSError as failed:  # the caller writes from its own process from now on, these items too
                raise WriterUnavailable(failed) from failed
            await self._delivered(data, len(items))  # a second failure is the caller's to count

    async def _delivered(self, data: bytes, count: int) -> None:
        # Counted as held before the write: the child may report the batch done while we await the drain.
        self._in_child += count
        try:
            await self._write(data)
        except BaseException:
            self._in_child -= count  # never reached a child that will report it (the caller counts it)
            raise

    async def _write(self, data: bytes) -> None:
        proc = self._proc
        if proc is None or proc.stdin is None or proc.returncode is not None:
            raise ConnectionResetError("no decision log writer process")
        proc.stdin.write(FRAME.pack(len(data)) + data)
        await proc.stdin.drain()

    async def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until the child has written (or reported lost) everything sent so far."""
        try:
            async with asyncio.timeout(timeout_s):
                self._flushes += 1
                ack: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
                self._acks[self._flushes] = ack
                await self._write(marshal.dumps(self._flushes))
                return await ack
        except (TimeoutError, ConnectionError, OSError):
            return False

    async def close(self, timeout_s: float = 10.0) -> None:
        """End of input: the child writes what it holds and exits; one still busy after `timeout_s` is killed."""
        await self._stop(timeout_s)
        if self._copied:
            self._copied = False
            os.close(self._fd)

    async def _stop(self, timeout_s: float) -> None:
        proc, self._proc = self._proc, None
        reader, self._reader = self._reader, None
        if proc is not None and not await stop_child(proc, reader, timeout_s):
            log.error("decision log writer process did not finish within %.0f s: killed", timeout_s)


def _marshallable(item: Any) -> Any:
    try:
        marshal.dumps(item)
        return item
    except ValueError:
        return line_of(item)
