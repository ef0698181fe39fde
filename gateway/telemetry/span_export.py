"""OTLP span export in a child process: the gateway ships finished spans as tuples, the child encodes and POSTs.

Encoding spans to OTLP protobuf is pure Python in the exporter library (tens of microseconds a span);
in the gateway's process that work, even on the SDK's batch thread, holds the GIL the event loop needs.
The `SpanShipper` (owned by `Telemetry`, started and closed with the app) batches finished light spans,
marshals each batch (plain tuples: a few microseconds) and writes it to the child's stdin; the child
(`python -m gateway.telemetry.exporter_main`) rebuilds SDK `ReadableSpan`s and hands them to the SDK's
`OTLPSpanExporter`. `flush()` waits until the child has exported everything sent so far.
A child that dies is restarted (spans in flight are lost and counted in `dropped`); the gateway never
waits on the collector.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import marshal
import struct
import sys
from typing import Any, BinaryIO

from gateway.telemetry.spans import WireSpan

log = logging.getLogger("customs.telemetry")

BATCH_INTERVAL_S = 0.2  # finished spans wait at most this long before they are shipped
MAX_BATCH = 512
MAX_BUFFERED = 50_000  # past this the exporter is hopelessly behind: drop and count
_FRAME = struct.Struct("!I")


class SpanShipper:
    """Main-process side: buffer → marshalled frames → the exporter child's stdin."""

    def __init__(self, endpoint: str, headers: dict[str, str], resource: dict[str, Any]) -> None:
        self._config = {"endpoint": endpoint, "headers": headers, "resource": resource}
        self._spans: list[WireSpan] = []
        self._wake = asyncio.Event()
        self._proc: asyncio.subprocess.Process | None = None
        self._writer: asyncio.Task[None] | None = None
        self._flushes = 0
        self._closing = False
        self.dropped = 0

    def add(self, span: WireSpan) -> None:
        if len(self._spans) >= MAX_BUFFERED:
            self.dropped += 1
            return
        self._spans.append(span)
        if len(self._spans) >= MAX_BATCH:
            self._wake.set()

    async def start(self) -> None:
        await self._spawn()
        self._writer = asyncio.create_task(self._run(), name="span-shipper")

    async def _spawn(self) -> None:
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway.telemetry.exporter_main", stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE)
        await self._send(("config", self._config))

    async def _send(self, message: Any) -> None:
        proc = self._proc
        if proc is None or proc.stdin is None:
            raise ConnectionResetError("no exporter process")
        data = marshal.dumps(message)  # plain tuples, dicts and strings: marshal is the cheapest encoding
        proc.stdin.write(_FRAME.pack(len(data)) + data)
        await proc.stdin.drain()

    async def _ship(self) -> None:
        while self._spans:
            batch, self._spans = self._spans[:MAX_BATCH * 8], self._spans[MAX_BATCH * 8:]
            try:
                await self._send(("spans", batch))
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
        """Ship what is buffered and wait until the child has exported it. True when it did in time."""
        await self._ship()
        proc = self._proc
        if proc is None or proc.stdout is None:
            return False
        self._flushes += 1
        marker = f"flushed {self._flushes}".encode()
        try:
            await self._send(("flush", self._flushes))
            async with asyncio.timeout(timeout_s):
                while (line := await proc.stdout.readline()) and line.strip() != marker:
                    pass
            return bool(line)
        except (TimeoutError, ConnectionError, OSError):
            return False

    async def close(self, timeout_s: float = 10.0) -> None:
        self._closing = True
        self._wake.set()
        if self._writer is not None:
            await asyncio.gather(self._writer, return_exceptions=True)
            self._writer = None
        await self.flush(timeout_s)
        await self._stop_child(timeout_s)

    async def _stop_child(self, timeout_s: float) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(ConnectionError, OSError):
            if proc.stdin is not None:
                proc.stdin.close()
        try:
            async with asyncio.timeout(timeout_s):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()


def _read_frame(stream: BinaryIO) -> Any:
    head = stream.read(_FRAME.size)
    if len(head) < _FRAME.size:
        return None
    (size,) = _FRAME.unpack(head)
    return marshal.loads(stream.read(size))  # our own parent (the same interpreter), over a private pipe


def main() -> None:
    """The exporter child: read frames from stdin until EOF, export with the SDK's OTLP exporter."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource

    from gateway.telemetry.spans import readable

    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    first = _read_frame(stdin)
    if first is None or first[0] != "config":
        return
    config = first[1]
    resource = Resource(config["resource"])
    exporter = OTLPSpanExporter(endpoint=config["endpoint"], headers=config["headers"] or None)
    try:
        while (message := _read_frame(stdin)) is not None:
            kind, body = message
            if kind == "spans":
                for start in range(0, len(body), MAX_BATCH):
                    exporter.export([readable(span, resource) for span in body[start:start + MAX_BATCH]])
            elif kind == "flush":
                stdout.write(f"flushed {body}\n".encode())
                stdout.flush()
    finally:
        exporter.shutdown()  # type: ignore[no-untyped-call]

