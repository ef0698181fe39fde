"""Legacy HTTP+SSE inbound (protocol 2024-11-05) for old clients: GET /sse, POST /messages.

The client opens `GET /sse` (or `/sse/{upstream}`), receives an `endpoint` event naming the URL to
POST messages to, and reads every response on that stream. The session, identity binding,
router and pipeline are the same as for Streamable HTTP, and so is the tracing: each request runs in
the same `Observability.request` block (SERVER span, identify child, duration metric).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from aiohttp import web

from gateway import jsonrpc
from gateway.credentials.agent_token import without_agent_token
from gateway.errors import GatewayError, forget_traceback, to_wire
from gateway.http import cors
from gateway.http.guards import error_response, expect_body_later, read_body, require_json
from gateway.http.mcp import McpEndpoint, log_failure
from gateway.http.session_stream import draining
from gateway.http.streams import SSE_HEADERS, ClientGone
from gateway.http.versions import initialize_result, negotiate_version
from gateway.identity.metadata import split_base
from gateway.router import Inbound
from gateway.server_messages import drop_server_requests
from gateway.session import STREAM_END, Session

log = logging.getLogger("customs.http.sse")
LEGACY_VERSION = "2024-11-05"


class LegacySseEndpoint:
    def __init__(self, endpoint: McpEndpoint) -> None:
        self._mcp = endpoint

    async def stream(self, request: web.Request) -> web.StreamResponse:
        try:
            # Identified before the name is checked, as /mcp/{upstream} is (mcp.py: _identify): without a token an
            # unknown name gets the 401 a configured one gets (its challenge names /mcp either way), not a 404
            # that told the configured names apart.
            principal = await self._mcp._identify(request)
            view = self._mcp._view(request)
            if self._mcp.streams.closing:  # draining: reconnect elsewhere or after the restart
                return error_response(draining())
            session = self._mcp.sessions.create(principal, view, LEGACY_VERSION, None, None)
            session.legacy_sse = True
        except GatewayError as exc:  # including a session cap reached (rate_limited)
            return error_response(exc)
        response = web.StreamResponse(status=200, headers=SSE_HEADERS)
        cors.share(request, response)
        await response.prepare(request)
        session.get_stream_open = True
        # A client that stopped reading while its answers piled up: the connection is cut (the write it
        # blocks returns), so the client sees its stream end instead of waiting for answers never sent.
        session.close_stream = functools.partial(_abort, request)
        with self._mcp.streams.legacy() as me:
            try:
                # Under listen.public_url's path: behind a proxy that publishes the gateway under a prefix and strips
                # it, a root path would resolve to the proxy's own /messages, which it does not forward.
                prefix = split_base(self._mcp.resource_url)[1]
                await response.write(f"event: endpoint\ndata: {prefix}/messages?session_id={session.id}\n\n".encode())
                while not session.closed:
                    try:
                        queued = await asyncio.wait_for(session.outbox.get(), self._mcp.keepalive_s)
                    except TimeoutError:
                        await response.write(b": keep-alive\n\n")
                        continue
                    if queued is STREAM_END:  # the session ended (idle expiry): the stream with it
                        break
                    _, message = queued
                    await response.write(b"event: message\ndata: " + jsonrpc.dumps(message) + b"\n\n")
            except (ConnectionResetError, ClientGone):
                pass
            except asyncio.CancelledError:
                if not me.replaced:  # the client went away
                    raise
                me.task.uncancel()  # the gateway is shutting down: end the stream normally
            finally:
                session.get_stream_open = False
                session.close_stream = None
                await self._mcp.sessions.end(session)
        return response

    async def message(self, request: web.Request) -> web.StreamResponse:
        request_id: Any = None
        try:
            require_json(request)
            started = time.time_ns()
            principal = await self._mcp._identify(request)
            identified = time.time_ns()
            # The body before the session, as POST /mcp reads it: a refused session answers the request's own id.
            body = await read_body(request, self._mcp.max_body_bytes, self._mcp.body_timeout_s)
            message = without_agent_token(jsonrpc.parse(body, max_depth=self._mcp.max_json_depth), principal, body)
            request_id = message.id if message.kind == "request" else None
            session_id = request.query.get("session_id", "")
            if not session_id:  # as POST /mcp without Mcp-Session-Id (and the SDK's own SSE server: 400)
                raise GatewayError("session_required", "session_id query parameter required")
            session = self._mcp.sessions.get_legacy(session_id, principal)
            if message.kind != "request":  # timed as on /mcp: the connection's network.* and the session's protocol
                await self._mcp._accept_one_way(session, message, principal, http=request,
                                                times=(started, identified))
            elif message.method == "initialize":
                negotiate(session, message.params)
                with self._observed(request, session, principal, message, (started, identified)) as trace:
                    await self._initialize(session, message, trace)
            elif message.id in session.inflight:  # refused as POST /mcp refuses it (mcp.py: run_call)
                raise GatewayError("invalid_request",
                                   "Invalid request: this id is already in use by a call in flight")
            else:
                # The block is made here (the POST's headers, its arrival time) and entered in the task.
                observed = self._observed(request, session, principal, message, (started, identified))
                task = asyncio.create_task(self._run(session, principal, message, observed))
                session.inflight[message.id] = task
        except GatewayError as exc:
            return error_response(exc, jsonrpc.refused_id(exc, request_id))
        return web.Response(status=202, text="Accepted")

    def _observed(self, request: web.Request, session: Session, principal: Any, message: jsonrpc.Message,
                  identify_ns: tuple[int, int]) -> AbstractContextManager[Any]:
        """The request's `Observability.request` block, as gateway/http/mcp.py's post() opens it."""
        obs = self._mcp.observability
        if obs is None:
            return nullcontext(None)
        return obs.request(request.headers, message.method, message.params, message.id, principal=principal,  # type: ignore[no-any-return]
                           session_id=session.id, protocol_version=session.protocol_version,
                           start_ns=identify_ns[0], identify_ns=identify_ns, http=request, view=session.view)

    async def _initialize(self, session: Session, message: jsonrpc.Message, trace: Any = None) -> None:
        try:
            if session.view is not None:
                upstream = await self._mcp.sessions.upstream_session(session, session.view)
                session.init_result = upstream.initialize_result
            reply = jsonrpc.result(message.id, initialize_result(session))
        except Exception as exc:
            log_failure(exc)
            if trace is not None:
                trace.fail(exc)
            reply = to_wire(exc, message.id)[0]
        session.stream_event(reply)

    async def _run(self, session: Session, principal: Any, message: jsonrpc.Message,
                   observed: AbstractContextManager[Any]) -> None:
        async def send(out: dict[str, Any]) -> None:
            session.stream_event(out)

        with observed as trace:
            inbound = Inbound(session=session, principal=principal, message=message, send=send,
                              trace_id=trace.trace_id if trace is not None else None)
            try:
                result = await self._mcp.router.dispatch(inbound)
                if trace is not None:
                    trace.answered(result)
                reply = jsonrpc.result(message.id, result)
            except asyncio.CancelledError:
                reply = self._failed(trace, GatewayError("request_cancelled"), message.id)
            except Exception as exc:
                log_failure(exc)  # as on POST /mcp: a bug answered internal_error leaves a trace in the log
                reply = self._failed(trace, exc, message.id)
            finally:
                session.inflight.pop(message.id, None)
                if session.server_requests:  # what the upstream asked on this call's behalf is moot now
                    drop_server_requests(session, inbound)
        session.stream_event(reply)  # after the block: the span and metric are recorded once the answer is known

    @staticmethod
    def _failed(trace: Any, exc: BaseException, request_id: Any) -> dict[str, Any]:
        """The error answer; the SERVER span is marked with it (as mcp.py's `_answer` does)."""
        if trace is not None:
            trace.fail(exc)
        reply = to_wire(exc, request_id)[0]
        forget_traceback(exc)
        return reply

    def routes(self) -> list[web.RouteDef]:
        # With or without a trailing slash, as /mcp (gateway/http/mcp.py: routes).
        streams = [web.get(path, self.stream, allow_head=False)
                   for path in ("/sse", "/sse/", "/sse/{upstream}", "/sse/{upstream}/")]
        posts = [web.post(path, self.message, expect_handler=expect_body_later) for path in ("/messages", "/messages/")]
        return [*streams, *posts]


def _abort(request: web.BaseRequest) -> None:
    if request.transport is not None:
        request.transport.abort()


def negotiate(session: Session, params: dict[str, Any]) -> None:
    """What an `initialize` tells the session: client info, capabilities, the answered protocol version."""
    session.client_info = params.get("clientInfo") if isinstance(params.get("clientInfo"), dict) else None
    session.capabilities = params.get("capabilities") if isinstance(params.get("capabilities"), dict) else None
    session.protocol_version = negotiate_version(params.get("protocolVersion"))
