"""Legacy HTTP+SSE upstreams (MCP 2024-11-05): one GET event stream carries every answer.

connect() opens the stream, reads the `endpoint` event (it must point at the same origin, so a
server cannot make the gateway POST credentials elsewhere), then initializes over it. Requests are
POSTed to that endpoint and their responses matched by upstream id as they arrive on the stream;
when the stream ends every waiting request fails at once with upstream_unavailable. Messages the
session sends on its own (notifications, answers, cancellations) ask the credential source each time.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import urljoin

import aiohttp

from gateway import jsonrpc
from gateway.errors import GatewayError
from gateway.transport.base import ConnectParams, HeadersSource, Message, MessageHandler, SentId
from gateway.transport.common import (
    BATCH_REVISIONS,
    BROADCAST_METHODS,
    TOOLS_CHANGED,
    HeldSubscriptions,
    SessionClock,
    Unsent,
    cancelled_message,
    check_initialize,
    initialize_message,
    initialized_message,
    remap_cancel,
    send_own,
    subscribe_again,
    with_id,
    with_trace,
)
from gateway.transport.deadlines import Deadline
from gateway.transport.events import MAX_MESSAGE_BYTES, NotJson, Oversized, SseEvent, iter_sse, parse_json
from gateway.transport.http_base import HttpUpstreamBase, deliver, same_origin
from gateway.transport.inflight import InflightTable, with_progress_token


class SseUpstream(HttpUpstreamBase):
    """A configured legacy-SSE upstream; each client session gets its own event stream."""

    async def connect(self, params: ConnectParams, on_message: MessageHandler,
                      headers: Mapping[str, str] | None = None, *,
                      credentials: HeadersSource | None = None) -> SseSession:
        self.breaker.check()
        session = SseSession(self, params, on_message, headers, credentials)
        try:
            async with asyncio.timeout(self.config.timeout_s):
                await self.handshake(session.open())
        except TimeoutError as exc:
            await session.close()
            raise GatewayError("upstream_timeout", "upstream did not finish the handshake in time") from exc
        except BaseException:
            await session.close()
            raise
        self.sessions.add(session)
        return session


class SseSession:
    """One upstream session over a legacy SSE stream."""

    def __init__(self, upstream: SseUpstream, params: ConnectParams, on_message: MessageHandler,
                 headers: Mapping[str, str] | None, credentials: HeadersSource | None = None) -> None:
        self._up = upstream
        self._params = params
        self._on_message = on_message
        self._connect_headers = dict(headers or {})
        self._trace = params.trace_context
        self._credentials = credentials
        self._table = InflightTable()
        self._response: aiohttp.ClientResponse | None = None
        self._events: AsyncIterator[SseEvent] | None = None
        self._endpoint = ""
        self._reader: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._init_result: Message = {}
        self._closed = False
        self._dead = False
        self._reopening = asyncio.Lock()
        self._held = HeldSubscriptions()
        self._clock = SessionClock()

    @property
    def initialize_result(self) -> Message:
        return self._init_result

    async def open(self) -> None:
        # The trace of the request that opened the session rides on the set-up requests only (a re-open is later).
        trace, self._trace = self._trace, None
        setup = with_trace(self._connect_headers, trace)
        headers = self._up.headers(setup, accept="text/event-stream", json_body=False)
        try:
            self._response = await self._up.stream_http.get(self._up.url, headers=headers, allow_redirects=False)
        except aiohttp.ClientConnectionError as exc:
            self._up.connection_failed(exc)
        except aiohttp.ClientError as exc:  # an answer no HTTP parser takes (a malformed status line or header)
            raise GatewayError("upstream_error", f"HTTP error: {type(exc).__name__}") from exc
        self._up.check_status(self._response)
        if self._response.status != 200 or self._response.content_type != "text/event-stream":
            raise GatewayError("upstream_error", f"upstream SSE endpoint answered HTTP {self._response.status}",
                               data={"status": self._response.status})
        self._up.connected()
        # An oversized event fails the call it answers, not the stream every call of the session shares.
        self._events = iter_sse(self._response.content, oversized=self._oversized)
        self._endpoint = await self._read_endpoint(self._events)
        self._reader = asyncio.create_task(self._read(self._events), name=f"customs-{self._up.name}-sse")
        response = await self.request(initialize_message(0, self._params, trace), headers=setup,
                                      on_message=self._on_message, timeout=self._up.config.timeout_s)
        self._init_result = check_initialize(response)
        await self._post(initialized_message(trace), setup)
        self._clock.began(self._up.on_session_end)

    async def _read_endpoint(self, events: AsyncIterator[SseEvent]) -> str:
        try:
            first = await anext(events)
        except StopAsyncIteration:
            first = SseEvent("eof", "")
        except (aiohttp.ClientError, OSError) as exc:
            self._up.connection_failed(exc)
        if first.event != "endpoint" or not first.data.strip():
            raise GatewayError("upstream_error", "upstream SSE stream did not start with an endpoint event")
        try:
            endpoint = urljoin(self._up.url, first.data.strip())
            foreign = not same_origin(endpoint, self._up.url)
        except ValueError as exc:  # no URL at all (an unclosed IPv6 bracket, a port out of range): it escaped
            raise GatewayError("upstream_error", "upstream SSE endpoint is not a URL") from exc
        if foreign:
            raise GatewayError("upstream_error", "upstream SSE endpoint points at another origin")
        return endpoint

    async def request(self, message: Message, *, headers: Mapping[str, str] | None = None,
                      on_message: MessageHandler | None = None, timeout: float | None = None,  # noqa: ASYNC109
                      sent_id: SentId | None = None, refresh: HeadersSource | None = None) -> Message:
        if self._closed:
            raise GatewayError("upstream_unavailable", "upstream SSE stream is closed",
                               data={"upstream": self._up.name})
        self._up.breaker.check()
        if self._dead:
            await self._reopen()
        pending = self._table.open(message, self, on_message)
        if sent_id is not None:
            sent_id(pending.upstream_id, None, self._init_result.get("protocolVersion"))
        limit = timeout or self._up.config.timeout_s
        try:
            async with Deadline(self._up.deadlines, limit) as deadline:
                credential = headers if headers is not None else await self._session_headers()
                outbound = with_id(message, pending.upstream_id)
                if pending.progress_token is not None:
                    # Two calls of one session (stateless clients of one principal share it) may carry the
                    # same token: upstream it is unique (the upstream id), so progress finds its own call.
                    outbound = with_progress_token(outbound, pending.upstream_id)
                await self._post_unbounded(outbound, credential)  # the call's own timeout bounds it
                response = await pending.future
        except TimeoutError as exc:
            if not deadline.expired():
                raise
            # In the background: an upstream that answers nothing may not take the cancellation either.
            self._spawn(self._cancel_upstream(pending.upstream_id, "timeout"))
            raise GatewayError("upstream_timeout", data={"timeout_s": limit, "upstream": self._up.name}) from exc
        except asyncio.CancelledError:
            self._up.breaker.release_trial()
            self._spawn(self._cancel_upstream(pending.upstream_id, "cancelled"))
            raise
        finally:
            self._table.discard(pending)
        self._held.note(message, response)
        return with_id(response, message.get("id"))

    async def _reopen(self) -> None:
        """The upstream ended the stream (it restarted, or dropped the session): a fresh stream and
        `initialize`, as a streamable HTTP session re-opens after expiry. What the old session held at the
        server (subscriptions, its log level) is gone with it."""
        async with self._reopening:
            if not self._dead:
                return  # another call re-opened it meanwhile
            if self._response is not None:
                self._response.close()
            if self._reader is not None:  # (a failed re-open may have left one): its end must not end the new one
                self._reader.cancel()
                await asyncio.gather(self._reader, return_exceptions=True)
            await self._session_headers()  # the set-up credential may have expired by now
            self._dead = False  # open() sends its initialize through request()
            try:
                async with asyncio.timeout(self._up.config.timeout_s):
                    await self._up.handshake(self.open())
            except TimeoutError as exc:
                self._dead = True
                raise GatewayError("upstream_timeout", "upstream did not finish the handshake in time",
                                   data={"upstream": self._up.name}) from exc
            except BaseException:
                self._dead = True
                raise
            self._up.log.info("re-opened the SSE session of %s (its stream had ended)", self._up.name)
        # As after a streamable HTTP session's expiry: the upstream most likely restarted, perhaps as a new
        # version, so its tools are listed (and their pins checked) again before the next call runs.
        await deliver(self._on_message, TOOLS_CHANGED, self._up.log)
        for again in self._held.again():  # in the background: the call that re-opened goes on at once
            self._spawn(subscribe_again(self.request, again, self._up.log))


    async def notify(self, message: Message, *, headers: Mapping[str, str] | None = None) -> None:
        remapped = remap_cancel(message, lambda caller_id: self._table.upstream_id_for(self, caller_id))
        if remapped is not None:
            await self._post(remapped, headers if headers is not None else await self._session_headers())

    async def respond(self, message: Message) -> None:
        await self._post(message, await self._session_headers())

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._clock.ended(self._init_result.get("protocolVersion"))
        self._up.sessions.discard(self)
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        if self._response is not None:
            self._response.close()
        self._table.fail_all(GatewayError("upstream_unavailable", "upstream session closed"))

    # -- internals --------------------------------------------------------------------------------

    async def _session_headers(self) -> dict[str, str]:
        """The credential for a message the session sends on its own, valid now (the set-up one may
        have expired; the credential stage caches it until shortly before expiry)."""
        if self._credentials is not None:
            self._connect_headers = dict(await self._credentials())
        return self._connect_headers

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _post(self, message: Message, headers: Mapping[str, str] | None) -> None:
        """POST one message to the endpoint, taken (202) within the upstream's `timeout_s` (`taken`)."""
        await self._up.taken(self._post_unbounded(message, headers))

    async def _post_unbounded(self, message: Message, headers: Mapping[str, str] | None) -> None:
        body = jsonrpc.dumps(message)
        try:
            async with self._up.http.post(self._endpoint, data=body, headers=self._up.headers(headers),
                                          allow_redirects=False) as response:
                self._up.connected()
                self._up.check_status(response)
                if response.status == 404:
                    raise Unsent("upstream session expired", data={"upstream": self._up.name, "session": "expired"})
                if not 200 <= response.status < 300:
                    raise GatewayError("upstream_error", f"upstream rejected a message (HTTP {response.status})",
                                       data={"status": response.status})
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
            self._up.connection_failed(exc)
        except aiohttp.ClientError as exc:  # an answer no HTTP parser takes (a malformed status line)
            raise GatewayError("upstream_error", f"HTTP error: {type(exc).__name__}") from exc

    async def _cancel_upstream(self, upstream_id: int, reason: str) -> None:
        try:
            async with asyncio.timeout(5):
                headers = await self._session_headers()
                await send_own(self._up.on_notify, cancelled_message(upstream_id, reason),
                               lambda message: self._post(message, headers))
        except (GatewayError, TimeoutError) as exc:
            self._up.log.debug("could not send notifications/cancelled: %s", exc)

    async def _read(self, events: AsyncIterator[SseEvent]) -> None:
        """Dispatch the stream: responses to their waiters, the rest to the right handler."""
        try:
            async for event in events:
                if event.event != "message" or not event.data.strip():
                    continue
                try:
                    message = parse_json(event.data)
                except NotJson as exc:  # NaN / Infinity: the request it answers fails now, not at its timeout
                    failed = [i for i in exc.answers if self._table.fail(i, exc)]
                    self._up.log.warning("%s; failed request(s) %s", exc.message, failed)
                    continue
                except GatewayError:
                    self._up.log.warning("ignoring invalid JSON on the SSE stream")
                    continue
                if not isinstance(message, list):
                    await self._one(message)
                elif self._init_result.get("protocolVersion") in BATCH_REVISIONS:
                    for item in message:  # as if each came in an event of its own (stdio reads them so too)
                        await self._one(item)
                else:
                    self._refuse_batch(message)
        except (aiohttp.ClientError, GatewayError, OSError) as exc:
            self._up.log.info("SSE stream ended: %s", exc)
        finally:
            self._dead = True
            # The upstream ended the stream (a close() ended the clock already, so this records nothing then).
            self._clock.ended(self._init_result.get("protocolVersion"), "upstream_unavailable")
            self._table.fail_all(GatewayError("upstream_unavailable", "upstream closed the SSE stream",
                                              data={"upstream": self._up.name}))

    async def _one(self, message: Any) -> None:
        if not isinstance(message, dict):
            self._up.log.warning("ignoring a non-object message on the SSE stream")
        elif "method" not in message:
            if not self._table.resolve(message):
                self._up.log.debug("response for unknown id %r ignored", message.get("id"))
        else:
            await self._route(message)

    def _refuse_batch(self, batch: list[Any]) -> None:
        """A JSON-RPC batch under a revision without batches: the calls it answers fail now, not at their timeout;
        the rest of it is dropped (as over stdio, gateway/transport/stdio_inbound.py)."""
        version = self._init_result.get("protocolVersion")
        error = GatewayError("upstream_error", f"upstream sent a JSON-RPC batch, which protocol {version} does "
                             "not allow", data={"upstream": self._up.name})
        answered = [m.get("id") for m in batch if isinstance(m, dict) and "method" not in m]
        failed = [i for i in answered if self._table.fail(i, error)]
        self._up.log.warning("%s; %s", error.message, f"failed request(s) {failed}" if failed else "dropped it")

    def _oversized(self, event: Oversized) -> None:
        answered = event.answered_id()
        error = GatewayError("upstream_error", f"upstream sent a message over {MAX_MESSAGE_BYTES} bytes",
                             data={"upstream": self._up.name})
        failed = answered is not None and self._table.fail(answered, error)
        self._up.log.warning("%s; %s", error.message, f"failed request {answered}" if failed else "dropped it")

    async def _route(self, message: Message) -> None:
        handler: MessageHandler | None = self._on_message
        guessed = False
        if message.get("method") not in BROADCAST_METHODS:
            pending, message, guessed = self._table.route(message)
            if pending is not None and pending.on_message is not None:
                handler = pending.on_message
            elif pending is None and message.get("method") == "notifications/progress":
                return  # its call is over: the token (an upstream id) means nothing to the client
        await deliver(handler, message, self._up.log, guessed)
