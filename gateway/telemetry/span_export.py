"""OTLP span export, the gateway's side: finished spans shipped as tuples to a child process that encodes and POSTs.

Encoding spans to OTLP protobuf is pure Python in the exporter library (tens of microseconds a span);
in the gateway's process that work, even on the SDK's batch thread, holds the GIL the event loop needs.
The `SpanShipper` (owned by `Telemetry`, started and closed with the app) buffers finished light spans,
marshals them MAX_BATCH at a time (plain tuples: a few microseconds) and writes each frame to the child's stdin;
the child (`python -m gateway.telemetry.exporter_main`, span_child.py) encodes them with `otlp_encode.OtlpEncoder`
(the SDK's encoding, without building SDK spans first) and POSTs each request (`OtlpPoster`).
`flush()` waits until the child has exported everything sent so far. The child reports on its stdout
(`done N` / `lost N` for each batch it exported or gave up on, collector down or refusing; `flushed K`),
read by one task per child. Every span lost, in the child or on the way to it, is counted in `dropped`
(`customs.spans.dropped`). A child that dies is restarted (the spans it held, sent and not reported, are
lost and counted); the gateway never waits on the collector.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import marshal
import struct
import sys
from collections.abc import Callable
from typing import Any

from gateway.telemetry.child_pipe import stop_child, widen_pipe
from gateway.telemetry.spans import WireSpan

log = logging.getLogger("customs.telemetry")

BATCH_INTERVAL_S = 0.2  # finished spans wait at most this long before they are shipped
MAX_BATCH = 512  # spans in a frame and in an OTLP request (the SDK's OTEL_BSP_MAX_EXPORT_BATCH_SIZE): ~200 KB
MAX_BUFFERED = 50_000  # past this the exporter is hopelessly behind: drop and count
FRAME = struct.Struct("!I")  # a frame's length, before its marshalled message


class SpanShipper:
    """Main-process side: buffer → marshalled frames → the exporter child's stdin."""

    def __init__(self, endpoint: str, headers: dict[str, str], resource: dict[str, Any],
                 value_limit: int | None = None) -> None:
        self._config = {"endpoint": endpoint, "headers": headers, "resource": resource, "value_limit": value_limit}
        self._spans: list[WireSpan] = []
        self._wake = asyncio.Event()
        self._proc: asyncio.subprocess.Process | None = None
        self._writer: asyncio.Task[None] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._flushes = 0
        self._acks: dict[int, asyncio.Future[bool]] = {}  # flush number → done when the child answered it
        self._in_child = 0  # spans written to the current child that it has not reported done or lost
        self._closing = False
        self._ticks: asyncio.TimerHandle | None = None
        self.dropped = 0

    def add(self, span: WireSpan) -> None:
        if len(self._spans) >= MAX_BUFFERED:
            self.dropped += 1
            return
        self._spans.append(span)
        if len(self._spans) >= MAX_BATCH:
            self._wake.set()

    @property
    def append(self) -> Callable[[WireSpan], None]:
        """`add` without its checks: the buffer's own append (a C call, where `add` is a Python call a span, five a
        proxied call). The buffer is then bounded by `_tick` every BATCH_INTERVAL_S instead of at each span: it
        may hold one interval's spans past MAX_BUFFERED before the newest are dropped (and counted)."""
        return self._spans.append

    def _tick(self) -> None:
        # Its own timer, not the writer's loop: the writer may be stuck in a drain while the buffer grows.
        spans = self._spans
        if len(spans) > MAX_BUFFERED:
            self.dropped += len(spans) - MAX_BUFFERED
            del spans[MAX_BUFFERED:]
        if len(spans) >= MAX_BATCH:
            self._wake.set()
        if not self._closing:
            self._ticks = asyncio.get_running_loop().call_later(BATCH_INTERVAL_S, self._tick)

    async def start(self) -> None:
        await self._spawn()
        self._writer = asyncio.create_task(self._run(), name="span-shipper")
        self._ticks = asyncio.get_running_loop().call_later(BATCH_INTERVAL_S, self._tick)

    async def _spawn(self) -> None:
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway.telemetry.exporter_main", stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE)
        self._reader = asyncio.create_task(self._read(self._proc), name="span-exporter-reports")
        widen_pipe(self._proc)
        await self._send(("config", self._config))

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        """The child's reports until it exits: lost spans are counted, flushes answered."""
        try:
            while proc.stdout is not None and (line := await proc.stdout.readline()):
                kind, _, value = line.decode(errors="replace").strip().partition(" ")
                if kind in ("done", "lost") and value.isdigit():
                    self._in_child -= int(value)
                    if kind == "lost":
                        self.dropped += int(value)
                elif kind == "flushed" and value.isdigit() and (ack := self._acks.pop(int(value), None)):
                    if not ack.done():
                        ack.set_result(True)
        finally:
            # What the child held when it ended (killed, crashed, stuck at shutdown) never reaches the collector.
            self.dropped += self._in_child
            self._in_child = 0
            # A child gone answers no flush it was sent: its waiters hear it now rather than at their timeout.
            for number, ack in list(self._acks.items()):
                if not ack.done():
                    ack.set_result(False)
                del self._acks[number]

    async def _send(self, message: Any) -> None:
        proc = self._proc
        if proc is None or proc.stdin is None:
            raise ConnectionResetError("no exporter process")
        data = marshal.dumps(message)  # plain tuples, dicts and strings: marshal is the cheapest encoding
        proc.stdin.write(FRAME.pack(len(data)) + data)
        await proc.stdin.drain()

    async def _ship(self) -> None:
        spans = self._spans  # the one list (`append` is its bound method): taken from in place
        while spans:
            batch = spans[:MAX_BATCH]
            del spans[:MAX_BATCH]
            try:
                await self._send(("spans", batch))
                self._in_child += len(batch)
            except ValueError as exc:  # an attribute value marshal cannot carry: a bug, never a crash
                self.dropped += len(batch)
                log.error("spans not exportable (%s): %d spans lost", exc, len(batch))
            except (ConnectionError, BrokenPipeError, OSError) as exc:
                self.dropped += len(batch)
                log.warning("span exporter process gone (%s): %d spans lost; restarting it", exc, len(batch))
                await self._restart()

    async def _restart(self) -> None:
        await self._stop_child(timeout_s=1)
        with contextlib.suppress(OSError):
            await self._spawn()

    async def _run(self) -> None:
        while not self._closing:
            with contextlib.suppress(TimeoutError):  # a batching delay, cut short by a full batch
                await asyncio.wait_for(self._wake.wait(), BATCH_INTERVAL_S)
            self._wake.clear()
            await self._ship()

    async def flush(self, timeout_s: float = 10.0) -> bool:
        """Ship what is buffered and wait until the child has dealt with it (exported, or lost and reported
        in `dropped`). True when it did in time."""
        # Shipping is inside the timeout too: a child stuck on a slow collector stops reading its
        # stdin, the pipe fills and `drain()` would otherwise wait for every batch ahead of ours.
        try:
            async with asyncio.timeout(timeout_s):
                await self._ship()
                if self._proc is None:
                    return False
                self._flushes += 1
                ack: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
                self._acks[self._flushes] = ack
                await self._send(("flush", self._flushes))
                return await ack
        except (TimeoutError, ConnectionError, OSError):
            return False

    async def close(self, timeout_s: float = 10.0) -> None:
        """Export what is left within `timeout_s` in all; a child still busy after that is killed."""
        self._closing = True
        self._wake.set()
        if self._ticks is not None:
            self._ticks.cancel()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        exported = False
        try:
            async with asyncio.timeout_at(deadline):
                if self._writer is not None:
                    await asyncio.gather(self._writer, return_exceptions=True)
                exported = await self.flush(timeout_s)
        except TimeoutError:
            pass
        finally:
            if self._writer is not None and not self._writer.done():
                self._writer.cancel()
                await asyncio.gather(self._writer, return_exceptions=True)
            self._writer = None
            if not exported:
                log.warning("span export did not finish within %.0f s of shutdown: unexported spans are lost",
                            timeout_s)
            # Exported: the child exits at EOF at once. Not: it is stuck on the collector, kill it now.
            await self._stop_child(max(deadline - loop.time(), 1.0) if exported else 0.0)

    async def _stop_child(self, timeout_s: float) -> None:
        proc, self._proc = self._proc, None
        reader, self._reader = self._reader, None
        if proc is not None:
            await stop_child(proc, reader, timeout_s)
