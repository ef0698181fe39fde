"""CLIENT spans, trace context and client duration metric of the upstream requests the router makes itself.

Lists (every page), completions, subscriptions, logging/setLevel and the pass-through view's raw
methods reach the upstream through `Router.fetch`, not through the forward stage. With tracing on,
each of them is sent inside its own CLIENT span, which the request carries as `traceparent` /
`tracestate` (HTTP headers and `params._meta`), exactly as a forwarded call does; with metrics on,
each is timed as `mcp.client.operation.duration`, as a forwarded call is. With both off the router is
given no `UpstreamCalls` at all, so those requests cost nothing extra. An agent's notification passed on to
its upstream sessions gets the same (`notify`): a CLIENT span with its context in `params._meta`, and a duration.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from functools import partial
from typing import Any

from gateway.config.model import UpstreamConfig
from gateway.errors import UpstreamErrorResponse
from gateway.telemetry.attributes import (
    MCP_METHODS,
    OTHER_METHOD,
    Attrs,
    client_attributes,
    target_of,
    transport_attributes,
)
from gateway.telemetry.metrics import Metrics
from gateway.telemetry.span_errors import error_type, mark_error
from gateway.telemetry.tracing import NO_SPAN, AnySpan, Telemetry
from gateway.transport.base import Message, MessageHandler, SentId, UpstreamSession


class UpstreamCalls:
    """`Router(upstream_call=...)`: one upstream request inside a CLIENT span that it propagates (tracing on),
    timed as `mcp.client.operation.duration` (metrics on)."""

    def __init__(self, telemetry: Telemetry, upstreams: Mapping[str, UpstreamConfig],
                 metrics: Metrics | None = None) -> None:
        self._telemetry = telemetry
        self._metrics = metrics
        self._transport: dict[str, Attrs] = {name: transport_attributes(c) for name, c in upstreams.items()}
        # A stdio child is initialized once when it starts, outside any request: its sessions send no set-up.
        self._stdio = frozenset(name for name, c in upstreams.items() if c.kind == "stdio")

    async def __call__(self, upstream: str, session: UpstreamSession, message: Message, headers: dict[str, str],
                       on_message: MessageHandler | None, timeout: float | None) -> Message:  # noqa: ASYNC109
        if self._metrics is None:
            return await self._send(upstream, session, message, headers, on_message, timeout)
        started = time.perf_counter()
        attrs: Attrs = {"customs.upstream": upstream}
        try:
            response = await self._send(upstream, session, message, headers, on_message, timeout)
            error = response.get("error")
            if isinstance(error, dict):  # the upstream's own answer: its code is both
                attrs["error.type"] = attrs["rpc.response.status_code"] = str(error.get("code"))
            return response
        except BaseException as exc:
            attrs["error.type"] = error_type(exc)  # not answered (timeout, unreachable, withdrawn): no code
            raise
        finally:
            if version := self._metrics.negotiated_version(session):
                attrs["mcp.protocol.version"] = version
            self._metrics.client_operation(str(message.get("method")), time.perf_counter() - started, attrs)

    async def _send(self, upstream: str, session: UpstreamSession, message: Message, headers: dict[str, str],
                    on_message: MessageHandler | None, timeout: float | None) -> Message:  # noqa: ASYNC109
        telemetry = self._telemetry
        if not telemetry.enabled:
            return await session.request(message, headers=headers, on_message=on_message, timeout=timeout)
        method = str(message.get("method"))
        params = message.get("params")
        params = params if isinstance(params, dict) else {}
        attrs = client_attributes(upstream, method, params, self._transport.get(upstream),
                                  telemetry.capture_args, telemetry.redact)
        with telemetry.client_span(method, target_of(method, params), attrs) as span:
            message = self._with_context(message, params, headers)
            if on_message is not None:  # what the upstream sends meanwhile is handled under this span
                on_message = telemetry.within(span, on_message)
            response = await session.request(message, headers=headers, on_message=on_message, timeout=timeout,
                                             sent_id=partial(_record_sent_id, span))
            error = response.get("error")
            if isinstance(error, dict):
                mark_error(span, UpstreamErrorResponse(error), redact=telemetry.redact)
            return response

    @contextmanager
    def handshake(self, upstream: str) -> Iterator[Mapping[str, str] | None]:
        """`SessionManager(handshake=...)`: opening a session with `upstream` on a request's behalf (initialize,
        notifications/initialized, a legacy SSE stream's GET) inside its own CLIENT span `initialize`, whose
        context those requests carry (headers and `params._meta`). None outside any request (the pin watcher's
        own sessions: no trace to join), for a stdio upstream (its child was initialized when it started; a
        session is only a view of it) and with tracing off."""
        telemetry = self._telemetry
        if not telemetry.enabled or upstream in self._stdio or telemetry.current_span() is NO_SPAN:
            yield None
            return
        attrs = client_attributes(upstream, "initialize", {}, self._transport.get(upstream))
        with telemetry.client_span("initialize", None, attrs):
            carrier: dict[str, str] = {}
            telemetry.inject_headers(carrier)
            yield carrier

    def _with_context(self, message: Message, params: dict[str, Any], headers: dict[str, str] | None) -> Message:
        """The message with the current (CLIENT) span's context in `params._meta` and, given, `headers`."""
        telemetry = self._telemetry
        meta = params.get("_meta")
        if meta is None or isinstance(meta, dict):
            meta = dict(meta or {})
            telemetry.inject(headers if headers is not None else {}, meta)  # headers: HTTP; _meta: every transport
            if meta:
                return {**message, "params": {**params, "_meta": meta}}
        elif headers is not None:  # a malformed _meta goes upstream untouched (the upstream answers it)
            telemetry.inject_headers(headers)
        return message

    async def notify(self, upstream: str, session: UpstreamSession, message: Message) -> None:
        """An agent's notification passed on to an upstream (see `sent`)."""
        await self.sent(upstream, message, session.notify, Metrics.negotiated_version(session))

    async def sent(self, upstream: str, message: Message, send: Callable[[Message], Awaitable[None]],
                   version: str | None = None) -> None:
        """A notification sent upstream (an agent's passed on; the transports' notifications/cancelled, through
        `on_notify`), as the conventions ask of a notification's sender: its CLIENT span (whose context rides in
        `params._meta`; not in headers, which would replace the session's credential) and
        `mcp.client.operation.duration`, until the upstream took it (HTTP 202, a line written)."""
        sent = str(message.get("method"))
        method = sent if sent in MCP_METHODS else OTHER_METHOD  # the agent's choice: no metric value, no span name
        started = time.perf_counter()
        attrs: Attrs = {"customs.upstream": upstream}
        if version:  # the upstream session's revision, where the caller knows the session
            attrs["mcp.protocol.version"] = version
        try:
            if not self._telemetry.enabled:
                await send(message)
                return
            params = message.get("params")
            params = params if isinstance(params, dict) else {}
            span_attrs = {"mcp.method.name": sent, **client_attributes(upstream, sent, params, self._transport.get(
                upstream), self._telemetry.capture_args, self._telemetry.redact)}
            with self._telemetry.client_span(method, None, span_attrs):
                await send(self._with_context(message, params, None))
        except BaseException as exc:
            attrs["error.type"] = error_type(exc)
            raise
        finally:
            if self._metrics is not None:
                self._metrics.client_operation(method, time.perf_counter() - started, attrs)


def _record_sent_id(span: AnySpan, request_id: Any, session_id: str | None, version: str | None) -> None:
    # The CLIENT span describes the request it sent: the transport gave it an id of its own, and it went in
    # the gateway's session with the upstream (never the agent's session with the gateway: that is the
    # SERVER span's). Only recording spans pay for the str(). The version is the one spoken with the upstream,
    # which may differ from the agent's (SERVER span). One set_attributes (unset values left out).
    if span.is_recording():
        span.set_attributes(_sent_attributes(request_id, session_id, version))


def _sent_attributes(request_id: Any, session_id: str | None, version: str | None) -> dict[str, Any]:
    return {"jsonrpc.request.id": str(request_id), "mcp.session.id": session_id or None,
            "mcp.protocol.version": version or None}


def sent_id_recorder(telemetry: Telemetry) -> SentId | None:
    """`ForwardStage(sent_id=...)`: the forwarded call's CLIENT span (current) records the id sent upstream, the
    upstream session's id and its protocol version; None with tracing off, so the transports are told nothing."""
    if not telemetry.enabled:
        return None
    current = telemetry.current_light_span

    def record(request_id: Any, session_id: str | None, version: str | None) -> None:
        # Every forwarded call passes here: the current light span asked directly, no span wrapper calls.
        span = current()
        if span is not None:
            span.set_attributes(_sent_attributes(request_id, session_id, version))
    return record


__all__ = ["UpstreamCalls", "sent_id_recorder"]
