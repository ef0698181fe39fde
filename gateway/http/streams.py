"""Response streams: a POST answer that starts as JSON and becomes SSE only when it must.

Most calls answer with one JSON body (cheapest). The moment a request produces an interim message
(progress, logging, a server→client request, an approval keep-alive) the response commits to
`text/event-stream` and every later message, the final one included, goes out as an SSE event.

Event ids are `<stream>-<n>`: the session's GET stream is stream `0`, each POST response stream gets
a random key when it turns into SSE, so ids are unique within a session and say which stream they
belong to (a client resumes with GET + `Last-Event-ID`; only that stream's events are replayed).
Events written on POST streams stay in a bounded, endpoint-wide `StreamReplay` for that purpose.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from aiohttp import web

from gateway.jsonrpc import dumps

SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache, no-transform",
               "X-Accel-Buffering": "no"}


GET_STREAM = "0"  # the stream key of a session's GET stream; POST streams get random keys

Written = Callable[[int, bytes], None]  # (event number on its stream, the message's JSON) once written


class ClientGone(Exception):
    """The client closed the connection while we were writing to it."""


def split_event_id(value: str | None) -> tuple[str, int] | None:
    """(stream key, event number) of a `Last-Event-ID` the gateway issued, else None."""
    if not value or len(value) > 64:
        return None
    stream, _, number = value.rpartition("-")
    if not stream or not number.isdigit():
        return None
    return stream, int(number)


class EventWriter:
    """Writes SSE events with ids `<stream>-1`, `<stream>-2`… (or given ids) on a prepared StreamResponse."""

    def __init__(self, response: web.StreamResponse, stream: str = GET_STREAM,
                 on_written: Written | None = None) -> None:
        self._response = response
        self._ids = itertools.count(1)
        self._stream = stream
        self._on_written = on_written
        self._lock = asyncio.Lock()

    async def event(self, message: dict[str, Any], event_id: str | None = None, *,
                    backlogged: Callable[[int], bool] | None = None) -> None:
        """Write one event; when `backlogged(size)` says the client is not reading, skip writing it (it is
        still numbered and kept for replay, so a client that resumes with Last-Event-ID gets it)."""
        number = 0
        if event_id is None:
            number = next(self._ids)
            event_id = f"{self._stream}-{number}"
        payload = dumps(message)
        if backlogged is None or not backlogged(len(payload)):
            await self.raw(event_id, payload)
        if number and self._on_written is not None:
            # Buffered once written: one that failed goes to the session's GET stream instead (no duplicate).
            self._on_written(number, payload)

    async def raw(self, event_id: str, payload: bytes) -> None:
        await self._write(f"id: {event_id}\nevent: message\ndata: ".encode() + payload + b"\n\n")

    async def comment(self, text: str = "keep-alive") -> None:
        await self._write(f": {text}\n\n".encode())

    async def _write(self, data: bytes) -> None:
        async with self._lock:
            try:
                await self._response.write(data)
            except (ConnectionResetError, ConnectionError, RuntimeError) as exc:
                raise ClientGone() from exc


class StreamReplay:
    """The recent events of POST response streams, bounded in bytes and streams (oldest stream goes first).

    Endpoint-wide rather than per session: a stream's key is random and bound to its session id, and
    the bound holds however many sessions there are. A session's GET stream keeps its own buffer.
    """

    def __init__(self, max_bytes: int = 8 << 20, max_streams: int = 4096) -> None:
        self._streams: OrderedDict[str, tuple[str, list[tuple[int, bytes]]]] = OrderedDict()
        self._bytes = 0
        self._max_bytes = max_bytes
        self._max_streams = max_streams

    def open(self, session_id: str) -> tuple[str, Written]:
        """A new stream of the session: its key and the function that records its written events."""
        key = secrets.token_hex(8)
        events: list[tuple[int, bytes]] = []
        self._streams[key] = (session_id, events)

        def written(number: int, payload: bytes) -> None:
            if self._streams.get(key) is not None:  # else already evicted
                events.append((number, payload))
                self._bytes += len(payload)
                self._evict()
        self._evict()
        return key, written

    def after(self, session_id: str, stream: str, number: int) -> list[tuple[str, bytes]] | None:
        """The session's events on `stream` after `number`; None when the stream is not (or no longer) known."""
        entry = self._streams.get(stream)
        if entry is None or entry[0] != session_id:
            return None
        return [(f"{stream}-{n}", payload) for n, payload in entry[1] if n > number]

    def _evict(self) -> None:
        while self._streams and (self._bytes > self._max_bytes or len(self._streams) > self._max_streams):
            _, (_, events) = self._streams.popitem(last=False)
            self._bytes -= sum(len(payload) for _, payload in events)


class ResponseChannel:
    """The answer to one POST: JSON unless an interim message forces SSE."""

    def __init__(self, request: web.Request, headers: dict[str, str], *, sse_allowed: bool,
                 replay: StreamReplay | None = None, session_id: str = "") -> None:
        self._request = request
        self.headers = headers
        self.sse_allowed = sse_allowed
        self._replay = replay
        self._session_id = session_id
        self._stream: web.StreamResponse | None = None
        self._writer: EventWriter | None = None
        self._commit_lock = asyncio.Lock()

    @property
    def streaming(self) -> bool:
        return self._writer is not None

    async def _commit(self) -> EventWriter:
        async with self._commit_lock:
            if self._writer is None:
                stream = web.StreamResponse(status=200, headers={**SSE_HEADERS, **self.headers})
                await stream.prepare(self._request)
                self._stream = stream
                if self._replay is not None:
                    self._writer = EventWriter(stream, *self._replay.open(self._session_id))
                else:
                    self._writer = EventWriter(stream, secrets.token_hex(8))
            return self._writer

    async def send(self, message: dict[str, Any]) -> None:
        """An interim message. Dropped (not an error) when the client did not accept SSE, and not written
        (only kept for replay) while the client is not reading: whoever delivers it must not wait for this
        client, least of all a shared stdio child's reader, which serves every session."""
        if not self.sse_allowed:
            return
        writer = await self._commit()
        await writer.event(message, backlogged=self._backlogged)

    def _backlogged(self, size: int) -> bool:
        """True when writing `size` more bytes would make aiohttp wait for the client to read."""
        transport = self._request.transport
        if transport is None:
            return False  # the write itself reports the client gone
        # An empty buffer means the client keeps up: even a large message goes out (the kernel takes most).
        buffered = transport.get_write_buffer_size()
        high = transport.get_write_buffer_limits()[1]
        return self._request.protocol.writing_paused or (buffered > 0 and buffered + size > high)

    async def keepalive(self) -> None:
        if self.sse_allowed:
            writer = await self._commit()
            await writer.comment()

    async def finish(self, message: dict[str, Any], status: int = 200,
                     extra_headers: dict[str, str] | None = None) -> web.StreamResponse:
        if self._writer is not None and self._stream is not None:
            try:
                await self._writer.event(message)
                await self._stream.write_eof()
            except ClientGone:
                pass
            return self._stream
        return web.Response(body=dumps(message), status=status, content_type="application/json",
                            headers={**self.headers, **(extra_headers or {})})

    async def finish_batch(self, replies: list[dict[str, Any]]) -> web.StreamResponse:
        """The answers to a batch: one JSON array, or (once streaming) one event each."""
        if self._writer is not None and self._stream is not None:
            try:
                for reply in replies:
                    await self._writer.event(reply)
                await self._stream.write_eof()
            except ClientGone:
                pass
            return self._stream
        return web.Response(body=dumps(replies), content_type="application/json", headers=self.headers)
