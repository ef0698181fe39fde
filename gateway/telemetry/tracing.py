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
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from gateway.config.model import TelemetryConfig
from gateway.telemetry.settings import TraceSettings, trace_settings

log = logging.getLogger("customs.telemetry")

TRACER_NAME = "customs"
VERSION = "0.1.0"
PROPAGATION_KEYS = ("traceparent", "tracestate", "baggage")
NO_SPAN: Span = trace.INVALID_SPAN
Attributes = Mapping[str, Any]


def _carrier(source: Mapping[str, Any] | None) -> dict[str, str]:
    """The propagation keys of a header map or `_meta` dict, lower-cased, strings only."""
    if not source:
        return {}
    out: dict[str, str] = {}
    for key in PROPAGATION_KEYS:
        value = source.get(key)
        if value is None and not isinstance(source, dict):
            continue  # case-insensitive header maps (aiohttp) already answered
        if value is None:
            value = next((v for k, v in source.items() if isinstance(k, str) and k.lower() == key), None)
        if isinstance(value, str):
            out[key] = value
    return out


def error_type(exc: BaseException) -> str:
    """Low-cardinality `error.type`: the gateway reason, the upstream's JSON-RPC code, or the class name."""
    reason = getattr(exc, "reason", None)
    if isinstance(reason, str):
        if reason == "upstream_rpc_error":
            code = getattr(exc, "error", {}).get("code")
            return str(code) if code is not None else reason
        return reason
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"
    if isinstance(exc, TimeoutError):
        return "timeout"
    return type(exc).__qualname__


def mark_error(span: Span, exc: BaseException) -> None:
    """Set `error.type`, `rpc.response.status_code` and ERROR status (description: the error message)."""
    if not span.is_recording():
        return
    span.set_attribute("error.type", error_type(exc))
    code = getattr(exc, "code", None)
    if code is None:
        code = getattr(exc, "error", {}).get("code") if isinstance(getattr(exc, "error", None), dict) else None
    if code is not None:
        span.set_attribute("rpc.response.status_code", str(code))
    message = getattr(exc, "message", None)
    span.set_status(Status(StatusCode.ERROR, message if isinstance(message, str) else type(exc).__name__))


class Telemetry:
    """Owner of the tracer provider and exporters for one gateway (start/close)."""

    def __init__(self, config: TelemetryConfig, *, env: Mapping[str, str] | None = None) -> None:
        self.settings: TraceSettings = trace_settings(config, os.environ if env is None else env)
        self.enabled = self.settings.enabled
        self.capture_args = self.settings.capture_args
        self.redact: Callable[[Any], Any] | None = None  # applied to captured arguments (set by Observability)
        self.provider: TracerProvider | None = None
        self.tracer: trace.Tracer = trace.NoOpTracer()
        self._propagator = CompositePropagator([TraceContextTextMapPropagator(), W3CBaggagePropagator()])

    async def start(self) -> None:
        """Build the provider and exporters (the batch processor starts its worker thread here)."""
        if not self.enabled or self.provider is not None:
            return
        settings = self.settings
        resource = Resource.create({"service.name": settings.service_name, "service.version": VERSION})
        provider = TracerProvider(resource=resource, sampler=settings.sampler)
        if settings.endpoint is not None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter(endpoint=settings.endpoint, headers=settings.headers or None)
            provider.add_span_processor(BatchSpanProcessor(exporter))
        if settings.console:
            # stderr: stdout carries the decision log by default.
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter(out=sys.stderr)))
        self.provider = provider
        self.tracer = provider.get_tracer(TRACER_NAME, VERSION)
        log.info("tracing on: service %s, otlp %s, console %s", settings.service_name,
                 settings.endpoint or "off", settings.console)

    async def flush(self, timeout_ms: int = 10_000) -> bool:
        """Export every finished span now (off the event loop). True when all were exported."""
        if self.provider is None:
            return True
        provider = self.provider
        return await asyncio.to_thread(provider.force_flush, timeout_ms)

    async def close(self) -> None:
        """Flush and shut the exporters down (off the event loop: the exporter does blocking HTTP)."""
        provider, self.provider = self.provider, None
        self.tracer = trace.NoOpTracer()
        if provider is not None:
            await asyncio.to_thread(provider.shutdown)

    # -- propagation -------------------------------------------------------------------------------

    def extract(self, headers: Mapping[str, Any] | None,
                meta: Mapping[str, Any] | None) -> tuple[otel_context.Context | None, list[Link]]:
        """Inbound trace context → (parent context or None, links).

        `_meta` wins over the HTTP header (MCP convention); a different HTTP context becomes a link.
        Untrusted (trust_inbound false): no parent; every valid inbound context is a link.
        """
        if not self.enabled:
            return None, []
        found: list[tuple[str, otel_context.Context, trace.SpanContext]] = []
        for source, carrier in (("meta", _carrier(meta)), ("http", _carrier(headers))):
            if "traceparent" not in carrier:
                continue
            ctx = self._propagator.extract(carrier)
            span_context = trace.get_current_span(ctx).get_span_context()
            if span_context.is_valid and all(span_context != seen for _, _, seen in found):
                found.append((source, ctx, span_context))
        if not found:
            return None, []
        if self.settings.trust_inbound:
            _, parent, _ = found[0]
            return parent, [Link(sc, {"customs.link": f"{source}_context"}) for source, _, sc in found[1:]]
        return None, [Link(sc, {"customs.link": "untrusted_parent", "customs.link.source": source})
                      for source, _, sc in found]

    def inject_headers(self, headers: dict[str, str]) -> None:
        """Write the current span's context as `traceparent`/`tracestate` headers (HTTP upstreams)."""
        if self.enabled:
            self._propagator.inject(headers)

    def inject_meta(self, meta: dict[str, Any]) -> None:
        """Write the current span's context into `params._meta` (every transport; stdio's only channel)."""
        if self.enabled:
            self._propagator.inject(meta)

    def inject(self, headers: dict[str, str], meta: dict[str, Any]) -> None:
        """Both of the above: the shape `ForwardStage(inject=...)` expects."""
        if self.enabled:
            self._propagator.inject(headers)
            self._propagator.inject(meta)

    # -- spans -------------------------------------------------------------------------------------

    def server_span(self, method: str, target: str | None = None, attrs: Attributes | None = None,
                    parent: otel_context.Context | None = None, links: list[Link] | None = None,
                    start_time: int | None = None) -> AbstractContextManager[Span]:
        """The SERVER span of one inbound MCP request, made current. Named `{method} {target}`.

        With no parent the span is a root even if some other span is current (no wrong parent).
        An exception leaving the block marks the span (error.type, status) and is re-raised.
        """
        if not self.enabled:
            return nullcontext(NO_SPAN)
        attributes = {"mcp.method.name": method, **(attrs or {})}
        return self._span(span_name(method, target), SpanKind.SERVER, attributes,
                          parent if parent is not None else otel_context.Context(), links, start_time)

    def stage_span(self, name: str, attrs: Attributes | None = None) -> AbstractContextManager[Span]:
        """An INTERNAL child span of the current span (identify, authorize, approval, credential)."""
        if not self.enabled:
            return nullcontext(NO_SPAN)
        return self._span(name, SpanKind.INTERNAL, attrs, None, None, None)

    def client_span(self, method: str, target: str | None = None,
                    attrs: Attributes | None = None) -> AbstractContextManager[Span]:
        """The CLIENT span of the upstream request; `inject` inside it propagates this span."""
        if not self.enabled:
            return nullcontext(NO_SPAN)
        attributes = {"mcp.method.name": method, **(attrs or {})}
        return self._span(span_name(method, target), SpanKind.CLIENT, attributes, None, None, None)

    def record_span(self, name: str, start_ns: int, end_ns: int, attrs: Attributes | None = None,
                    error: BaseException | None = None) -> None:
        """A finished child of the current span, after the fact (e.g. identify, which runs before
        the request's method is known)."""
        if not self.enabled:
            return
        span = self.tracer.start_span(name, kind=SpanKind.INTERNAL, attributes=_clean(attrs), start_time=start_ns)
        if error is not None:
            mark_error(span, error)
        span.end(end_time=end_ns)

    @contextmanager
    def _span(self, name: str, kind: SpanKind, attrs: Attributes | None, parent: otel_context.Context | None,
              links: list[Link] | None, start_time: int | None) -> Iterator[Span]:
        with self.tracer.start_as_current_span(name, context=parent, kind=kind, attributes=_clean(attrs),
                                               links=links or (), start_time=start_time, record_exception=False,
                                               set_status_on_exception=False) as span:
            try:
                yield span
            except BaseException as exc:
                mark_error(span, exc)
                raise


def span_name(method: str, target: str | None) -> str:
    return f"{method} {target}" if target else method


def _clean(attrs: Attributes | None) -> dict[str, Any] | None:
    """Drop None values (OTel rejects them with a warning per attribute)."""
    if not attrs:
        return None
    return {k: v for k, v in attrs.items() if v is not None}


def set_attributes(span: Span, attrs: Attributes) -> None:
    if span.is_recording():
        span.set_attributes({k: v for k, v in attrs.items() if v is not None})
