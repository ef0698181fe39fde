"""Streamable HTTP upstreams (MCP 2025-03-26 and later): one POST per message, answers as JSON or SSE.

A session is opened with initialize → Mcp-Session-Id → notifications/initialized, after which every
message carries the session id and MCP-Protocol-Version. A GET stream (when the upstream offers
one: 405 means it does not) carries server-initiated messages and is resumed with Last-Event-ID.
A request's answer is read, and its SSE stream resumed when it ends early, in streamable_answer.py.
Each request gets an upstream id from a per-session counter; the caller's id is restored on the
answer. A 404 for a request that carried the session id means the upstream forgot the session:
that call fails with upstream_unavailable and the next call opens a fresh upstream session.
Requests the session makes on its own (notifications, answers, cancellations, GET streams, re-open,
DELETE) ask the credential source each time, so a short-lived set-up credential is never reused stale.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import time
from collections.abc import Mapping
from contextlib import suppress
from typing import Any

import aiohttp

from gateway import jsonrpc
from gateway.errors import GatewayError
from gateway.transport.base import ConnectParams, HeadersSource, Message, MessageHandler, SentId
from gateway.transport.common import (
    BATCH_REVISIONS,
    TOOLS_CHANGED,
    HeldSubscriptions,
    SessionClock,
    Unsent,
    cancelled_message,
    check_initialize,
    id_key,
    initialize_message,
    initialized_message,
    is_response,
    remap_cancel,
    send_own,
    subscribe_again,
    with_id,
    with_trace,
)
from gateway.transport.deadlines import Deadline
from gateway.transport.events import MAX_MESSAGE_BYTES, Oversized, iter_sse, parse_json
from gateway.transport.http_base import HttpUpstreamBase, deliver
from gateway.transport.streamable_answer import read_answer

_GET_STREAM_MAX_FAILURES = 5
# A session id as the MCP spec allows one: visible ASCII only (a control character, which aiohttp refuses to send,
# raised ValueError on the next request carrying it).
_SESSION_ID = re.compile(r"[\x21-\x7e]+")


class StreamableHttpUpstream(HttpUpstreamBase):
    """A configured streamable-HTTP upstream; `connect` opens one upstream session per client session."""

    async def connect(self, params: ConnectParams, on_message: MessageHandler,
                      headers: Mapping[str, str] | None = None, *,
                      credentials: HeadersSource | None = None) -> StreamableHttpSession:
        self.breaker.check()
        session = StreamableHttpSession(self, params, on_message, headers, credentials)
        try:
            await self.handshake(session.open())
        except BaseException:
            await session.close()
            raise
        self.sessions.add(session)
        return session


class StreamableHttpSession:
    """One upstream MCP session over streamable HTTP."""

    def __init__(self, upstream: StreamableHttpUpstream, params: ConnectParams, on_message: MessageHandler,
                 headers: Mapping[str, str] | None, credentials: HeadersSource | None = None) -> None:
        self._up = upstream
        self._params = params
        self._on_message = on_message
        self._connect_headers = dict(headers or {})
        self._credentials = credentials
        self._ids = itertools.count(1)
        self._session_id: str | None = None
        self._version: str | None = None
        self._init_result: Message = {}
        self._inflight: dict[tuple[str, Any], int] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._listener: asyncio.Task[None] | None = None
        self._get_refused = False  # the upstream has no GET stream (405): not asked again
        self._held = HeldSubscriptions()
        self._stream_ready = asyncio.Event()
        self._expired = False
        self._closed = False
        self._clock = SessionClock()

    @property
    def initialize_result(self) -> Message:
        return self._init_result

    @property
    def session_id(self) -> str | None:
        return self._session_id

    @property
    def upstream(self) -> StreamableHttpUpstream:
        return self._up

    @property
    def protocol_version(self) -> str | None:
        """The revision the upstream negotiated (None before initialize, or for a stateless upstream)."""
        return self._version

    async def open(self) -> None:
        """initialize → record session id and version → notifications/initialized → GET stream."""
        reopening = self._session_id is not None
        self._session_id, self._version, self._expired = None, None, False
        # The request that opened the session lends its trace to the first set-up only: a re-open is much later.
        trace = None if reopening else self._params.trace_context
        message = initialize_message(next(self._ids), self._params, trace)
        try:
            async with asyncio.timeout(self._up.config.timeout_s):
                # The first open uses the credential connect() was given; a re-open may be much later.
                credential = await self._session_headers() if reopening else self._connect_headers
                setup = with_trace(credential, trace)
                response = await self._exchange(message, setup, self._on_message, capture=True)
                self._init_result = check_initialize(response)
                self._version = self._init_result["protocolVersion"]
                await self._post_one_way(initialized_message(trace), setup)
                self._clock.began(self._up.on_session_end)
        except TimeoutError as exc:
            raise GatewayError("upstream_timeout", "upstream did not answer initialize in time") from exc
        if reopening and self._listener is not None and not self._listener.done():
            # The old session's stream, retrying with back-off (up to 5 s): the new one's opens now, so what
            # the upstream sends on it from the start (resource updates) is not lost.
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
        if self._listener is None or self._listener.done():
            self._stream_ready.clear()
            self._get_refused = False
            self._listener = asyncio.create_task(self._listen(), name=f"customs-{self._up.name}-get-stream")
            # Wait (briefly) until the GET stream is open or refused: server-initiated messages sent
            # before it exists would be lost by servers without an event store.
            with suppress(TimeoutError):
                async with asyncio.timeout(min(5.0, self._up.config.timeout_s)):
                    await self._stream_ready.wait()
        if reopening:  # in the background: the call that found the session expired goes on at once
            for again in self._held.again():
                self._spawn(subscribe_again(self.request, again, self._up.log))

    async def request(self, message: Message, *, headers: Mapping[str, str] | None = None,
                      on_message: MessageHandler | None = None, timeout: float | None = None,  # noqa: ASYNC109
                      sent_id: SentId | None = None, refresh: HeadersSource | None = None) -> Message:
        if self._closed:
            raise GatewayError("upstream_unavailable", "upstream session closed")
        self._up.breaker.check()
        if self._expired:  # the upstream forgot the session: start a fresh one for this new call
            await self._up.handshake(self.open())
        upstream_id = next(self._ids)
        if sent_id is not None:
            sent_id(upstream_id, self._session_id, self._version)  # after a re-open: the new session's
        key = id_key(message.get("id"))
        self._inflight[key] = upstream_id
        limit = timeout or self._up.config.timeout_s
        try:
            async with Deadline(self._up.deadlines, limit) as deadline:
                credential = headers if headers is not None else await self._session_headers()
                # A resumed answer stream asks again: the first credential may have expired by then.
                renew = refresh if headers is not None else self._session_headers
                response = await self._exchange(with_id(message, upstream_id), credential,
                                                on_message or self._on_message, refresh=renew)
        except TimeoutError as exc:
            if not deadline.expired():
                raise
            # In the background: an upstream that answers nothing may not take the cancellation either.
            self._spawn(self._cancel_upstream(upstream_id, "timeout"))
            raise GatewayError("upstream_timeout", data={"timeout_s": limit, "upstream": self._up.name}) from exc
        except asyncio.CancelledError:
            self._up.breaker.release_trial()
            self._spawn(self._cancel_upstream(upstream_id, "cancelled"))
            raise
        finally:
            if self._inflight.get(key) == upstream_id:
                del self._inflight[key]
        self._held.note(message, response)
        if self._listener is not None and self._listener.done() and not (self._get_refused or self._closed):
            # Given up while the upstream was away: it answers again, so its notifications may flow again.
            self._listener = asyncio.create_task(self._listen(), name=f"customs-{self._up.name}-get-stream")
        return with_id(response, message.get("id"))

    async def notify(self, message: Message, *, headers: Mapping[str, str] | None = None) -> None:
        remapped = remap_cancel(message, lambda caller_id: self._inflight.get(id_key(caller_id)))
        if remapped is not None:
            await self._post_one_way(remapped, headers if headers is not None else await self._session_headers())

    async def respond(self, message: Message) -> None:
        await self._post_one_way(message, await self._session_headers())

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._clock.ended(self._version)
        self._up.sessions.discard(self)
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        if self._session_id and not self._expired:
            with suppress(aiohttp.ClientError, TimeoutError, OSError):
                async with asyncio.timeout(5):
                    headers = self.headers(await self._delete_credential(), json_body=False)
                    async with self._up.http.delete(self._up.url, headers=headers, allow_redirects=False):
                        pass  # 405 (termination not supported) and errors are fine: we are done either way

    def headers(self, extra: Mapping[str, str] | None, **kwargs: Any) -> dict[str, str]:
        """This session's headers for a request to the upstream, `extra` (a credential, trace context) added."""
        return self._up.headers(extra, session_id=self._session_id, protocol_version=self._version, **kwargs)

    async def check_expired(self, response: aiohttp.ClientResponse) -> None:
        """Raise upstream_unavailable if `response` is the 404 of an upstream that forgot this session."""
        if response.status == 404 and self._session_id:
            self._expired = True
            self._clock.ended(self._version, "upstream_unavailable")  # the upstream ended it, not the gateway
            # An upstream that forgot the session has most likely restarted, perhaps as a new version:
            # what we know of its tools is stale, so the next call re-lists them (and re-checks pins)
            # before it runs. The client hears list_changed, as it would from a server that changed.
            await deliver(self._on_message, TOOLS_CHANGED, self._up.log)
            raise Unsent("upstream session expired", data={"upstream": self._up.name, "session": "expired"})

    # -- internals --------------------------------------------------------------------------------

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _session_headers(self) -> dict[str, str]:
        """The credential for a request the session makes on its own, valid now.

        Asked of the source each time (the credential stage caches it until shortly before expiry);
        without a source (tests, tools listing) the set-up headers are all there is."""
        if self._credentials is not None:
            self._connect_headers = dict(await self._credentials())
        return self._connect_headers

    async def _delete_credential(self) -> dict[str, str]:
        """The DELETE's credential. Once none can be had (the task ended: every token is revoked), the
        DELETE still goes, without one, rather than with a stale token; the upstream decides."""
        try:
            return await self._session_headers()
        except GatewayError as exc:
            self._up.log.debug("no credential for the session DELETE: %s", exc)
            return {}

    async def _exchange(self, message: Message, headers: Mapping[str, str] | None, handler: MessageHandler | None,
                        *, capture: bool = False, refresh: HeadersSource | None = None) -> Message:
        """POST one request and read its answer (JSON or an SSE stream ending in the response)."""
        body = jsonrpc.dumps(message)
        try:
            async with self._up.http.post(self._up.url, data=body, headers=self.headers(headers),
                                          allow_redirects=False) as response:
                self._up.connected()
                if capture:
                    self._session_id = response.headers.get("Mcp-Session-Id") or None
                    if self._session_id is not None and not _SESSION_ID.fullmatch(self._session_id):
                        self._session_id = None  # (nor does close() DELETE with it)
                        raise GatewayError("upstream_error", "upstream named a session id that is not visible ASCII",
                                           data={"upstream": self._up.name})
                return await read_answer(self, response, message["id"], handler, headers, refresh)
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
            self._up.connection_failed(exc)
        except aiohttp.ClientError as exc:
            raise GatewayError("upstream_error", f"HTTP error: {type(exc).__name__}") from exc

    async def _post_one_way(self, message: Message, headers: Mapping[str, str] | None) -> None:
        """POST a notification or a response; the upstream acknowledges with 202 (any 2xx accepted), within
        its `timeout_s` (`taken`)."""
        await self._up.taken(self._post_one_way_unbounded(message, headers))

    async def _post_one_way_unbounded(self, message: Message, headers: Mapping[str, str] | None) -> None:
        body = jsonrpc.dumps(message)
        try:
            async with self._up.http.post(self._up.url, data=body, headers=self.headers(headers),
                                          allow_redirects=False) as response:
                self._up.check_status(response)
                await self.check_expired(response)
                if not 200 <= response.status < 300:
                    raise GatewayError("upstream_error", f"upstream rejected a notification (HTTP {response.status})",
                                       data={"status": response.status})
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
            self._up.connection_failed(exc)
        except aiohttp.ClientError as exc:  # an answer no HTTP parser takes (a malformed status line): as _exchange
            raise GatewayError("upstream_error", f"HTTP error: {type(exc).__name__}") from exc

    async def _cancel_upstream(self, upstream_id: int, reason: str) -> None:
        """Best effort: tell the upstream to stop working on a request we gave up on."""
        try:
            async with asyncio.timeout(5):
                headers = await self._session_headers()
                await send_own(self._up.on_notify, cancelled_message(upstream_id, reason),
                               lambda message: self._post_one_way(message, headers))
        except (GatewayError, TimeoutError) as exc:
            self._up.log.debug("could not send notifications/cancelled: %s", exc)

    async def _listen(self) -> None:
        """Keep the GET stream open (resuming with Last-Event-ID) and hand its messages on."""
        failures, last_event_id = 0, None
        while not self._closed and failures < _GET_STREAM_MAX_FAILURES:
            started, useful = time.monotonic(), False
            try:
                headers = self.headers(await self._session_headers(), accept="text/event-stream", json_body=False)
                if last_event_id:
                    headers["Last-Event-ID"] = last_event_id
                async with self._up.stream_http.get(self._up.url, headers=headers, allow_redirects=False) as resp:
                    self._stream_ready.set()
                    if resp.status in (405, 404) or 300 <= resp.status < 400:
                        self._up.log.debug("no GET stream (HTTP %s)", resp.status)
                        self._get_refused = True
                        return
                    if resp.status == 200 and resp.content_type == "text/event-stream":
                        # An event past the cap is skipped, not the stream's end: a reconnect would only get it
                        # replayed (Last-Event-ID) until the stream was given up.
                        async for event in iter_sse(resp.content, oversized=self._oversized_on_get):
                            last_event_id = event.id or last_event_id
                            useful = True
                            if event.event == "message" and event.data.strip():
                                await self._deliver_raw(event.data)
            except (aiohttp.ClientError, GatewayError, OSError) as exc:
                self._up.log.debug("GET stream broke: %s", exc)
            except ValueError as exc:  # aiohttp refuses the last event id as Last-Event-ID (a control character)
                self._up.log.debug("GET stream not resumable (%s): reopened without Last-Event-ID", exc)
                last_event_id = None
            finally:
                self._stream_ready.set()
            failures = 0 if useful or time.monotonic() - started > 30 else failures + 1
            # Back-off between reconnects of a long-lived stream (not synchronisation).
            await asyncio.sleep(min(5.0, 0.2 * 2 ** failures))
        if not self._closed:
            self._up.log.info("GET stream of %s given up after %d failures; the next request that gets an "
                              "answer opens it again", self._up.name, failures)

    def _oversized_on_get(self, event: Oversized) -> None:
        self._up.log.warning("dropped a message over %d bytes on the GET stream of %s", MAX_MESSAGE_BYTES,
                             self._up.name)

    async def _deliver_raw(self, data: str) -> None:
        try:
            message = parse_json(data)
        except GatewayError:
            self._up.log.warning("ignoring invalid JSON on the GET stream")
            return
        if isinstance(message, list) and self._version in BATCH_REVISIONS:
            # 2025-03-26 may batch what it sends (its one revision with batches): each as if in an event of its own.
            for item in message:
                if isinstance(item, dict) and not is_response(item):
                    await deliver(self._on_message, item, self._up.log)
        elif isinstance(message, dict) and not is_response(message):
            await deliver(self._on_message, message, self._up.log)
