"""Spans of the notifications an upstream sends on its own, and of their relay to the agent (MCP conventions).

The gateway receives them as the upstream's MCP client: a SERVER span named by the method, parented on the
notification's `params._meta` context (SEP-414) when it has one, else on the ambient context. During a call
that is the call's CLIENT span (progress and log lines: the forward runs the call's message handler with it
current, also where the transport reads the upstream in a task of its own); outside any call there is none
(`*/list_changed`, `resources/updated` on a session's stream), so the span is a root: no request caused it here.
The gateway then sends it on to the agent as the agent's MCP server: a CLIENT span under the SERVER span, whose
context the agent gets in `params._meta` in place of the upstream's. Built only with tracing on: with it off
the router and the sessions get no hook and route every message as before.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, NonRecordingSpan

from gateway.catalog import exposed_uri
from gateway.config.model import UpstreamConfig
from gateway.server_messages import RouteFn
from gateway.telemetry.attributes import MCP_METHODS, OTHER_METHOD, Attrs, transport_attributes
from gateway.telemetry.tracing import NO_SPAN, Telemetry
from gateway.transport.base import ROUTE_GUESSED, Message

if TYPE_CHECKING:
    from gateway.sessions import Session

UPDATED = "notifications/resources/updated"


class UpstreamNotices:
    """`SessionManager(notified=...)`, `Router(notified=...)`: an upstream's notification inside its SERVER span,
    passed on to the agent inside a CLIENT span; answers and server→client requests are routed untouched."""

    def __init__(self, telemetry: Telemetry, upstreams: Mapping[str, UpstreamConfig]) -> None:
        self._telemetry = telemetry
        self._transport: dict[str, Attrs] = {name: transport_attributes(c) for name, c in upstreams.items()}

    async def __call__(self, session: Session, upstream: str, message: Message, route: RouteFn,
                       unsolicited: bool) -> None:
        method = message.get("method")
        if "id" in message or not isinstance(method, str):
            await route(message)
            return
        telemetry = self._telemetry
        named = method if method in MCP_METHODS else OTHER_METHOD  # the upstream's choice: never a span name
        raw = message.get("params")
        params = raw if isinstance(raw, dict) else {}
        uri = params.get("uri") if method == UPDATED and isinstance(params.get("uri"), str) else None
        attrs: Attrs = {"mcp.method.name": method, "customs.upstream": upstream, **self._transport.get(upstream, {})}
        if uri is not None:
            attrs["mcp.resource.uri"] = self._redacted(uri)  # the upstream's own URI (it may carry a token)
        parent, links = self._parent(params, unsolicited)
        with telemetry.server_span(named, None, attrs, parent, links):
            if unsolicited and session.stateless:  # no stream to pass it on to (docs/architecture.md)
                await route(message)
                return
            with telemetry.client_span(named, None, self._relay_attributes(session, upstream, method, uri)):
                # Params that are not an object (malformed: routing drops them) are not made one to carry it.
                await route(self._with_context(message, params) if raw is None or raw is params else message)

    def _parent(self, params: Mapping[str, Any], unsolicited: bool) -> tuple[otel_context.Context | None, list[Link]]:
        """The SERVER span's parent and links: the `_meta` context (as `extract` trusts it), else the call's span. A
        call's span that is not the parent is linked (`customs.link=call`), as the conventions link ambient context."""
        meta = params.get("_meta")
        parent, links = self._telemetry.extract(None, meta if isinstance(meta, dict) else None)
        # A message the transport could only guess the call of (ROUTE_GUESSED) is no call's: a root, as outside calls.
        ambient = NO_SPAN if unsolicited or ROUTE_GUESSED.get() else self._telemetry.current_span()
        if ambient is NO_SPAN:
            return parent, links
        context = ambient.get_span_context()
        if parent is None:
            return trace.set_span_in_context(NonRecordingSpan(context)), links
        return parent, [*links, Link(context, {"customs.link": "call"})]

    def _relay_attributes(self, session: Session, upstream: str, method: str, uri: str | None) -> Attrs:
        """The CLIENT span to the agent: its MCP session with the gateway (none for a stateless client)."""
        attrs: Attrs = {"mcp.method.name": method, "customs.upstream": upstream, "network.transport": "tcp",
                        "network.protocol.name": "http", "mcp.protocol.version": session.protocol_version}
        if not session.stateless:
            attrs["mcp.session.id"] = session.id
        if uri is not None:  # as the agent gets it: the aggregated view names the upstream in it
            attrs["mcp.resource.uri"] = self._redacted(uri if session.view is not None else exposed_uri(upstream, uri))
        return attrs

    def _with_context(self, message: Message, params: dict[str, Any]) -> Message:
        """The message with the current (CLIENT) span's context in `params._meta`, where the upstream's was: the
        gateway is the agent's sender. A malformed `_meta` goes on untouched."""
        meta = params.get("_meta")
        if meta is not None and not isinstance(meta, dict):
            return message
        meta = {k: v for k, v in (meta or {}).items() if k not in ("traceparent", "tracestate")}
        self._telemetry.inject_meta(meta)
        return {**message, "params": {**params, "_meta": meta}}

    def _redacted(self, uri: str) -> Any:
        redact = self._telemetry.redact
        return redact(uri) if redact is not None else uri


__all__ = ["UpstreamNotices"]
