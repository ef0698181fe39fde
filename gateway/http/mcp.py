"""The MCP endpoint over Streamable HTTP: POST/GET/DELETE on /mcp and /mcp/{upstream}.

Handles both eras of the protocol: the initialize handshake with `Mcp-Session-Id`
(2025-03-26 … 2025-11-25) and the stateless per-request envelope (2026-07-28, `Mcp-Method` /
`Mcp-Name` headers checked against the body). Every request is identified first; sessions are
bound to the principal that created them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from aiohttp import web
from mcp.shared.inbound import classify_inbound_request, find_duplicated_routing_header
from mcp_types import CLIENT_CAPABILITIES_META_KEY
from mcp_types.version import (
    KNOWN_PROTOCOL_VERSIONS,
    MODERN_PROTOCOL_VERSIONS,
)

from gateway import jsonrpc
from gateway.context import Principal
from gateway.credentials.agent_token import without_agent_token
from gateway.errors import UNSUPPORTED_PROTOCOL_VERSION, GatewayError, UpstreamErrorResponse, forget_traceback, to_wire
from gateway.http.batch import BATCH_VERSION, answer_batch
from gateway.http.guards import accepts, error_response, expect_body_later, read_body, require_json, undecoded_coding
from gateway.http.one_way import accept_one_way
from gateway.http.resumable import Disconnects, Withdrawal
from gateway.http.session_stream import SessionStreams
from gateway.http.streams import ClientGone, ResponseChannel
from gateway.http.versions import (
    AGGREGATED_INSTRUCTIONS,
    ModernRejection,
    discover_result,
    initialize_result,
    modern_result,
    modern_status,
    negotiate_version,
    passed_through_discover,
    unsupported_version,
    upstream_answer,
)
from gateway.identity import reject_query_token
from gateway.param_headers import PARAM_HEADERS
from gateway.pipeline import Identifier
from gateway.router import SERVER_INFO, Inbound, Router
from gateway.server_messages import drop_server_requests
from gateway.sessions import Session, SessionManager

log = logging.getLogger("customs.http")

SESSION_HEADER = "Mcp-Session-Id"
VERSION_HEADER = "MCP-Protocol-Version"


@dataclass
class McpEndpoint:
    identifier: Identifier
    sessions: SessionManager
    router: Router
    upstream_names: frozenset[str]
    max_body_bytes: int
    body_timeout_s: float
    max_json_depth: int
    keepalive_s: float = 15.0
    observability: Any = None  # gateway.telemetry.observability.Observability
    resource_url: str = ""
    on_task_end: Callable[[Principal, str], Awaitable[None]] | None = None  # explicit end of an agent's task
    streams: SessionStreams = field(default_factory=SessionStreams)  # GET streams and their resumption
    disconnects: Disconnects = field(default_factory=Disconnects)  # resumable calls outlive a dropped connection

    # -- shared steps ------------------------------------------------------------------------------

    def _view(self, request: web.Request) -> str | None:
        view = request.match_info.get("upstream")
        if view is not None and view not in self.upstream_names:
            raise GatewayError("unknown_upstream", f"Unknown upstream: {view[:64]}")
        return view

    async def _identify(self, request: web.Request, view: str | None = None) -> Principal:
        """The caller of `/mcp` or `/mcp/{view}`; a view naming no upstream is refused once its caller is identified
        (a caller without a token gets a configured one's 401: the names cannot be probed with it)."""
        # Each /mcp/{upstream} is its own RFC 9728 protected resource (its token audience, its 401 metadata); an
        # unknown name is quoted, as its 401 challenge names it inside a quoted string.
        known = view is None or view in self.upstream_names
        path = "/mcp" if view is None else f"/mcp/{view}" if known else f"/mcp/{quote(view, safe='')}"
        reject_query_token(request.query, self.resource_url, path)
        transport = request.transport
        peer = transport.get_extra_info("peercert") if transport is not None else None
        principal = await self.identifier.identify(request.headers, peer, path)
        if not known:
            raise GatewayError("unknown_upstream", f"Unknown upstream: {view[:64] if view else ''}")
        return principal

    # -- POST --------------------------------------------------------------------------------------

    async def post(self, request: web.Request) -> web.StreamResponse:
        request_id: Any = None
        try:
            view = request.match_info.get("upstream")  # an unknown one is refused by _identify, once identified
            require_json(request)
            json_ok, sse_ok = accepts(request)
            if not json_ok:
                raise GatewayError("not_acceptable")
            started = time.time_ns()
            try:
                principal = await self._identify(request, view)
            finally:  # refused tokens too: a slow JWKS fetch shows in identify's duration either way
                identified = time.time_ns()
                if self.observability is not None:
                    self.observability.identified(identified - started)
            body = await read_body(request, self.max_body_bytes, self.body_timeout_s)
            message = without_agent_token(jsonrpc.parse(body, max_depth=self.max_json_depth), principal, body)
            request_id = message.id if message.kind == "request" else None
            session, extra_headers = await self._session_for(request, view, principal, message)
            if message.kind != "request":
                await self._accept_one_way(session, message, principal, http=request, times=(started, identified))
                return web.Response(status=202, headers=extra_headers)
            if self.observability is None:
                return await self._answer(request, session, principal, message, sse_ok, extra_headers)
            # A stateless (2026-07-28) request is part of no MCP session: its implicit one's id is the gateway's own.
            # An initialize's session is named once it is answered (`_answer`): a failed one ends the session it began.
            named = None if session.stateless or message.method == "initialize" else session.id
            with self.observability.request(request.headers, message.method, message.params, message.id,
                                            principal=principal, session_id=named,
                                            protocol_version=session.protocol_version, view=session.view,
                                            start_ns=started, identify_ns=(started, identified), http=request) as trace:
                return await self._answer(request, session, principal, message, sse_ok, extra_headers, trace)
        except jsonrpc.Batch as batch:  # a JSON array: answered only in 2025-03-26 sessions
            return await answer_batch(self, request, view, principal, batch, sse_ok, (started, identified), body)
        except GatewayError as exc:
            if exc.reason == "unknown_upstream":  # refused before the body was read: it may name an id to answer
                request_id = await self._readable_id(request)
            elif exc.reason == "parse_error":  # it may be in a content coding aiohttp passed on undecoded
                exc = undecoded_coding(request) or exc
            return error_response(exc, jsonrpc.refused_id(exc, request_id))
        except ModernRejection as exc:
            return exc.response

    async def _readable_id(self, request: web.Request) -> Any:
        """The id of the request in the body, read as any body is (bounded, timed): JSON-RPC answers an error with
        it whenever it can be read. None for a notification or response (MCP: their refusal has no id), and for
        a body that is too large, too slow or no JSON."""
        try:
            body = await read_body(request, self.max_body_bytes, self.body_timeout_s)
            message = jsonrpc.parse(body, max_depth=self.max_json_depth)
        except GatewayError as exc:
            return jsonrpc.refused_id(exc)  # a malformed request's own id, as its invalid_request would have
        return message.id if message.kind == "request" else None

    async def _session_for(self, request: web.Request, view: str | None, principal: Principal,
                           message: jsonrpc.Message) -> tuple[Session, dict[str, str]]:
        version = request.headers.get(VERSION_HEADER)
        if version is not None and version not in KNOWN_PROTOCOL_VERSIONS:
            raise unsupported_version(version)
        if version in MODERN_PROTOCOL_VERSIONS:
            return self._stateless_session(request, view, principal, message), {}
        if message.method == "initialize" and message.kind == "request":
            session = await self._initialize(view, principal, message)
            return session, {SESSION_HEADER: session.id}
        session_id = request.headers.get(SESSION_HEADER)
        if not session_id:
            raise GatewayError("session_required")
        return self.sessions.get(session_id, principal, view), {}

    def batch_session(self, request: web.Request, view: str | None, principal: Principal) -> Session:
        """The session a batch is sent in; only 2025-03-26 has batches (later revisions removed them)."""
        version = request.headers.get(VERSION_HEADER)
        if version is not None and version not in KNOWN_PROTOCOL_VERSIONS:
            raise unsupported_version(version)
        session_id = request.headers.get(SESSION_HEADER)
        session = self.sessions.get(session_id, principal, view) if session_id else None
        if session is None or session.protocol_version != BATCH_VERSION or version in MODERN_PROTOCOL_VERSIONS:
            raise GatewayError("batch_not_supported",
                               f"JSON-RPC batches are supported in {BATCH_VERSION} sessions only")
        return session

    def _stateless_session(self, request: web.Request, view: str | None, principal: Principal,
                           message: jsonrpc.Message) -> Session:
        duplicated = find_duplicated_routing_header(
            (k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers)
        if duplicated is not None:
            raise GatewayError("header_mismatch", f"Header {duplicated} given more than once")
        if message.kind == "request":
            headers = {k.lower(): v for k, v in request.headers.items()}
            verdict = classify_inbound_request(message.body, headers=headers,
                                               supported_modern_versions=MODERN_PROTOCOL_VERSIONS)
            if not hasattr(verdict, "protocol_version"):
                raise ModernRejection(message.id, verdict.code, verdict.message, getattr(verdict, "data", None))
            if message.method == "initialize":  # as the SDK's own server: the stateless revision has no handshake
                requested = message.params.get("protocolVersion")
                raise ModernRejection(message.id, UNSUPPORTED_PROTOCOL_VERSION,
                                       "The 2026-07-28 protocol has no initialize handshake",
                                       {"supported": list(MODERN_PROTOCOL_VERSIONS),
                                        **({"requested": requested} if isinstance(requested, str) else {})})
            caps = message.params.get("_meta", {}).get(CLIENT_CAPABILITIES_META_KEY)
            return self.sessions.stateless(principal, view, verdict.protocol_version,
                                           caps if isinstance(caps, dict) else None)
        return self.sessions.stateless(principal, view, MODERN_PROTOCOL_VERSIONS[-1], None)

    async def _initialize(self, view: str | None, principal: Principal, message: jsonrpc.Message) -> Session:
        params = message.params
        client_info = params.get("clientInfo") if isinstance(params.get("clientInfo"), dict) else None
        caps = params.get("capabilities") if isinstance(params.get("capabilities"), dict) else None
        version = negotiate_version(params.get("protocolVersion"))
        return self.sessions.create(principal, view, version, client_info, caps)

    async def _open_view(self, session: Session) -> None:
        """A pass-through session's upstream session, opened by its `initialize` (inside the request's span, so the
        set-up is traced under it); a failure ends the new session."""
        if session.view is None:
            return
        try:
            upstream = await self.sessions.upstream_session(session, session.view)
        except BaseException:
            await self.sessions.end(session)
            raise
        # The upstream's own protocolVersion is not the client's: a stdio child is initialized once
        # for every session, and an upstream may counter-offer. The gateway is the client's server.
        session.init_result = upstream.initialize_result

    async def _accept_one_way(self, session: Session, message: jsonrpc.Message, principal: Principal | None = None,
                              *, http: web.Request | None = None, times: tuple[int, int] | None = None) -> None:
        """Client notifications and answers to server→client requests (gateway/http/one_way.py)."""
        await accept_one_way(self.observability, self.on_task_end, session, message, principal, http=http,
                             times=times)

    async def _answer(self, request: web.Request, session: Session, principal: Principal,
                      message: jsonrpc.Message, sse_ok: bool, headers: dict[str, str],
                      trace: Any = None) -> web.StreamResponse:
        if message.method == "initialize":
            await self._open_view(session)
            result = initialize_result(session)
            if trace is not None:
                trace.span.set_attribute("mcp.session.id", session.id)
            return web.json_response(jsonrpc.result(message.id, result), headers=headers, dumps=_dumps)
        if message.method == "server/discover":  # on a view the upstream itself, as its initialize says
            found = discover_result(SERVER_INFO, AGGREGATED_INSTRUCTIONS) if session.view is None else \
                passed_through_discover(upstream_answer(
                    session, (await self.sessions.upstream_session(session, session.view)).initialize_result))
            return web.json_response(jsonrpc.result(message.id, modern_result(message.method, found)), dumps=_dumps)
        channel = ResponseChannel(request, headers, sse_allowed=sse_ok, replay=self.streams.post_replay,
                                  session_id=session.id)
        if sse_ok and not session.stateless:  # a stream the client may resume: the call outlives a drop
            gone = asyncio.Event()
            watched = self.disconnects.watch(request, channel, gone)
            try:
                # A task of its own, though nothing needs one: a call that way costs ~25k instructions more but
                # ~10 % less CPU time under load, in every alternating wall-clock comparison (docs/performance.md).
                reply, status, error_headers = await asyncio.get_running_loop().create_task(
                    self.run_call(session, principal, message, channel, trace, gone=gone))
            except BaseException:
                channel.keep_answer(None)  # detached and ended unanswered: a resuming GET sees the stream end
                raise
            finally:
                self.disconnects.forget(watched)
        else:
            reply, status, error_headers = await self.run_call(session, principal, message, channel, trace)
        status = 200 if status < 400 or status == 500 else status
        return await channel.finish(reply, modern_status(reply, status) if session.stateless else status, error_headers)

    async def run_call(self, session: Session, principal: Principal, message: jsonrpc.Message,
                       channel: ResponseChannel, trace: Any = None,
                       gone: asyncio.Event | None = None) -> tuple[dict[str, Any], int, dict[str, str]]:
        """One request through the router: (reply, HTTP status of its error, headers of its error).
        `gone`: set when the client went away (`Inbound.cancelled`; the approve stage withdraws a held call)."""
        stateless = session.stateless
        if not stateless and message.id in session.inflight:
            # Ids key cancellation and progress routing; a second call with an id in flight would
            # take over the first one's entry.
            raise GatewayError("invalid_request", "Invalid request: this id is already in use by a call in flight")
        sse_ok = channel.sse_allowed
        inbound = _inbound(session, principal, message, channel, trace, gone)
        # Stateless (2026-07-28) clients of one principal share a session but not ids or progress tokens
        # (every SDK client starts at the same ones), so their calls are found by neither: progress
        # reaches them on their own stream only, and they cancel by closing it.
        meta = message.params.get("_meta")
        token = meta.get("progressToken") if sse_ok and not stateless and isinstance(meta, dict) else None
        if token is not None:
            session.progress_routes[token] = channel.send
        error_headers: dict[str, str] = {}
        # The call runs in the task it was awaited in (a dropped resumable stream does not cancel it: resumable.py);
        # `Withdrawal` lets notifications/cancelled and session end cancel it and still answer request_cancelled.
        withdrawal = Withdrawal(asyncio.current_task())
        key = withdrawal if stateless else message.id  # a stateless call's entry is its own (session end)
        session.inflight[key] = withdrawal
        try:
            result = await self.router.dispatch(inbound)
            if trace is not None:
                trace.answered(result)
            if session.stateless:
                result = modern_result(message.method, result)
            reply = jsonrpc.result(message.id, result)
            status = 200
        except asyncio.CancelledError:
            if not withdrawal.requested:  # the client went away: the call is withdrawn with the request
                inbound.cancelled.set()
                raise
            withdrawal.absorb()
            withdrawn = GatewayError(withdrawal.reason)
            if trace is not None:  # answered with an error: span and duration metric say so (as legacy SSE)
                trace.fail(withdrawn)
            reply, status = to_wire(withdrawn, message.id)
        except ClientGone:
            raise asyncio.CancelledError() from None
        except Exception as exc:
            log_failure(exc)
            if trace is not None:
                trace.fail(exc)
            reply, status = to_wire(exc, message.id)
            if isinstance(exc, GatewayError):
                error_headers = exc.headers  # e.g. Retry-After of rate_limited
            forget_traceback(exc)  # answered, recorded and logged: its frames need not outlive the call
        finally:
            session.inflight.pop(key, None)
            if token is not None:
                session.progress_routes.pop(token, None)
            if session.server_requests:  # what the upstream asked on this call's behalf is moot now
                drop_server_requests(session, inbound)
        return reply, status, error_headers

    # -- GET / DELETE ------------------------------------------------------------------------------

    async def get(self, request: web.Request) -> web.StreamResponse:
        try:
            view = request.match_info.get("upstream")  # an unknown one is refused once identified (_identify)
            if request.headers.get(VERSION_HEADER) in MODERN_PROTOCOL_VERSIONS:
                return web.Response(status=405, headers={"Allow": "POST"})
            if not accepts(request)[1]:
                raise GatewayError("not_acceptable", "Accept must include text/event-stream")
            session = await self._existing_session(request, view)
        except GatewayError as exc:
            return error_response(exc)
        return await self.streams.serve(request, session, self.keepalive_s)

    async def _existing_session(self, request: web.Request, view: str | None) -> Session:
        """The caller's own session named by Mcp-Session-Id (identify first; others' ids are unknown)."""
        principal = await self._identify(request, view)
        version = request.headers.get(VERSION_HEADER)
        if version is not None and version not in KNOWN_PROTOCOL_VERSIONS:  # as on POST: refused, nothing done
            raise unsupported_version(version)
        session_id = request.headers.get(SESSION_HEADER)
        if not session_id:
            raise GatewayError("session_required")
        return self.sessions.get(session_id, principal, view)

    async def delete(self, request: web.Request) -> web.StreamResponse:
        try:
            view = request.match_info.get("upstream")  # an unknown one is refused once identified (_identify)
            if request.headers.get(VERSION_HEADER) in MODERN_PROTOCOL_VERSIONS:  # no session to end: as GET
                return web.Response(status=405, headers={"Allow": "POST"})
            session = await self._existing_session(request, view)
        except GatewayError as exc:
            return error_response(exc)
        await self.sessions.end(session)
        return web.Response(status=200)


def _inbound(session: Session, principal: Principal, message: jsonrpc.Message, channel: ResponseChannel,
             trace: Any, gone: asyncio.Event | None) -> Inbound:
    """The router's view of one request answered on `channel`."""
    inbound = Inbound(session=session, principal=principal, message=message,
                      send=channel.send if channel.sse_allowed else None, trace_id=trace.trace_id if trace else None,
                      cancelled=gone if gone is not None else asyncio.Event())
    if channel.sse_allowed:
        inbound.extra["keepalive"] = channel.keepalive  # held calls keep the stream open with SSE comments
    if session.stateless and message.method == "tools/call":  # checked once the tool is known (param_headers.py)
        inbound.extra[PARAM_HEADERS] = channel.request.headers  # read only for a tool declaring x-mcp-header
    return inbound


def _dumps(value: Any) -> str:
    return jsonrpc.dumps(value).decode()


def log_failure(exc: BaseException) -> None:
    """A failed call about to be answered: a bug (answered internal_error) is visible at any log level."""
    if isinstance(exc, UpstreamErrorResponse):
        log.debug("upstream answered an error", exc_info=exc)
    elif not isinstance(exc, GatewayError):
        log.error("request failed, answered internal_error", exc_info=exc)


def routes(endpoint: McpEndpoint) -> list[web.RouteDef]:
    out: list[web.RouteDef] = []
    # A trailing slash names the same endpoint (the SDK's own server redirects `/mcp/` to `/mcp`; clients
    # configured with either URL must work, and a redirect would cost a round trip per message).
    for path in ("/mcp", "/mcp/", "/mcp/{upstream}", "/mcp/{upstream}/"):
        out += [web.post(path, endpoint.post, expect_handler=expect_body_later),
                web.get(path, endpoint.get, allow_head=False), web.delete(path, endpoint.delete)]
    return out

