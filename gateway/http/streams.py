"""Response streams: a POST answer that starts as JSON and becomes SSE only when it must.

Most calls answer with one JSON body (cheapest). The moment a request produces an interim message
(progress, logging, a server→client request, an approval keep-alive) the response commits to
`text/event-stream` and every later message, the final one included, goes out as an SSE event.

Event ids are `<stream>-<n>`: the session's GET stream is stream `0`, each POST response stream gets
a random key when it turns into SSE, so ids are unique within a session and say which stream they
belong to (a client resumes with GET + `Last-Event-ID`; only that stream's events are replayed).
Events written on POST streams stay in a bounded, endpoint-wide `StreamReplay` for that purpose. Once
an event with an id has gone out, the stream is resumable: when its connection drops, the call goes on
(gateway/http/resumable.py) and its later events, the answer included, are only kept there.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from aiohttp import web

from gateway.http import cors
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
    # ASCII digits only, as the gateway writes them: str.isdigit() also takes '²' (int() raised: a 500) and '٣'.
    if not stream or not number.isascii() or not number.isdigit():
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
        # An event with a replayable id went out: the client can resume after it (GET + Last-Event-ID).
        self.resumable = False
        # The connection is gone but the stream is resumable: events are numbered and kept, not written.
        self.detached = False

    async def event(self, message: dict[str, Any], event_id: str | None = None, *,
                    backlogged: Callable[[int], bool] | None = None) -> None:
        """Write one event; when `backlogged(size)` says the client is not reading, skip writing it (it is
        still numbered and kept for replay, so a client that resumes with Last-Event-ID gets it)."""
        number = 0
        if event_id is None:
            number = next(self._ids)
            event_id = f"{self._stream}-{number}"
        payload = dumps(message)
        kept = self._on_written if number else None
        if not self.detached and (backlogged is None or not backlogged(len(payload))):
            try:
                await self.raw(event_id, payload)
            except ClientGone:
                if kept is None or not self.resumable:
                    raise
                self.detached = True  # the client resumes from the last id it got: keep this one for it
            else:
                self.resumable = self.resumable or kept is not None
        if kept is not None:
            # Buffered once written (or kept for a resume): one that failed on a stream the client cannot
            # resume goes to the session's GET stream instead (no duplicate).
            kept(number, payload)

    def keep(self, message: dict[str, Any]) -> None:
        """Number and keep one event without writing it (the stream is detached from its connection)."""
        if self._on_written is not None:
            self._on_written(next(self._ids), dumps(message))

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


class ReplayStream:
    """One POST stream's kept events; `finished` once its call was answered, `evicted` once dropped."""

    __slots__ = ("_changed", "_replay", "events", "evicted", "finished", "key", "session_id")

    def __init__(self, replay: StreamReplay, key: str, session_id: str) -> None:
        self._replay = replay
        self.key = key
        self.session_id = session_id
        self.events: list[tuple[int, bytes]] = []
        self.finished = False
        self.evicted = False
        self._changed: asyncio.Event | None = None

    def record(self, number: int, payload: bytes) -> None:
        """Keep one event (a `Written`); nothing once evicted."""
        if not self.evicted:
            self.events.append((number, payload))
            self._wake()
            self._replay.grew(len(payload))

    def finish(self) -> None:
        """The call answered (its answer is the last event): a resuming reader ends after it."""
        self.finished = True
        self._wake()

    def after(self, number: int) -> list[tuple[int, bytes]]:
        return [(n, payload) for n, payload in self.events if n > number]

    def changed(self) -> asyncio.Event:
        """Set at the next event, finish or eviction (take it before reading `events`)."""
        if self._changed is None:
            self._changed = asyncio.Event()
        return self._changed

    def _wake(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None


class StreamReplay:
    """The recent events of POST response streams, bounded in bytes and streams (oldest stream goes first).

    Endpoint-wide rather than per session: a stream's key is random and bound to its session id, and
    the bound holds however many sessions there are. A session's GET stream keeps its own buffer.
    A call that outlives its connection adds to its stream here until it ends; eviction is unchanged.
    """

    def __init__(self, max_bytes: int = 8 << 20, max_streams: int = 4096) -> None:
        self._streams: OrderedDict[str, ReplayStream] = OrderedDict()
        self._bytes = 0
        self._max_bytes = max_bytes
        self._max_streams = max_streams

    def open(self, session_id: str) -> ReplayStream:
        """A new stream of the session; its `record` keeps its written events."""
        stream = ReplayStream(self, secrets.token_hex(8), session_id)
        self._streams[stream.key] = stream
        self._evict()
        return stream

    def get(self, session_id: str, key: str) -> ReplayStream | None:
        """The session's stream `key`; None when it is not (or no longer) known."""
        stream = self._streams.get(key)
        return stream if stream is not None and stream.session_id == session_id else None

    def grew(self, size: int) -> None:
        """A stream kept `size` more bytes: evict the oldest streams past the bounds."""
        self._bytes += size
        self._evict()

    def _evict(self) -> None:
        while self._streams and (self._bytes > self._max_bytes or len(self._streams) > self._max_streams):
            _, stream = self._streams.popitem(last=False)
            self._bytes -= sum(len(payload) for _, payload in stream.events)
            stream.events = []
            stream.evicted = True
            stream._wake()


class ResponseChannel:
    """The answer to one POST: JSON unless an interim message forces SSE."""

    def __init__(self, request: web.Request, headers: dict[str, str], *, sse_allowed: bool,
                 replay: StreamReplay | None = None, session_id: str = "") -> None:
        self._request = request
        self.headers = headers
        self.sse_allowed = sse_allowed
        self._replay = replay
        self._session_id = session_id
        self.replay_stream: ReplayStream | None = None
        self._stream: web.StreamResponse | None = None
        self._writer: EventWriter | None = None
        self._commit_lock: asyncio.Lock | None = None  # made by the first interim message: most calls send none
        self._kept_answers: list[dict[str, Any]] | None = None  # a batch's answers that came before its stream

    @property
    def request(self) -> web.Request:
        return self._request

    @property
    def streaming(self) -> bool:
        return self._writer is not None

    @property
    def resumable(self) -> bool:
        """An event with an id the client can resume after (GET + Last-Event-ID) has gone out."""
        return self._writer is not None and self._writer.resumable

    def detach(self) -> None:
        """The connection is gone, the call goes on: its events, the answer included, are only kept."""
        if self._writer is not None:
            self._writer.detached = True

    def keep_answer(self, message: dict[str, Any] | None) -> None:
        """A detached call ended: keep its answer (None: it has none) as the stream's last event."""
        if self._writer is not None and message is not None:
            self._writer.keep(message)
        if self.replay_stream is not None:
            self.replay_stream.finish()

    async def _commit(self) -> EventWriter:
        if self._commit_lock is None:
            self._commit_lock = asyncio.Lock()
        async with self._commit_lock:
            if self._writer is None:
                stream = web.StreamResponse(status=200, headers={**SSE_HEADERS, **self.headers})
                cors.share(self._request, stream)
                await stream.prepare(self._request)
                self._stream = stream
                if self._replay is not None:
                    self.replay_stream = kept = self._replay.open(self._session_id)
                    self._writer = EventWriter(stream, kept.key, kept.record)
                else:
                    self._writer = EventWriter(stream, secrets.token_hex(8))
                if self._kept_answers:  # a batch's answers that ended before its stream opened go out first
                    await self._send_kept_answers(self._writer)
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
                if not self._writer.detached:
                    await self._stream.write_eof()
            except ClientGone:
                pass
            finally:
                if self.replay_stream is not None:
                    self.replay_stream.finish()
            return self._stream
        return web.Response(body=dumps(message), status=status, content_type="application/json",
                            headers={**self.headers, **(extra_headers or {})})

    async def answer_now(self, message: dict[str, Any]) -> None:
        """One answer of a batch as its call ends: written at once if the batch answers on a stream, else kept,
        for the one JSON array or for the stream once another call's interim message opens it (a client gone
        meanwhile is finish_batch's to notice)."""
        if self._writer is None:
            if self._kept_answers is None:
                self._kept_answers = []
            self._kept_answers.append(message)
            return
        with contextlib.suppress(ClientGone):
            await self._writer.event(message)

    async def _send_kept_answers(self, writer: EventWriter) -> None:
        kept, self._kept_answers = self._kept_answers or [], None
        for message in kept:
            with contextlib.suppress(ClientGone):
                await writer.event(message)

    async def finish_batch(self, replies: list[dict[str, Any]]) -> web.StreamResponse:
        """The answers to a batch: one JSON array, or (once streaming) one event each."""
        replies = [*replies, *(self._kept_answers or ())]
        self._kept_answers = None
        if self._writer is not None and self._stream is not None:
            try:
                for reply in replies:
                    await self._writer.event(reply)
                await self._stream.write_eof()
            except ClientGone:
                pass
            finally:
                if self.replay_stream is not None:
                    self.replay_stream.finish()
            return self._stream
        return web.Response(body=dumps(replies), content_type="application/json", headers=self.headers)
