"""JSON-RPC batches on POST: only sessions of the 2025-03-26 revision have them (later ones removed them).

A batch of notifications and responses is accepted with 202. One that holds requests is answered
as one JSON array, or, when a request sends interim messages and the client accepts SSE, as one SSE
stream carrying each answer as its own event, sent as its call ends (a call held for approval holds back
no other answer). The requests run concurrently, each as one call through the same router and pipeline as a
single request; `initialize` may not be batched.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from aiohttp import web

from gateway import jsonrpc
from gateway.context import Principal
from gateway.credentials.agent_token import without_agent_token
from gateway.errors import GatewayError, forget_traceback, to_wire
from gateway.http.guards import error_response
from gateway.http.streams import ResponseChannel
from gateway.sessions import Session

if TYPE_CHECKING:
    from gateway.http.mcp import McpEndpoint

BATCH_VERSION = "2025-03-26"


async def answer_batch(endpoint: McpEndpoint, request: web.Request, view: str | None, principal: Principal,
                       batch: jsonrpc.Batch, sse_ok: bool, times: tuple[int, int],
                       body: bytes | None = None) -> web.StreamResponse:
    """`times`: when the POST arrived and when it was identified (time.time_ns()): each member's SERVER span starts
    at the POST and records the one identify as its `customs.identify` child, as a single request's does. `body`
    (the raw POST) lets members skip the JSON encoding the agent-token search otherwise needs."""
    try:
        session = endpoint.batch_session(request, view, principal)
        messages = [m if isinstance(m, GatewayError) else without_agent_token(m, principal, body)
                    for m in jsonrpc.classify_batch(batch.items)]
    except GatewayError as exc:
        return error_response(exc)
    replies: list[dict[str, Any]] = []
    requests: list[jsonrpc.Message] = []
    ids: set[Any] = set()  # (1 and "1" are apart: a str never equals an int; a bool is no id)
    for message in messages:
        if isinstance(message, GatewayError):  # JSON-RPC: an invalid member, with its id when readable
            replies.append(to_wire(message, jsonrpc.refused_id(message))[0])
        elif message.kind == "request" and message.method == "initialize":
            refused = GatewayError("invalid_request", "Invalid request: initialize must not be part of a batch")
            replies.append(to_wire(refused, message.id)[0])
        elif message.kind == "request" and message.id in ids:
            # MCP: an id is used once in a session. Run, its answer could not be told from the first's; and whether
            # run_call found it in flight depended on whether the first had already ended (a ping at once).
            refused = GatewayError("invalid_request", "Invalid request: this id is already used in this batch")
            replies.append(to_wire(refused, message.id)[0])
        elif message.kind == "request":
            ids.add(message.id)
            requests.append(message)
        else:
            try:
                await endpoint._accept_one_way(session, message, principal, http=request, times=times)
            except GatewayError as exc:
                replies.append(to_wire(exc, None)[0])
    if not requests and not replies:
        return web.Response(status=202)
    channel = ResponseChannel(request, {}, sse_allowed=sse_ok, replay=endpoint.streams.post_replay,
                              session_id=session.id)
    calls = (_answered(endpoint, request, session, principal, message, channel, times) for message in requests)
    try:
        await asyncio.gather(*calls)
    except BaseException:
        # The connection dropped and took the calls with it: a resuming GET (the stream's events have ids) replays
        # what went out and then ends, instead of waiting for answers that will never come.
        channel.keep_answer(None)
        raise
    return await channel.finish_batch(replies)


async def _answered(endpoint: McpEndpoint, request: web.Request, session: Session, principal: Principal,
                    message: jsonrpc.Message, channel: ResponseChannel, times: tuple[int, int]) -> None:
    """One request's answer, handed to the channel as the call ends: sent at once when the batch answers on a
    stream, so a call held for approval does not hold back the others' answers until a person decides."""
    await channel.answer_now(await _call(endpoint, request, session, principal, message, channel, times))


async def _call(endpoint: McpEndpoint, request: web.Request, session: Session, principal: Principal,
                message: jsonrpc.Message, channel: ResponseChannel, times: tuple[int, int]) -> dict[str, Any]:
    """One request of the batch, in a task of its own (so a cancellation withdraws just that call)."""
    try:
        if endpoint.observability is None:
            return (await endpoint.run_call(session, principal, message, channel))[0]
        with endpoint.observability.request(request.headers, message.method, message.params, message.id,
                                            principal=principal, session_id=session.id,
                                            protocol_version=session.protocol_version, http=request,
                                            view=session.view, start_ns=times[0], identify_ns=times) as trace:
            return (await endpoint.run_call(session, principal, message, channel, trace))[0]
    except GatewayError as exc:  # refused before it ran (an id already in flight)
        reply = to_wire(exc, message.id)[0]
        forget_traceback(exc)
        return reply
