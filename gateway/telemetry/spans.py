"""Light spans: what a call's spans record on the event loop, turned into SDK spans where they are exported.

Creating an SDK span costs tens of microseconds (context attach/detach, attribute cleaning, locks,
processor callbacks) and encoding it for OTLP more again; a proxied call makes five. The gateway's
spans are simple (known names, kinds, parents and attributes, no events), so on the hot path a span
is this small object: ids from the SDK's id generator, the SDK's sampler decides, the SDK's
propagator carries the context. When it ends it is queued as a plain tuple; `readable()` turns the
tuple into the SDK's own `ReadableSpan`, which the SDK's exporters (OTLP, console) write, in the
exporter process for OTLP (span_export.py), so neither building nor encoding competes with calls.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState

from gateway.telemetry.attributes import expand

SCOPE = InstrumentationScope("customs", "0.1.0")
SPAN_ATTRIBUTE_LIMIT = 128  # the SDK's default span limits (OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT)
# (trace_id, span_id, is_remote, flags, trace_state items)
WireContext = tuple[int, int, bool, int, tuple[tuple[str, str], ...]]
# name, kind, context, parent context | None, start, end, attributes, links [(context, attrs)], status (code, text)
WireSpan = tuple[str, int, WireContext, WireContext | None, int, int, dict[str, Any],
                 list[tuple[WireContext, dict[str, Any]]], tuple[int, str | None]]


def wire_context(context: SpanContext) -> WireContext:
    return (context.trace_id, context.span_id, context.is_remote, int(context.trace_flags),
            tuple(context.trace_state.items()) if context.trace_state else ())


UNSET_STATUS: tuple[int, str | None] = (StatusCode.UNSET.value, None)


def _span_context(wire: WireContext) -> SpanContext:
    trace_id, span_id, remote, flags, state = wire
    return SpanContext(trace_id, span_id, is_remote=remote, trace_flags=TraceFlags(flags),
                       trace_state=TraceState(list(state)) if state else None)


class LightSpan:
    """A span being recorded on the event loop (the subset of the API Span the gateway uses).

    It keeps its context in wire form (`wire`), which is also what children keep as their parent and
    what `end` ships, so neither making a child nor ending a span builds an SDK `SpanContext`; that
    object is made only when asked for (`get_span_context`, for propagation or for an id).
    """

    __slots__ = ("_attributes", "_context", "_end", "_hex", "_links", "_name", "_parent", "_sink", "_start",
                 "_status", "kind", "wire")

    def __init__(self, name: str, kind: SpanKind, wire: WireContext, parent: WireContext | None,
                 start_ns: int, attributes: dict[str, Any] | None, links: Sequence[Link],
                 sink: Callable[[WireSpan], None] | None, context: SpanContext | None = None) -> None:
        self._name = name
        self.kind = kind
        self.wire = wire  # (trace_id, span_id, is_remote, flags, trace_state items)
        self._context = context
        self._hex: tuple[str, str] | None = None
        self._parent = parent
        self._start = start_ns
        self._end = 0
        # The caller hands over a dict of its own; None values (unset facts) are never recorded.
        if attributes is None:
            attributes = {}
        elif None in attributes.values():
            attributes = {k: v for k, v in attributes.items() if v is not None}
        self._attributes = attributes
        self._links = links
        self._status: tuple[int, str | None] = UNSET_STATUS
        self._sink = sink  # None: not sampled (the context still propagates, nothing is recorded)

    def get_span_context(self) -> SpanContext:
        context = self._context
        if context is None:
            context = self._context = _span_context(self.wire)
        return context

    def hex_ids(self) -> tuple[str, str]:
        """(trace id, span id) in hex, as logs and headers write them (the decision log asks per call)."""
        ids = self._hex
        if ids is None:
            # to_bytes().hex(): format(x, "032x")'s digits without its format-spec parsing (twice as fast).
            ids = self._hex = (self.wire[0].to_bytes(16, "big").hex(), self.wire[1].to_bytes(8, "big").hex())
        return ids

    def is_recording(self) -> bool:
        return self._sink is not None and not self._end

    def set_attribute(self, key: str, value: Any) -> None:
        if value is not None and self._sink is not None and not self._end:
            self._attributes[key] = value

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        if self._sink is not None and not self._end:
            if None in attributes.values():
                attributes = {k: v for k, v in attributes.items() if v is not None}
            self._attributes.update(attributes)

    def add_link(self, context: SpanContext, attributes: Mapping[str, Any] | None = None) -> None:
        if self._sink is not None and not self._end:
            self._links = [*self._links, Link(context, attributes)]

    def update_name(self, name: str) -> None:
        if self._sink is not None and not self._end:
            self._name = name

    def set_status(self, status: Status) -> None:
        if self.is_recording():
            self._status = (status.status_code.value, status.description)

    def end(self, end_ns: int) -> None:
        sink = self._sink
        if sink is None or self._end:
            return
        self._end = end_ns
        links = [(wire_context(link.context), dict(link.attributes or {})) for link in self._links] \
            if self._links else []
        # `_value_`, the member's plain attribute: `.value` is a property written in Python (two calls a span).
        sink((self._name, self.kind._value_, self.wire, self._parent, self._start, end_ns, self._attributes, links,
              self._status))


def clipped(span: WireSpan, limit: int) -> WireSpan:
    """`span` with every string attribute value (alone or in a sequence) cut to `limit` characters, as the SDK's
    `SpanLimits.max_attribute_length` cuts them (span and link attributes; the call's deferred facts expanded)."""
    name, kind, context, parent, start, end, attributes, links, status = span
    return (name, kind, context, parent, start, end, _clip(expand(attributes), limit),
            [(c, _clip(a, limit)) for c, a in links], status)


def _clip(attributes: dict[str, Any], limit: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in attributes.items():
        if isinstance(value, str):
            value = value[:limit]
        elif isinstance(value, (list, tuple)):
            value = type(value)(v[:limit] if isinstance(v, str) else v for v in value)
        out[key] = value
    return out


def readable(span: WireSpan, resource: Resource, value_limit: int | None = None) -> ReadableSpan:
    """The SDK span of a finished light span (what the SDK's exporters take)."""
    name, kind, context, parent, start, end, attributes, links, (code, text) = span
    status = Status(StatusCode(code), text) if code != StatusCode.UNSET.value else Status(StatusCode.UNSET)
    # BoundedAttributes: the SDK's own cleaning and limits, as an SDK span would have applied them.
    return ReadableSpan(name=name, context=_span_context(context),
                        parent=_span_context(parent) if parent is not None else None, resource=resource,
                        attributes=BoundedAttributes(SPAN_ATTRIBUTE_LIMIT, expand(attributes), immutable=True,
                                                     max_value_len=value_limit),
                        links=tuple(Link(_span_context(c), BoundedAttributes(SPAN_ATTRIBUTE_LIMIT, a, immutable=True,
                                                                             max_value_len=value_limit))
                                    for c, a in links),
                        kind=SpanKind(kind), status=status, start_time=start, end_time=end,
                        instrumentation_scope=SCOPE)
