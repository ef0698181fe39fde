"""Traces: one tracer provider per gateway, W3C context propagation (headers and `params._meta`), span helpers.

`Telemetry` owns a `TracerProvider` built from the config (never the global provider, so several
gateways can run in one process). With no endpoint and no console exporter, no provider is built:
`tracer` is the API's no-op tracer and the helpers return a shared non-recording span, so tracing
off costs a function call.

Propagation follows the MCP conventions: the parent comes from `params._meta.traceparent` if
present, else from the HTTP `traceparent` header; the other one (if different) becomes a link.
With `traces.trust_inbound: false` every inbound context is only a link and the server span is a root.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from contextvars import ContextVar
from typing import Any

from multidict import CIMultiDictProxy
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    TraceFlags,
    TraceState,
)

from gateway.config.model import TelemetryConfig
from gateway.telemetry.current import CurrentSpan
from gateway.telemetry.inbound import Inbound
from gateway.telemetry.settings import TraceSettings, trace_settings
from gateway.telemetry.span_errors import mark_error
from gateway.telemetry.span_export import SpanShipper
from gateway.telemetry.spans import UNSET_STATUS, LightSpan, WireContext, WireSpan, readable, wire_context

log = logging.getLogger("customs.telemetry")

TRACER_NAME = "customs"
VERSION = "0.1.0"
DEFAULT_CLOSE_S = 10.0  # the last span export at shutdown, when no shutdown deadline is known
MIN_CLOSE_S = 1.0  # ... and at least this much of it past a drain that used up the deadline
NO_SPAN: Span = trace.INVALID_SPAN
_getrandbits = random.getrandbits  # what the SDK's RandomIdGenerator draws ids from
_INTERNAL = SpanKind.INTERNAL.value
_PARENT_OR_ON = ParentBased(ALWAYS_ON).get_description()  # type: ignore[no-untyped-call]
_FLAGS_HEX = tuple(f"{flags:02x}" for flags in range(256))  # traceparent's trace-flags field
Attributes = Mapping[str, Any]
AnySpan = Span | LightSpan


class Telemetry:
    """Owner of the span pipeline for one gateway (start/close): light spans on the loop (spans.py),
    OTLP export in a child process (span_export.py), the console exporter in-process (debugging)."""

    def __init__(self, config: TelemetryConfig, *, env: Mapping[str, str] | None = None) -> None:
        self.settings: TraceSettings = trace_settings(config, os.environ if env is None else env)
        self.enabled = self.settings.enabled
        self.capture_args = self.settings.capture_args
        self.redact: Callable[[Any], Any] | None = None  # applied to captured arguments (set by Observability)
        self.provider: TracerProvider | None = None
        self.tracer: trace.Tracer = trace.NoOpTracer()
        self._inbound = Inbound(self.settings.trust_inbound)
        # ParentBased(ALWAYS_ON), the default, decides from the parent's flags alone (known by its description).
        self._parent_or_on = self.settings.sampler.get_description() == _PARENT_OR_ON
        self._current: ContextVar[LightSpan | None] = ContextVar("customs_span", default=None)
        self._shipper: SpanShipper | None = None
        self._console: BatchSpanProcessor | None = None
        self._resource: Resource | None = None
        # Where a finished span goes: the shipper's buffer when it is the only exporter (no Python call a span).
        self._finished: Callable[[WireSpan], None] = self._both
        # Set when shutdown begins (loop time by which the process should be gone): the last export gets what
        # is left of it (at least a second), not 10 s more on top of a drain that used it all.
        self.shutdown_deadline: float | None = None

    async def start(self) -> None:
        """Start the exporter child (OTLP) and the console processor, as configured."""
        if not self.enabled or self.provider is not None:
            return
        settings = self.settings
        resource = Resource.create({"service.name": settings.service_name, "service.version": VERSION})
        # The provider holds resource and sampler (and serves `tracer` for callers of the plain API);
        # the gateway's own spans are light spans exported below.
        provider = TracerProvider(resource=resource, sampler=settings.sampler)
        if settings.endpoint is not None:
            shipper = SpanShipper(settings.endpoint, dict(settings.headers), dict(resource.attributes),
                                  settings.value_limit)
            await shipper.start()
            self._shipper = shipper
        if settings.console:
            # stderr: stdout carries the decision log by default.
            self._console = BatchSpanProcessor(ConsoleSpanExporter(out=sys.stderr))
            provider.add_span_processor(self._console)
        self._resource = resource
        if self._shipper is not None and self._console is None:
            self._finished = self._shipper.append  # a C call a span (bounded by the shipper's own timer)
        self.provider = provider
        self.tracer = provider.get_tracer(TRACER_NAME, VERSION)
        log.info("tracing on: service %s, otlp %s, console %s", settings.service_name,
                 settings.endpoint or "off", settings.console)

    @property
    def dropped(self) -> int:
        return self._shipper.dropped if self._shipper is not None else 0

    def _both(self, span: WireSpan) -> None:
        if self._shipper is not None:
            self._shipper.add(span)
        if self._console is not None and self._resource is not None:
            self._console.on_end(readable(span, self._resource, self.settings.value_limit))

    async def flush(self, timeout_ms: int = 10_000) -> bool:
        """Export every finished span now (off the event loop). True when all were exported."""
        if self.provider is None:
            return True
        provider = self.provider
        done = await asyncio.to_thread(provider.force_flush, timeout_ms)
        if (shipper := self._shipper) is not None:
            dropped = shipper.dropped
            done = await shipper.flush(timeout_ms / 1000) and shipper.dropped == dropped and done
        return done

    async def close(self) -> None:
        """Flush and shut the exporters down (off the event loop: the exporters do blocking I/O)."""
        provider, self.provider = self.provider, None
        shipper, self._shipper = self._shipper, None
        self._finished = self._both
        self.tracer = trace.NoOpTracer()
        if shipper is not None:
            timeout_s = DEFAULT_CLOSE_S
            if self.shutdown_deadline is not None:
                left = self.shutdown_deadline - asyncio.get_running_loop().time()
                timeout_s = max(MIN_CLOSE_S, min(DEFAULT_CLOSE_S, left))
            await shipper.close(timeout_s)
        if provider is not None:
            await asyncio.to_thread(provider.shutdown)
        self._console = None

    # -- propagation -------------------------------------------------------------------------------

    def extract(self, headers: Mapping[str, Any] | None,
                meta: Mapping[str, Any] | None) -> tuple[otel_context.Context | None, list[Link]]:
        """Inbound trace context → (parent context or None, links): `_meta` wins over the HTTP header (MCP
        convention), a different HTTP context is a link; untrusted (trust_inbound false), every inbound context is a
        link but the context of a CLIENT span of this gateway still in flight (inbound.py)."""
        if not self.enabled or (not meta and type(headers) is CIMultiDictProxy and "traceparent" not in headers):
            return None, []  # no inbound context (the usual case), asked without a call per source
        return self._inbound.extract(headers, meta)

    def _carrier(self) -> dict[str, str] | None:
        """`traceparent` (and `tracestate`) of the current span, as the W3C trace-context propagator
        writes them: built from the span's wire ids as the API's formatters (`format_trace_id`, `format_span_id`)
        write them, because going through the propagator (span context, context object, composite and baggage
        propagators) costs ~7 µs a call. tests/telemetry/test_propagation.py checks both give the same headers.
        Nothing is injected for baggage: outbound requests never carried any."""
        current = self._current.get()
        if current is None:
            return None
        trace_id, span_id, _, flags, state = current.wire
        # to_bytes().hex(): the same lower-case, zero-padded digits as format(x, "032x"), at half the cost (no
        # format-spec parsing: ~1 µs a call for the three fields).
        carrier = {"traceparent": f"00-{trace_id.to_bytes(16, 'big').hex()}-{span_id.to_bytes(8, 'big').hex()}-"
                                  f"{_FLAGS_HEX[flags & 0xFF]}"}
        if state:
            carrier["tracestate"] = TraceState(list(state)).to_header()
        return carrier

    def inject_headers(self, headers: dict[str, str]) -> None:
        """Write the current span's context as `traceparent`/`tracestate` headers (HTTP upstreams)."""
        if self.enabled and (carrier := self._carrier()) is not None:
            headers.update(carrier)

    def inject_meta(self, meta: dict[str, Any]) -> None:
        """Write the current span's context into `params._meta` (every transport; stdio's only channel)."""
        if self.enabled and (carrier := self._carrier()) is not None:
            _write_meta(meta, carrier)

    def inject(self, headers: dict[str, str], meta: dict[str, Any]) -> None:
        """Both of the above (made once, copied to both): the shape `ForwardStage(inject=...)` expects."""
        if self.enabled and (carrier := self._carrier()) is not None:
            headers.update(carrier)
            _write_meta(meta, carrier)

    def current_span(self) -> AnySpan:
        """The gateway span current in this task (NO_SPAN outside any)."""
        current = self._current.get()
        return current if current is not None else NO_SPAN

    @property
    def current_light_span(self) -> Callable[[], LightSpan | None]:
        """A function giving the gateway span current in the calling task, or None: the context variable's own
        `get` (a C call, where `current_span` is a Python one), for code that asks on every call."""
        return self._current.get

    def within(self, span: AnySpan, handler: Callable[[Any], Awaitable[None]]) -> Callable[[Any], Awaitable[None]]:
        """`handler` run with `span` current: a call's message handler under its CLIENT span, since a transport may
        read what the upstream sends during the call in a task of its own (legacy SSE, stdio)."""
        if not isinstance(span, LightSpan):
            return handler
        var = self._current

        async def handle(message: Any) -> None:
            token = var.set(span)
            try:
                await handler(message)
            finally:
                var.reset(token)
        return handle

    def current_ids(self) -> tuple[str | None, str | None]:
        """(trace id, span id) in hex of the gateway's current span, else (None, None).

        Not the OpenTelemetry API's current span: the gateway never makes one current (its spans are light
        spans), and asking the API costs half a dozen Python calls on every decision record."""
        current = self._current.get()
        return current.hex_ids() if current is not None else _NO_IDS

    # -- spans -------------------------------------------------------------------------------------

    def _new(self, name: str, kind: SpanKind, attrs: dict[str, Any] | None, parent: otel_context.Context | None,
             links: list[Link] | None, start_ns: int | None, *, root: bool = False) -> LightSpan:
        """A started light span: child of `parent` (or, unless `root`, of the current span).

        `attrs` becomes the span's own dict (callers pass a fresh one).
        """
        if parent is None and not root and (current := self._current.get()) is not None:
            # A child of our own span (every span but the request's): sampled as the request was (`_child_of`, inline).
            trace_id, _, _, flags, state = parent_wire = current.wire
            return LightSpan(name, kind, (trace_id, _getrandbits(64) or 1, False, flags, state), parent_wire,
                             start_ns or time.time_ns(), attrs, links or (),
                             self._finished if flags & TraceFlags.SAMPLED else None)
        parent_context: SpanContext | None = None
        if parent is not None:
            parent_context = trace.get_current_span(parent).get_span_context()
            if not parent_context.is_valid:
                parent_context = None
        # A random trace id, never the invalid 0, as the SDK's RandomIdGenerator makes one (inline, as span ids are).
        trace_id = parent_context.trace_id if parent_context is not None else _getrandbits(128) or 1
        if self._parent_or_on:
            # The default sampler's answer without asking it: a root is sampled, a child follows its parent.
            sampled = parent_context is None or parent_context.trace_flags.sampled
            trace_state = parent_context.trace_state if parent_context is not None else None
        else:
            decision = self.settings.sampler.should_sample(
                trace.set_span_in_context(NonRecordingSpan(parent_context)) if parent_context else None,
                trace_id, name, kind, attrs, links)
            sampled = decision.decision.is_sampled()  # type: ignore[no-untyped-call]
            trace_state = decision.trace_state
            if decision.attributes:
                attrs = {**(attrs or {}), **decision.attributes}
        flags = TraceFlags.SAMPLED if sampled else TraceFlags.DEFAULT
        wire = (trace_id, _getrandbits(64) or 1, False, flags,
                tuple(trace_state.items()) if trace_state else ())
        return LightSpan(name, kind, wire, wire_context(parent_context) if parent_context is not None else None,
                         start_ns or time.time_ns(), attrs, links or (), self._finished if sampled else None)

    def _child_of(self, current: LightSpan) -> WireContext:
        """A new span's context under `current`: same trace, flags and state, a new span id."""
        trace_id, _, _, flags, state = current.wire
        return (trace_id, _getrandbits(64) or 1, False, flags, state)

    def _span(self, span: LightSpan) -> CurrentSpan:
        return CurrentSpan(self._current, span, redact=self.redact)

    def server_span(self, method: str, target: str | None = None, attrs: Attributes | None = None,
                    parent: otel_context.Context | None = None, links: list[Link] | None = None,
                    start_time: int | None = None) -> AbstractContextManager[AnySpan]:
        """The SERVER span of one inbound MCP request, made current. Named `{method} {target}`.
        A dict `attrs` becomes the span's own.

        With no parent the span is a root even if some other span is current (no wrong parent).
        An exception leaving the block marks the span (error.type, status) and is re-raised.
        """
        if not self.enabled:
            return nullcontext(NO_SPAN)
        if type(attrs) is dict:  # `_with_method`, inline (a dict given is the span's own)
            attrs.setdefault("mcp.method.name", method)
        else:
            attrs = _with_method(method, attrs)
        return CurrentSpan(self._current, self._new(f"{method} {target}" if target else method, SpanKind.SERVER,
                                                  attrs, parent, links, start_time, root=True), redact=self.redact)

    def stage_span(self, name: str, attrs: Attributes | None = None) -> AbstractContextManager[AnySpan]:
        """An INTERNAL child span of the current span (identify, authorize, approval, credential)."""
        if not self.enabled:
            return nullcontext(NO_SPAN)
        return self._span(self._new(name, SpanKind.INTERNAL, dict(attrs or {}), None, None, None))

    def client_span(self, method: str, target: str | None = None,
                    attrs: Attributes | None = None) -> AbstractContextManager[AnySpan]:
        """The CLIENT span of the upstream request; `inject` inside it propagates this span."""
        if not self.enabled:
            return nullcontext(NO_SPAN)
        if type(attrs) is dict:  # `_with_method`, inline (a dict given is the span's own)
            attrs.setdefault("mcp.method.name", method)
        else:
            attrs = _with_method(method, attrs)
        span = self._new(f"{method} {target}" if target else method, SpanKind.CLIENT, attrs, None, None, None)
        if (issued := self._inbound.issued) is not None:  # untrusted inbound context: remember our own (inbound.py)
            return _IssuedSpan(self._current, span, issued, self.redact)
        return CurrentSpan(self._current, span, own_code=False, redact=self.redact)

    def record_span(self, name: str, start_ns: int, end_ns: int, attrs: Attributes | None = None,
                    error: BaseException | None = None) -> None:
        """A finished child of the current span, after the fact (e.g. identify, which runs before
        the request's method is known). A dict `attrs` becomes the span's: the caller hands it over."""
        if not self.enabled:
            return
        current = self._current.get()
        if current is not None and error is None and type(attrs) is dict and None not in attrs.values():
            # The common case: a finished child of the request's span goes straight to the exporter
            # queue, with no span object in between (these spans are never current, never propagated).
            parent = current.wire
            if parent[3] & TraceFlags.SAMPLED:  # `_child_of`, inline: three of these a call
                trace_id, _, _, flags, state = parent
                self._finished((name, _INTERNAL, (trace_id, _getrandbits(64) or 1, False, flags, state), parent,
                                start_ns, end_ns, attrs, [], UNSET_STATUS))
            return
        span = self._new(name, SpanKind.INTERNAL, dict(attrs or {}), None, None, start_ns)
        if error is not None:
            mark_error(span, error, redact=self.redact)
        span.end(end_ns)


class _IssuedSpan(CurrentSpan):
    """A CLIENT span whose context, while it is in flight, is trusted as a parent when it comes back (inbound.py)."""

    __slots__ = ("_ids", "_issued")

    def __init__(self, var: ContextVar[LightSpan | None], span: LightSpan, issued: set[tuple[int, int]],
                 redact: Callable[[Any], Any] | None) -> None:
        super().__init__(var, span, own_code=False, redact=redact)
        self._issued = issued
        self._ids = (span.wire[0], span.wire[1])

    def __enter__(self) -> LightSpan:
        self._issued.add(self._ids)
        return super().__enter__()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        self._issued.discard(self._ids)
        super().__exit__(kind, exc, tb)


def _write_meta(meta: dict[str, Any], carrier: dict[str, str]) -> None:
    """The gateway's context over the agent's `_meta` copy, whole: a context with no trace state writes none, so the
    agent's own `tracestate` (one the gateway dropped as malformed, or of a trace it did not join) must go."""
    if "tracestate" in meta and "tracestate" not in carrier:
        del meta["tracestate"]
    meta.update(carrier)


def _with_method(method: str, attrs: Attributes | None) -> dict[str, Any]:
    """The span's attributes with `mcp.method.name`: a dict given is taken over (callers pass a fresh one)."""
    if type(attrs) is dict:
        attrs.setdefault("mcp.method.name", method)
        return attrs
    return {"mcp.method.name": method, **(attrs or {})}


_NO_IDS: tuple[None, None] = (None, None)


def api_span_ids() -> tuple[str | None, str | None]:
    """(trace id, span id) in hex of the OpenTelemetry API's current span, or (None, None)."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None, None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


def span_name(method: str, target: str | None) -> str:
    return f"{method} {target}" if target else method


def set_attributes(span: AnySpan, attrs: Attributes) -> None:
    if span.is_recording():
        span.set_attributes({k: v for k, v in attrs.items() if v is not None})
