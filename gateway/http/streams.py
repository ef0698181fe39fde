"""Response streams: a POST answer that starts as JSON and becomes SSE only when it must.

Most calls answer with one JSON body (cheapest). The moment a request produces an interim message
(progress, logging, a server→client request, an approval keep-alive) the response commits to
`text/event-stream` and every later message, the final one included, goes out as an SSE event.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from aiohttp import web

from gateway.jsonrpc import dumps

SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache, no-transform",
               "X-Accel-Buffering": "no"}


class ClientGone(Exception):
    """The client closed the connection while we were writing to it."""


class EventWriter:
    """Writes SSE events with increasing ids on a prepared StreamResponse."""

    def __init__(self, response: web.StreamResponse, prefix: str = "") -> None:
        self._response = response
        self._ids = itertools.count(1)
        self._prefix = prefix
        self._lock = asyncio.Lock()

    async def event(self, message: dict[str, Any], event_id: str | None = None) -> None:
        ident = event_id if event_id is not None else f"{self._prefix}{next(self._ids)}"
        data = f"id: {ident}\nevent: message\ndata: ".encode() + dumps(message) + b"\n\n"
        await self._write(data)

    async def comment(self, text: str = "keep-alive") -> None:
        await self._write(f": {text}\n\n".encode())

    async def _write(self, data: bytes) -> None:
        async with self._lock:
            try:
                await self._response.write(data)
            except (ConnectionResetError, ConnectionError, RuntimeError) as exc:
                raise ClientGone() from exc


class ResponseChannel:
    """The answer to one POST: JSON unless an interim message forces SSE."""

    def __init__(self, request: web.Request, headers: dict[str, str], *, sse_allowed: bool) -> None:
        self._request = request
        self.headers = headers
        self.sse_allowed = sse_allowed
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
                self._writer = EventWriter(stream)
            return self._writer

    async def send(self, message: dict[str, Any]) -> None:
        """An interim message. Dropped (not an error) when the client did not accept SSE."""
        if not self.sse_allowed:
            return
        writer = await self._commit()
        await writer.event(message)

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
