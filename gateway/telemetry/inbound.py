"""Inbound trace context: which W3C context parents a request's SERVER span, and which become span links.

Two sources: `params._meta` (the MCP convention; it wins) and the HTTP `traceparent` header; a different second
context is a link. With `traces.trust_inbound: false` a caller may not choose the gateway's parent: every inbound
context is a link, except one the gateway issued itself, the context of one of its CLIENT spans still in flight.
That is what an upstream that is itself an agent sends back when it calls through the gateway while serving the
gateway's call (a delegation), so the chain stays one trace. Those contexts are 64 random bits the gateway sent
only to that upstream, and are forgotten when the CLIENT span ends (`Issued`); another replica does not know them
and links instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

PROPAGATION_KEYS = ("traceparent", "tracestate")


def carrier(source: Mapping[str, Any] | None) -> dict[str, str]:
    """The propagation keys of a header map or `_meta` dict, lower-cased, strings only."""
    if not source:
        return {}
    out: dict[str, str] = {}
    getall = getattr(source, "getall", None)
    if getall is not None:  # HTTP header fields (W3C Trace Context 3.2.1, 3.3.1)
        parents, states = getall("traceparent", ()), getall("tracestate", ())
        if len(parents) == 1 and isinstance(parents[0], str):  # two fields: invalid, as no traceparent at all
            out["traceparent"] = parents[0]
        if states:  # several fields are one list, combined in order (RFC 9110 5.3)
            out["tracestate"] = ",".join(states)
        return out
    for key in PROPAGATION_KEYS:
        value = source.get(key)
        if value is None and not isinstance(source, dict):
            continue  # a case-insensitive map already answered
        if value is None:
            value = next((v for k, v in source.items() if isinstance(k, str) and k.lower() == key), None)
        if isinstance(value, str):
            out[key] = value
    return out


class Inbound:
    """The parent/links decision for one gateway (`Telemetry.extract`), and the CLIENT contexts it issued."""

    def __init__(self, trust: bool) -> None:
        self.trust = trust
        # Trace context only: inbound baggage is never forwarded, so nothing reads it, and the SDK's baggage
        # propagator logs a WARNING quoting a header over 8,192 bytes (an agent could fill the log with it).
        self._propagator = TraceContextTextMapPropagator()
        # (trace id, span id) of CLIENT spans in flight; kept only when inbound context is not trusted.
        self.issued: set[tuple[int, int]] | None = None if trust else set()

    def extract(self, headers: Mapping[str, Any] | None,
                meta: Mapping[str, Any] | None) -> tuple[otel_context.Context | None, list[Link]]:
        found: list[tuple[str, otel_context.Context, trace.SpanContext]] = []
        for source, values in (("meta", carrier(meta)), ("http", carrier(headers))):
            if "traceparent" not in values:
                continue
            ctx = self._propagator.extract(values)
            span_context = trace.get_current_span(ctx).get_span_context()
            if span_context.is_valid and all(span_context != seen for _, _, seen in found):
                found.append((source, ctx, span_context))
        if not found:
            return None, []
        if self.trust:
            _, parent, _ = found[0]
            return parent, [Link(sc, {"customs.link": f"{source}_context"}) for source, _, sc in found[1:]]
        issued = self.issued or set()
        own = next((item for item in found if (item[2].trace_id, item[2].span_id) in issued), None)
        return own[1] if own is not None else None, [
            Link(sc, {"customs.link": "untrusted_parent", "customs.link.source": source})
            for source, _, sc in found if own is None or sc is not own[2]]
