"""GET on the MCP endpoint: the session's one server→client stream, and resumption with Last-Event-ID.

A session has at most one GET stream. A new GET for the session replaces the one open (which is
closed at once), so a client whose connection died unnoticed (no FIN, a proxy dropped it) can
reconnect immediately instead of waiting for a keep-alive write to fail.

`Last-Event-ID` names a stream (see gateway/http/streams.py): an id of the GET stream (`0-<n>`)
opens the GET stream and first replays what the session buffered after it; an id of a POST response
stream replays that stream's buffered events after it and, while the call behind it still runs (a call
outlives its dropped connection: gateway/http/resumable.py), goes on with that stream's events as they
come, ending after the call's answer. Messages of one stream are never replayed on another. Ids the
gateway never issued replay nothing, as does a POST stream's evicted from the buffer; a GET-stream id older than
the session's buffer replays what it still holds (`Session.events_after`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

from aiohttp import web

from gateway.errors import GatewayError
from gateway.http import cors
from gateway.http.guards import error_response
from gateway.http.streams import GET_STREAM, SSE_HEADERS, ClientGone, EventWriter, StreamReplay, split_event_id
from gateway.session import STREAM_END, Session


def draining() -> GatewayError:
    """The refusal of a stream asked for while the gateway drains: it would only be cut; reconnect after 1 s."""
    return GatewayError("shutting_down", headers={"Retry-After": "1"})


class _Takeover:
    """The task serving one GET stream; `replace()` ends it in favour of a newer GET for its session."""

    def __init__(self) -> None:
        task = asyncio.current_task()
        assert task is not None, "handlers run in a task"
        self.task = task
        self.replaced = False

    def replace(self) -> None:
        self.replaced = True
        self.task.cancel()


@dataclass
class SessionStreams:
    """Serves GET streams: one per session, replaced by a newer one; resumption from the buffers."""

    post_replay: StreamReplay = field(default_factory=StreamReplay)
    _open: dict[str, _Takeover] = field(default_factory=dict)
    _legacy: set[_Takeover] = field(default_factory=set)  # legacy HTTP+SSE streams (the stream is the session)
    _resumed: set[_Takeover] = field(default_factory=set)  # GETs following a POST stream's call
    closing: bool = False

    async def end_all(self) -> None:
        """Shutdown: end every open stream now. An open stream is no work to drain, and aiohttp would wait
        out `listen.drain_timeout_s` twice for it (once before cancelling, once after), past a container's
        grace period; the client reconnects to another replica or after the restart."""
        self.closing = True
        for takeover in [*self._open.values(), *self._legacy, *self._resumed]:
            takeover.replace()

    @contextlib.contextmanager
    def legacy(self) -> Iterator[_Takeover]:
        """Track a legacy SSE stream's task so `end_all` can end it; the caller ends normally when replaced."""
        me = _Takeover()
        self._legacy.add(me)
        try:
            yield me
        finally:
            self._legacy.discard(me)

    async def serve(self, request: web.Request, session: Session, keepalive_s: float) -> web.StreamResponse:
        if self.closing:  # draining: a new stream would only be cut; reconnect elsewhere or after the restart
            return error_response(draining())
        resume = split_event_id(request.headers.get("Last-Event-ID"))
        if resume is not None and resume[0] != GET_STREAM:
            return await self._resume_post_stream(request, session, *resume, keepalive_s)
        previous = self._open.get(session.id)
        if previous is not None:
            previous.replace()
        me = _Takeover()
        self._open[session.id] = me
        response = web.StreamResponse(status=200, headers=SSE_HEADERS)
        cors.share(request, response)
        try:
            await response.prepare(request)
            await self._pump(EventWriter(response), session, None if resume is None else resume[1], keepalive_s)
        except ClientGone:
            pass
        except asyncio.CancelledError:
            if not me.replaced:  # the client went away (or the server is stopping)
                raise
            me.task.uncancel()  # replaced by a newer GET: end this response normally
        finally:
            if self._open.get(session.id) is me:
                del self._open[session.id]
                session.get_stream_open = False
        return response

    async def _pump(self, writer: EventWriter, session: Session, after: int | None, keepalive_s: float) -> None:
        while not session.outbox.empty():  # whatever a previous stream left unsent is in the replay buffer
            session.outbox.get_nowait()
        # No await between opening the stream and reading the buffer: each event is either replayed or queued.
        session.get_stream_open = True
        missed = session.events_after(str(after)) if after is not None else session.awaited_requests()
        for event_id, message in missed:
            await writer.event(message, f"{GET_STREAM}-{event_id}")
        while not session.closed:
            try:
                queued = await asyncio.wait_for(session.outbox.get(), keepalive_s)
            except TimeoutError:
                await writer.comment()
                continue
            if queued is STREAM_END:  # the session ended (DELETE, expiry): the stream with it
                return
            event_id, message = queued
            await writer.event(message, f"{GET_STREAM}-{event_id}")

    async def _resume_post_stream(self, request: web.Request, session: Session, stream: str, number: int,
                                  keepalive_s: float) -> web.StreamResponse:
        response = web.StreamResponse(status=200, headers=SSE_HEADERS)
        cors.share(request, response)
        await response.prepare(request)
        me = _Takeover()
        self._resumed.add(me)
        try:
            await self._follow(EventWriter(response, stream), session.id, stream, number, keepalive_s)
            await response.write_eof()
        except (ClientGone, ConnectionError):
            pass
        except asyncio.CancelledError:
            if not me.replaced:  # the client went away (the call goes on; it may resume again)
                raise
            me.task.uncancel()  # shutdown: end this response normally
        finally:
            self._resumed.discard(me)
        return response

    async def _follow(self, writer: EventWriter, session_id: str, key: str, after: int, keepalive_s: float) -> None:
        """Write the stream's kept events after `after`, then its new ones as its call sends them, until
        the call's answer went out (or the stream is evicted, or unknown: nothing)."""
        stream = self.post_replay.get(session_id, key)
        while stream is not None:
            # Taken before reading: whatever is kept while the events are written wakes the wait below.
            changed = stream.changed()
            over = stream.finished or stream.evicted
            for number, payload in stream.after(after):
                await writer.raw(f"{key}-{number}", payload)
                after = number
            if over:
                return
            try:
                await asyncio.wait_for(changed.wait(), keepalive_s)
            except TimeoutError:
                await writer.comment()
