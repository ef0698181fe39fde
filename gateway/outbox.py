"""A session stream's queue of unread messages, counted and sized: `Session.stream_event` bounds both.

A plain asyncio.Queue knows how many messages wait, not how large they are: an upstream's message is up to
16 MiB, so a count bound alone lets one client that does not read hold gigabytes. Each message is queued with
its encoded size, added on the way in and taken off on the way out.
"""

from __future__ import annotations

import asyncio

from gateway.transport.base import Message

Event = tuple[str, Message]  # (its event number, the message); gateway/sessions.py STREAM_END ends a stream


class Outbox:
    """The unread events of a session's GET (or legacy SSE) stream, and the bytes of them (`bytes`)."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[tuple[Event, int]] = asyncio.Queue()
        self.bytes = 0

    def qsize(self) -> int:
        return self._queue.qsize()

    def empty(self) -> bool:
        return self._queue.empty()

    def put_nowait(self, event: Event, size: int = 0) -> None:
        """Queue `event`; `size`: its encoded bytes (0 for the gateway's own STREAM_END)."""
        self._queue.put_nowait((event, size))
        self.bytes += size

    def get_nowait(self) -> Event:
        event, size = self._queue.get_nowait()
        self.bytes -= size
        return event

    async def get(self) -> Event:
        event, size = await self._queue.get()
        self.bytes -= size
        return event
