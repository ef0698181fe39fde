"""OTLP span export in a child process: the gateway ships finished spans as tuples, the child encodes and POSTs.

Encoding spans to OTLP protobuf is pure Python in the exporter library (tens of microseconds a span);
in the gateway's process that work, even on the SDK's batch thread, holds the GIL the event loop needs.
The `SpanShipper` (owned by `Telemetry`, started and closed with the app) batches finished light spans,
marshals each batch (plain tuples: a few microseconds) and writes it to the child's stdin; the child
(`python -m gateway.telemetry.exporter_main`) encodes them with `otlp_encode.OtlpEncoder` (the SDK's
encoding, without building SDK spans first) and POSTs each request (`OtlpPoster`).
`flush()` waits until the child has exported everything sent so far. The child reports on its stdout
(`done N` / `lost N` for each batch it exported or gave up on, collector down or refusing; `flushed K`),
read by one task per child. Every span lost, in the child or on the way to it, is counted in `dropped`
(`customs.spans.dropped`). A child that dies is restarted (the spans it held, sent and not reported, are
lost and counted); the gateway never waits on the collector.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import logging
import marshal
import math
import os
import random
import struct
import sys
import time
import zlib
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, BinaryIO

from gateway.telemetry.child_pipe import settle_heap, stop_child, widen_pipe
from gateway.telemetry.spans import SCOPE, WireSpan

if TYPE_CHECKING:  # imported where used: the gateway's process never encodes
    from gateway.telemetry.otlp_encode import OtlpEncoder

log = logging.getLogger("customs.telemetry")

BATCH_INTERVAL_S = 0.2  # finished spans wait at most this long before they are shipped
MAX_BATCH = 512  # spans in a frame too: ~200 KB marshalled, well inside the widened pipe
MAX_BUFFERED = 50_000  # past this the exporter is hopelessly behind: drop and count
_FRAME = struct.Struct("!I")
# What the SDK's OTLP/HTTP exporter retries (with backoff, within its timeout) and how often at most.
RETRYABLE_STATUS = frozenset({429, 502, 503, 504})
MAX_ATTEMPTS = 6
DEFAULT_TIMEOUT_S = 10.0


class SpanShipper:
    """Main-process side: buffer → marshalled frames → the exporter child's stdin."""

    def __init__(self, endpoint: str, headers: dict[str, str], resource: dict[str, Any]) -> None:
        self._config = {"endpoint": endpoint, "headers": headers, "resource": resource}
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
        proc.stdin.write(_FRAME.pack(len(data)) + data)
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


def _read_frame(stream: BinaryIO) -> Any:
    head = stream.read(_FRAME.size)
    if len(head) < _FRAME.size:
        return None
    (size,) = _FRAME.unpack(head)
    return marshal.loads(stream.read(size))  # our own parent (the same interpreter), over a private pipe


class OtlpPoster:
    """POSTs serialized OTLP trace requests the way the SDK's `OTLPSpanExporter` does.

    Not through that exporter: it only takes SDK spans (building and encoding those is the cost this
    process avoids), and the part of it that POSTs bytes (`_OTLPHTTPClient`, reachable only as the
    private `exporter._client`) is private and has been reorganised across releases. `requests`, a
    dependency of the exporter package, is a stable public API. Replicated from the exporter:
    Content-Type application/x-protobuf, the configured headers, no redirects, 2xx/3xx as success, up
    to 6 attempts with exponential backoff (1, 2, 4… s, ±20 %) or Retry-After on 429/502/503/504 and
    connection errors, all within the timeout; its OTEL_EXPORTER_OTLP_[TRACES_]{TIMEOUT, COMPRESSION,
    CERTIFICATE, CLIENT_CERTIFICATE, CLIENT_KEY} variables. A failure is logged, never raised.
    """

    def __init__(self, endpoint: str, headers: Mapping[str, str], env: Mapping[str, str]) -> None:
        import requests

        self._endpoint = endpoint
        self._transient = (requests.ConnectionError, requests.Timeout)
        self._fatal = requests.exceptions.SSLError  # a ConnectionError that no retry mends (an untrusted certificate)
        self._timeout = _seconds(_otlp_env(env, "TIMEOUT")) or DEFAULT_TIMEOUT_S
        self._compression = (_otlp_env(env, "COMPRESSION") or "none").strip().lower()
        self._session = session = requests.Session()
        session.headers.update({"Content-Type": "application/x-protobuf",
                                "User-Agent": f"customs/{SCOPE.version} (OTLP span exporter)"})
        if self._compression in ("gzip", "deflate"):
            session.headers["Content-Encoding"] = self._compression
        session.headers.update(headers)
        # What requests reads from the environment on every request (proxies, NO_PROXY, netrc, CA bundle), read
        # once: a process's environment does not change under it. And in the SDK exporter's order: its certificate
        # first, then REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE. Left to requests, those variables override a session's
        # `verify` (psf/requests#3829): a collector behind a private CA was refused wherever they were set.
        session.trust_env = False
        session.proxies = requests.utils.get_environ_proxies(endpoint)
        session.verify = _otlp_env(env, "CERTIFICATE") or env.get("REQUESTS_CA_BUNDLE") or \
            env.get("CURL_CA_BUNDLE") or True
        if (auth := requests.utils.get_netrc_auth(endpoint)) is not None:
            session.auth = auth
        cert, key = _otlp_env(env, "CLIENT_CERTIFICATE"), _otlp_env(env, "CLIENT_KEY")
        if cert:
            session.cert = (cert, key) if key else cert

    def post(self, body: bytes, spans: int) -> bool:
        """POST one request, retrying transient failures. False (and logged) when the spans are lost."""
        data = self._compress(body)
        deadline = time.monotonic() + self._timeout
        for attempt in range(MAX_ATTEMPTS):
            retry_after: float | None = None
            try:
                response = self._session.post(self._endpoint, data=data, allow_redirects=False,
                                              timeout=max(deadline - time.monotonic(), 0.001))
            except self._fatal as exc:
                problem, retryable = str(exc), False
            except self._transient as exc:
                problem, retryable = str(exc), True
                # The SDK retries a first connection error at once: usually a stale pooled connection.
                retry_after = 0.0 if attempt == 0 else None
            except Exception as exc:  # a malformed URL, an unreadable certificate: no retry helps
                problem, retryable = str(exc), False
            else:
                if 200 <= response.status_code < 400:
                    return True
                problem = f"HTTP {response.status_code} {response.reason}"
                retryable = response.status_code in RETRYABLE_STATUS
                retry_after = _seconds(response.headers.get("retry-after"))
            backoff = retry_after if retry_after is not None else 2 ** attempt * random.uniform(0.8, 1.2)
            if not retryable or attempt + 1 == MAX_ATTEMPTS or backoff > deadline - time.monotonic():
                log.error("span export to %s failed (%s): %d spans lost", self._endpoint, problem, spans)
                return False
            log.warning("span export to %s: %s; retrying in %.1f s", self._endpoint, problem, backoff)
            time.sleep(backoff)
        return False

    def _compress(self, body: bytes) -> bytes:
        if self._compression == "gzip":
            return gzip.compress(body)
        if self._compression == "deflate":
            return zlib.compress(body)
        return body

    def close(self) -> None:
        self._session.close()


def _otlp_env(env: Mapping[str, str], name: str) -> str | None:
    """An exporter variable, the traces-specific one first (the SDK's precedence)."""
    return env.get(f"OTEL_EXPORTER_OTLP_TRACES_{name}") or env.get(f"OTEL_EXPORTER_OTLP_{name}") or None


def _seconds(raw: str | None) -> float | None:
    """A number of seconds (a timeout, a Retry-After) or None if `raw` is not one."""
    try:
        value = float(raw) if raw else None
    except ValueError:
        return None
    return max(value, 0.0) if value is not None and math.isfinite(value) else None


def _export(encoder: OtlpEncoder, poster: OtlpPoster, spans: list[WireSpan]) -> bool:
    """Encode and POST one batch; False when its spans are lost."""
    try:
        body = encoder.serialize(spans)
    except Exception as exc:  # as the SDK's exporter: a batch that cannot be encoded is lost, logged, not fatal
        log.error("%d spans not encodable (%s): lost", len(spans), exc)
        return False
    return poster.post(body, len(spans))


def main() -> None:
    """The exporter child: read frames from stdin until EOF, encode each batch and POST it."""
    from gateway.telemetry.otlp_encode import OtlpEncoder

    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    first = _read_frame(stdin)
    if first is None or first[0] != "config":
        return
    config = first[1]
    encoder = OtlpEncoder(config["resource"])
    poster = OtlpPoster(config["endpoint"], config["headers"] or {}, os.environ)
    settle_heap()
    try:
        while (message := _read_frame(stdin)) is not None:
            kind, body = message
            if kind == "spans":
                for start in range(0, len(body), MAX_BATCH):
                    batch = body[start:start + MAX_BATCH]
                    # The parent counts what is lost, and what this process held if it dies.
                    outcome = "done" if _export(encoder, poster, batch) else "lost"
                    stdout.write(f"{outcome} {len(batch)}\n".encode())
                    stdout.flush()
            elif kind == "flush":
                stdout.write(f"flushed {body}\n".encode())
                stdout.flush()
    finally:
        poster.close()
