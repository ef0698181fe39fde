"""Routing of the messages an upstream sends to a session's client, and of the client's replies and notifications.

Server→client requests get a gateway id (several upstreams may use the same ids), so the client's answer finds
its way back to the upstream that asked; an upstream's cancellation of one carries that id; progress goes to the
call it was sent for. Split from gateway/sessions.py, which owns the sessions these routes live in.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mcp_types import LOG_LEVEL_META_KEY

from gateway.catalog import Catalog, exposed_uri
from gateway.credentials.redaction import scrub_exact
from gateway.errors import INVALID_REQUEST, GatewayError
from gateway.jsonrpc import is_id
from gateway.transport.base import Message, UpstreamSession
from gateway.transport.common import LOG_LEVELS, id_key, progress_token

if TYPE_CHECKING:
    from gateway.sessions import Session

log = logging.getLogger("customs.sessions")  # the sessions' logger, as before the split

# Server→client requests a session awaits answers to at once; past this the oldest is given up
# (a client that never answers must not grow a long-lived session without bound).
MAX_SERVER_REQUESTS = 64

SendFn = Callable[[Message], Awaitable[None]]
RouteFn = Callable[[Message], Awaitable[None]]  # one upstream message routed to its session's client
# The tracing of what an upstream sends (gateway/telemetry/upstream_notices.py): (session, upstream, message, its
# route, sent outside any call) -> routed. None with tracing off: messages are routed as they are.
NotificationHook = Callable[["Session", str, Message, RouteFn, bool], Awaitable[None]]
# The client capability each server→client request needs (MCP: a server must not send it otherwise).
CLIENT_CAPABILITIES = {"sampling/createMessage": "sampling", "elicitation/create": "elicitation", "roots/list": "roots"}
STATELESS_UNREACHABLE = ("Customs cannot give this request to a client: it is tied to no call in flight, and "
                         "stateless (2026-07-28) clients have no stream for anything else")


@dataclass
class ServerRequestRoute:
    upstream: str
    session: UpstreamSession | None  # None: sent while it was being opened (`upstream_of` finds it when answered)
    upstream_id: Any
    origin: object = None  # the call it was sent on behalf of (router.Inbound); None: the session's
    progress_token: Any = None  # its `_meta.progressToken`: the agent's progress on it goes to this upstream only
    unseen: bool = False  # queued while the client had no GET stream open: its next one brings it


async def route_server_message(session: Session, upstream: str, message: Message, send: SendFn | None,
                               catalog: Catalog, origin: object = None) -> None:
    """Deliver a message an upstream sent to the client: on the request's stream when known, else
    on the session's GET stream. Server→client requests get a gateway id so that answers from
    the client find their way back to the right upstream even when several use the same ids."""
    if (flaw := envelope_flaw(message)) is not None:
        await _refuse_malformed(session, upstream, message, flaw)
        return
    method = message["method"]
    if "id" in message:
        routed = await _routed_request(session, upstream, message, origin)
        if routed is None:
            return
        message = routed
    elif method == "notifications/tools/list_changed":
        catalog.invalidate(upstream)
    elif method == "notifications/resources/list_changed":
        catalog.resource_owners.invalidate(upstream)
    elif method == "notifications/prompts/list_changed":
        catalog.prompts.forget(upstream)
    elif method == "notifications/cancelled":
        cancelled = _cancel_for_client(session, upstream, message)
        if cancelled is None:
            return
        message = cancelled
    elif method == "notifications/progress" and send is None:
        # Only progress that reached no request's own stream is looked up by token: stateless clients
        # of one principal share a session, so two of their calls may carry the same token.
        token = (message.get("params") or {}).get("progressToken")
        send = session.progress_routes.get(token)
    elif method == "notifications/resources/updated" and session.view is None:
        message = _updated_for_client(upstream, message)
    elif method == "notifications/message" and (session.log_level or session.stateless) and \
            _below_level(session, message, origin):
        return  # the client asked for less (an upstream without logging/setLevel, or one opened since, sends all)
    if session.scrub is not None:
        message = _scrubbed(session.scrub, message)
    if (carried := carried_scrub(session)) is not None:  # on the call's stream or the session's
        message = _scrubbed(carried, message)
    if send is not None:
        try:
            await send(message)
            return
        except Exception:  # the request's stream is gone; fall back to the GET stream
            log.debug("request stream closed; queueing %s on the session stream", method)
    if session.stateless and "id" in message:
        # A stateless session has no GET stream: a request tied to no live call would wait for an
        # answer that can never come (and its call with it, until the timeout).
        await _unreachable(session, message)
        return
    session.stream_event(message)
    if not session.get_stream_open and "id" in message:
        if (route := session.server_requests.get(message["id"])) is not None:
            route.unseen = True


async def _routed_request(session: Session, upstream: str, message: Message, origin: object) -> Message | None:
    """A server→client request under a gateway id of its own, its route recorded; None when it goes no further
    (the session is closed, or the request was refused for a capability the client did not declare)."""
    # Not recorded yet while the handshake opening it runs: an upstream may ask the moment its stream opens.
    upstream_session = session.upstreams.get(upstream)
    if upstream_session is None and session.closed:
        return None
    if (missing := _undeclared(session, message)) is not None:
        refused = ServerRequestRoute(upstream, upstream_session, message["id"])
        await _answer_upstream(session, refused, {"error": missing})
        return None
    gateway_id = session.next_server_request_id()
    if len(session.server_requests) >= MAX_SERVER_REQUESTS:
        await _give_up(session, next(iter(session.server_requests)))
    session.server_requests[gateway_id] = ServerRequestRoute(upstream, upstream_session, message["id"], origin,
                                                             progress_token(message))
    return {**message, "id": gateway_id}


def _below_level(session: Session, message: Message, origin: object) -> bool:
    """Whether a log line is below what the client asked for. A stateless (2026-07-28) call opts in by itself
    (`_meta` io.modelcontextprotocol/logLevel; without it the server MUST NOT send log lines), while upstreams,
    speaking a handshake revision, send every line: a line tied to no call, or to one that did not opt in, is below."""
    level = (message.get("params") or {}).get("level")
    wanted = session.log_level
    if session.stateless:
        meta = getattr(origin, "params", {}).get("_meta")  # origin: the router's Inbound of the call, or None
        requested = meta.get(LOG_LEVEL_META_KEY) if isinstance(meta, dict) else None
        if requested not in LOG_LEVELS:
            return True
        wanted = LOG_LEVELS.index(requested)
    return isinstance(level, str) and level in LOG_LEVELS and LOG_LEVELS.index(level) < wanted


def _scrubbed(scrub: Callable[[Any], Any], message: Message) -> Message:
    """The message with the secrets the gateway holds taken out of its params (the same object when none is there):
    an upstream quoting the key it was given in a progress message, a log line or a request to the client must not
    hand it to the agent, as its answers do not (gateway/forward.py). Only the params: its id and method are the
    gateway's or the protocol's, and a client must get them as they are."""
    params = message.get("params")
    if params is None:
        return message
    scrubbed = scrub(params)
    return message if scrubbed is params else {**message, "params": scrubbed}


def carried_scrub(session: Session) -> Callable[[Any], Any] | None:
    """What takes the credentials carried for the session (Session.carried: its calls', gateway/forward.py, and its
    upstream sessions' own, gateway/sessions.py headers) out of a value; None while there are none."""
    if not session.carried:
        return None
    carried = tuple(session.carried)
    return lambda value: scrub_exact(value, carried)


def scrub_error(scrub: Callable[[Any], Any] | None, exc: GatewayError) -> GatewayError:
    """`exc` with the secrets the gateway holds taken out of its message and data (Redactor.scrub_known), in place:
    an upstream refusing `initialize` quotes its refusal there ("invalid API key <the key it was sent>",
    transport/common.py check_initialize), and the agent gets both."""
    if scrub is not None:
        exc.message, exc.data = scrub(exc.message), scrub(exc.data)
        exc.args = (f"{exc.reason}: {exc.message}",)
    return exc


def envelope_flaw(message: Message) -> str | None:
    """What makes a request or notification an upstream sent no JSON-RPC message a client can read, if anything.
    Passed on, the SDK's client cannot parse it and fails the whole call whose stream carried it (its valid answer
    lost); a stdio child's non-string method was already dropped before routing (stdio_inbound.py)."""
    if message.get("jsonrpc") != "2.0":
        return '"jsonrpc" is not "2.0"'
    if not isinstance(message.get("method"), str):
        return "its method is not a string"
    # `"params": null` is no JSON-RPC either, but clients read it as none (the SDK's does), and servers whose
    # serializers write absent fields as null send it (a list_changed among them): passed on as it was.
    params = message.get("params")
    if params is not None and not isinstance(params, dict):
        return "its params are not an object"
    if "result" in message or "error" in message:  # a request and an answer at once: a client may take it as either
        return "it has a method and a result or error"
    if "id" in message and not is_id(message["id"]):
        # null (MCP: MUST NOT), a float, a bool, a list: no answer could name it (the client's would go back with it
        # and answer nothing), and a notification carries no id at all. Dropped, unanswered: its id names no request.
        return "its id is not a string or an integer"
    return None


async def _refuse_malformed(session: Session, upstream: str, message: Message, flaw: str) -> None:
    """Drop a malformed message of an upstream; one with a usable id is answered Invalid Request (as the SDK's own
    client answers it), so the upstream does not wait for an answer that will never come."""
    # Its method and id, not the message: its params are the upstream's data and may hold its secrets.
    log.warning("dropped a malformed message from upstream %s (%s): method %.100r, id %.100r", upstream, flaw,
                message.get("method"), message.get("id"))
    request_id = message.get("id")
    if is_id(request_id) and "method" in message:
        refused = ServerRequestRoute(upstream, session.upstreams.get(upstream), request_id)
        await _answer_upstream(session, refused, {"error": {"code": INVALID_REQUEST,
                                                            "message": f"Invalid request: {flaw}"}})


def _undeclared(session: Session, message: Message) -> dict[str, Any] | None:
    """The refusal of a server→client request the session's client did not declare it can answer (a shared
    stdio child was told the gateway's capabilities, not this client's), as the SDK's own client refuses it;
    None when it may go to the client. Stateless clients declare theirs per request: not judged here."""
    capability = CLIENT_CAPABILITIES.get(message["method"])
    declared = session.capabilities
    if capability is None or session.stateless or declared is None:
        return None
    held = declared.get(capability)
    params = message.get("params")
    url_mode = isinstance(params, dict) and params.get("mode") == "url"
    if isinstance(held, dict) and capability == "elicitation" and url_mode:
        held = held.get("url")  # URL-mode elicitation is declared on its own (2025-11-25)
    if held is not None:
        return None
    return {"code": -32600, "message": f"{capability.capitalize()} not supported: the client did not declare the "
                                       f"{capability} capability", "data": {"reason": "client_unsupported"}}


def _updated_for_client(upstream: str, message: Message) -> Message:
    """An upstream's resource update under the URI the aggregated view gave that resource (the one the
    client subscribed with), so it can never be taken for another upstream's resource of the same URI."""
    params = message.get("params")
    if not isinstance(params, dict) or not isinstance(params.get("uri"), str):
        return message
    return {**message, "params": {**params, "uri": exposed_uri(upstream, params["uri"])}}


def _cancel_for_client(session: Session, upstream: str, message: Message) -> Message | None:
    """An upstream's cancellation of its own server→client request, under the id the client got it
    with. None when this client never got that request: the upstream's id means nothing to it."""
    params = message.get("params")
    if not isinstance(params, dict):
        return None
    key = id_key(params.get("requestId"))
    for gateway_id, route in session.server_requests.items():
        if route.upstream == upstream and id_key(route.upstream_id) == key:
            del session.server_requests[gateway_id]  # an answer after this is not awaited upstream
            return {**message, "params": {**params, "requestId": gateway_id}}
    return None


def notified_upstreams(session: Session, message: Message) -> list[tuple[str, UpstreamSession]]:
    """The upstream sessions (with their upstream's name) an agent's notification goes to: all of them (roots
    changed, …), except that progress on a server→client request is only for the upstream that sent that
    request (no other upstream learns of it; none at all when no such request is awaited)."""
    if message.get("method") != "notifications/progress":
        return list(session.upstreams.items())
    params = message.get("params")
    token = params.get("progressToken") if isinstance(params, dict) else None
    routes = [r for r in session.server_requests.values() if token is not None and r.progress_token == token]
    targets = [(r.upstream, target) for r in routes if (target := upstream_of(session, r)) is not None]
    return list({id(target): (name, target) for name, target in targets}.values())


def upstream_of(session: Session, route: ServerRequestRoute) -> UpstreamSession | None:
    """The upstream session to answer a server→client request through (None: it is gone, or not open yet)."""
    return route.session if route.session is not None else session.upstreams.get(route.upstream)


def drop_server_requests(session: Session, origin: object) -> None:
    """Forget the server→client requests sent on behalf of a call that has ended, and tell the client:
    the upstream gave up on them with the call, but its own cancellation may have gone down that call's
    closed stream, or come after this (then it names no request and is dropped)."""
    for gateway_id in [k for k, route in session.server_requests.items() if route.origin is origin]:
        del session.server_requests[gateway_id]
        session.stream_event({"jsonrpc": "2.0", "method": "notifications/cancelled",
                              "params": {"requestId": gateway_id, "reason": "the call it was sent for has ended"}})


async def _give_up(session: Session, gateway_id: str) -> None:
    """Stop awaiting the client's answer to one server→client request; the upstream gets an error
    instead of waiting for an answer that would now be dropped."""
    route = session.server_requests.pop(gateway_id)
    error = {"code": -32603, "message": "Too many requests awaiting the client's answer; this one was given up"}
    await _answer_upstream(session, route, {"error": error})


async def _unreachable(session: Session, message: Message) -> None:
    """Answer a server→client request no client of the session can be given: a `ping` as its client
    (the gateway is alive), anything else refused (`client_unknown`)."""
    route = session.server_requests.pop(message["id"])
    if message.get("method") == "ping":
        await _answer_upstream(session, route, {"result": {}})
        return
    log.debug("refused %s's %s: %s", route.upstream, message.get("method"), STATELESS_UNREACHABLE)
    await _answer_upstream(session, route, {"error": {"code": -32603, "message": STATELESS_UNREACHABLE,
                                                      "data": {"reason": "client_unknown"}}})


async def _answer_upstream(session: Session, route: ServerRequestRoute, answer: dict[str, Any]) -> None:
    upstream = upstream_of(session, route)
    if upstream is None:  # its session is still being opened, or already gone: the upstream's timeout ends its wait
        log.debug("could not answer a server request of %s: no session with it", route.upstream)
        return
    try:
        await upstream.respond({"jsonrpc": "2.0", "id": route.upstream_id, **answer})
    except Exception:  # the upstream is gone: nothing awaits the answer either
        log.debug("could not tell %s a server request was given up", route.upstream)
