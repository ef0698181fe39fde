"""A streamable HTTP request's answer: a JSON body, or an SSE stream resumed until the answer arrives.

A request's SSE answer stream that ends (or breaks) before the answer, after events with ids, is
resumed with GET + Last-Event-ID after the server's `retry`, until the answer arrives, the call's
timeout passes or reconnects stop making progress (2025-11-25 "SSE polling"). Messages before the
answer (progress, logs, server→client requests) go to the call's handler.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, Protocol

import aiohttp

from gateway.errors import GatewayError
from gateway.transport.base import HeadersSource, Message, MessageHandler
from gateway.transport.common import BATCH_REVISIONS, Unsent, check_response, is_response
from gateway.transport.events import SseCursor, iter_sse, media_type, parse_json, read_json_body
from gateway.transport.http_base import HttpUpstreamBase, deliver

# Resuming a request's stream: reconnects in a row that bring no new event before giving up, the
# wait when the server named none (the SDK client's default) and the most of a server's `retry` we honour.
_RESUME_MAX_STALLS = 3
_RESUME_DEFAULT_RETRY_MS = 1000
_RESUME_MAX_RETRY_MS = 10_000


class AnswerSession(Protocol):
    """What reading an answer needs of the upstream session it came on (StreamableHttpSession)."""

    @property
    def upstream(self) -> HttpUpstreamBase: ...

    @property
    def protocol_version(self) -> str | None: ...

    def headers(self, extra: Mapping[str, str] | None, **kwargs: Any) -> dict[str, str]:
        """The session's headers for a request to the upstream, `extra` (a credential) added."""

    async def check_expired(self, response: aiohttp.ClientResponse) -> None:
        """Raise upstream_unavailable when `response` says the upstream forgot the session."""


async def read_answer(session: AnswerSession, response: aiohttp.ClientResponse, upstream_id: int,
                      handler: MessageHandler | None, credential: Mapping[str, str] | None,
                      refresh: HeadersSource | None = None) -> Message:
    """The answer to the request `upstream_id` that got `response`."""
    session.upstream.check_status(response)
    if response.status == 404:  # tested here: the usual answer pays for no coroutine
        await session.check_expired(response)
    content_type = media_type(response.headers.get("Content-Type"))
    if response.status == 200 and content_type == "text/event-stream":
        return await _read_stream(session, response, upstream_id, handler, credential, refresh)
    if content_type != "application/json":
        raise GatewayError("upstream_error", f"unexpected upstream answer (HTTP {response.status}, "
                           f"{content_type})", data={"status": response.status})
    answer = await read_json_body(response)
    if response.status != 200:
        # A JSON-RPC error explaining the rejection is passed through; anything else is invalid.
        error = answer.get("error") if isinstance(answer, dict) else None
        if not isinstance(error, dict):
            raise GatewayError("upstream_error", f"upstream answered HTTP {response.status}",
                               data={"status": response.status})
        return {"jsonrpc": "2.0", "id": upstream_id, "error": error}
    return check_response(answer, upstream_id)


async def _read_stream(session: AnswerSession, response: aiohttp.ClientResponse, upstream_id: int,
                       handler: MessageHandler | None, credential: Mapping[str, str] | None,
                       refresh: HeadersSource | None = None) -> Message:
    """The answer from a request's SSE stream, resuming it with GET + Last-Event-ID when it ends early.

    Only a stream that gave event ids can be resumed; otherwise an early end fails as before.
    The caller's timeout bounds the whole; stalls (reconnects with no new event) are bounded here."""
    cursor = SseCursor()
    answer = await _read_events(session, response, upstream_id, handler, cursor)
    stalls = 0
    while answer is None:
        if cursor.last_id is None or stalls >= _RESUME_MAX_STALLS:
            raise GatewayError("upstream_unavailable", "upstream closed the stream before answering",
                               data={"upstream": session.upstream.name})
        seen = cursor.last_id
        retry_ms = _RESUME_DEFAULT_RETRY_MS if cursor.retry_ms is None else cursor.retry_ms
        # The server asked for this pause before the reconnect (SSE `retry`): not synchronisation.
        await asyncio.sleep(min(retry_ms, _RESUME_MAX_RETRY_MS) / 1000)
        answer = await _resume(session, upstream_id, handler,
                               credential if refresh is None else await refresh(), cursor)
        stalls = 0 if cursor.last_id != seen else stalls + 1
    return answer


async def _resume(session: AnswerSession, upstream_id: int, handler: MessageHandler | None,
                  credential: Mapping[str, str] | None, cursor: SseCursor) -> Message | None:
    """One reconnect of a request's stream: the answer, or None if it ended (or failed) again."""
    up = session.upstream
    headers = session.headers(credential, accept="text/event-stream", json_body=False)
    headers["Last-Event-ID"] = cursor.last_id or ""
    try:
        async with up.http.get(up.url, headers=headers, allow_redirects=False) as response:
            up.check_status(response)
            try:
                await session.check_expired(response)
            except Unsent as exc:  # the upstream took the call before its stream broke: it may have run
                raise GatewayError(exc.reason, exc.message, data=exc.data) from None
            if response.status != 200 or response.content_type != "text/event-stream":
                raise GatewayError("upstream_error", f"upstream refused to resume the stream "
                                   f"(HTTP {response.status})", data={"status": response.status})
            return await _read_events(session, response, upstream_id, handler, cursor)
    except aiohttp.ClientConnectionError as exc:
        up.log.debug("resuming the stream failed: %s", exc)
        return None
    except ValueError as exc:  # aiohttp refuses to send the header (a control character): it escaped, internal_error
        raise GatewayError("upstream_error", "upstream sent an event id no Last-Event-ID can carry",
                           data={"upstream": up.name}) from exc


async def _read_events(session: AnswerSession, response: aiohttp.ClientResponse, upstream_id: int,
                       handler: MessageHandler | None, cursor: SseCursor) -> Message | None:
    """Read one stream up to the answer; None when it ends or breaks first (the cursor says where)."""
    try:
        async for event in iter_sse(response.content, cursor=cursor):
            if event.event != "message" or not event.data.strip():
                continue  # priming events (id only) and foreign event types carry no message
            message = parse_json(event.data)
            if type(message) is list:
                if (answer := await _batch(session, message, upstream_id, handler)) is not None:
                    return answer
                continue
            if not isinstance(message, dict):
                raise GatewayError("upstream_error", "upstream sent an invalid JSON-RPC message")
            if is_response(message):
                return check_response(message, upstream_id)
            await deliver(handler, message, session.upstream.log)
    except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError):
        if cursor.last_id is None:
            raise  # nothing to resume from: a broken connection, as before
    return None


async def _batch(session: AnswerSession, batch: list[Any], upstream_id: int, handler: MessageHandler | None
                 ) -> Message | None:
    """A JSON-RPC batch on a request's stream: from an upstream that negotiated 2025-03-26 (its one revision with
    batches: "these responses MAY be batched"), each member as if it came in an event of its own, the answer returned
    once the whole batch is handed on; under any other revision it breaks the protocol, upstream_error."""
    if session.protocol_version not in BATCH_REVISIONS:
        raise GatewayError("upstream_error", f"upstream sent a JSON-RPC batch, which protocol revision "
                           f"{session.protocol_version} does not have", data={"upstream": session.upstream.name})
    if not batch or not all(isinstance(item, dict) for item in batch):
        raise GatewayError("upstream_error", "upstream sent an invalid JSON-RPC batch")
    answer = None
    for item in batch:
        if is_response(item):
            if answer is not None:  # one request was sent on this stream: a second answer answers nothing
                raise GatewayError("upstream_error", "upstream sent two answers to one request in a batch")
            answer = check_response(item, upstream_id)
        else:
            await deliver(handler, item, session.upstream.log)
    return answer
