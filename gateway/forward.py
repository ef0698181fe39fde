"""forward: send the authorized call to its upstream with only the credential this call was given."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from gateway.context import CallContext
from gateway.credentials.redaction import scrub_exact
from gateway.credentials.stage import REFRESH_KEY
from gateway.errors import GatewayError, UpstreamErrorResponse
from gateway.server_messages import carried_scrub, scrub_error
from gateway.session import credential_values
from gateway.sessions import Session, SessionManager
from gateway.transport.base import HeadersSource, SentId


class ForwardStage:
    """The upstream request for a call; the upstream's JSON-RPC error is passed through unchanged."""

    def __init__(self, sessions: SessionManager, timeouts: Callable[[str, str | None], float | None],
                 inject: Callable[[dict[str, str], dict[str, Any]], None] | None = None,
                 sent_id: SentId | None = None, scrub: Callable[[Any], Any] | None = None) -> None:
        self._sessions = sessions
        self._timeouts = timeouts
        self._inject = inject
        self._sent_id = sent_id  # with tracing on: the CLIENT span records the id the upstream saw
        # The secrets the gateway holds taken out of the answer (Redactor.scrub_known): an upstream that echoes the
        # key it was given (an error quoting its request) must not hand it to the agent.
        self._scrub = scrub

    async def __call__(self, ctx: CallContext) -> dict[str, Any]:
        if ctx.upstream is None:
            raise GatewayError("unknown_tool")
        session = ctx.extra["session"]
        assert isinstance(session, Session)
        upstream = await self._sessions.upstream_session(session, ctx.upstream)
        params = dict(ctx.params)
        headers = dict(ctx.upstream_headers)
        if ctx.upstream_meta or self._inject is not None:
            meta = dict(params.get("_meta") or {})
            meta.update(ctx.upstream_meta)
            if self._inject is not None:
                self._inject(headers, meta)  # trace context: headers for HTTP, _meta for every transport
            if meta:  # never add an empty _meta the client did not send
                params["_meta"] = meta
        message = {"jsonrpc": "2.0", "id": ctx.request_id, "method": ctx.method, "params": params}
        # The credential this call carries (minted, exchanged; renewed ones are added as they come): the agent never
        # gets it, in the answer (below) or in what upstreams send the session, during the call or after it
        # (Session.carried, taken out where messages are routed: gateway/server_messages.py).
        carried = credential_values(ctx.upstream_headers) if ctx.upstream_headers else None
        if carried:
            session.carried.extend(carried)
        ctx.extra["forwarded"] = True  # from here on the call may have executed: never undone, never retried
        try:
            response = await upstream.request(message, headers=headers, on_message=ctx.extra.get("relay"),
                                              timeout=self._timeouts(ctx.upstream, ctx.tool.name if ctx.tool else None),
                                              sent_id=self._sent_id, refresh=_refresher(ctx, headers, carried, session))
        except GatewayError as exc:  # a session re-opened in the request, refused by an upstream quoting its key
            scrub_error(self._scrub, exc)  # in place
            scrub_error(carried_scrub(session), exc)  # ... or the token it was opened with, or another call's
            raise
        if (scrub := self._scrub) is not None:
            response = scrub(response)
        if carried or session.carried:  # its own, and those carried for the session (its upstream sessions', others')
            response = scrub_exact(response, (*carried, *session.carried) if carried else session.carried)
        if "error" in response:
            error = response["error"]
            raise UpstreamErrorResponse(error if isinstance(error, dict) else {"code": -32603, "message": "error"})
        result = response.get("result")
        if not isinstance(result, dict):
            raise GatewayError("upstream_error")
        return result


def _refresher(ctx: CallContext, headers: Mapping[str, str], carried: list[str] | None,
               session: Session) -> HeadersSource | None:
    """The call's headers again with its credential renewed (gateway/credentials/stage.py), for requests made
    later on its behalf; the rest (trace context) as first sent. A renewed credential joins `carried` (the
    answer's) and the session's."""
    renew = ctx.extra.get(REFRESH_KEY)
    if renew is None:
        return None
    kept = {name: value for name, value in headers.items() if name not in ctx.upstream_headers}

    async def refreshed() -> Mapping[str, str]:
        renewed = await renew(ctx)
        if carried is not None:
            values = credential_values(renewed)
            carried.extend(values)
            session.carried.extend(values)
        return {**kept, **renewed}
    return refreshed
