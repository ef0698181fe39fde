"""The block around one inbound JSON-RPC request: its SERVER span made current, identify recorded under it, and on
the way out the error and the request's duration metric (Observability.request makes it)."""

from __future__ import annotations

import time
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gateway.telemetry.decision_log import Redactor as RedactFn
from gateway.telemetry.span_errors import mark_error
from gateway.telemetry.spans import LightSpan
from gateway.telemetry.tracing import NO_SPAN, AnySpan

if TYPE_CHECKING:
    from gateway.telemetry.observability import Observability


@dataclass
class RequestTrace:
    """The SERVER span of one inbound request, and what the edge learned about its outcome."""

    span: AnySpan
    error: BaseException | None = None
    tool_error: bool = False  # answered with a tool result with `isError: true`
    redact: RedactFn | None = None  # the gateway's secret redactor, for the status description (span_errors)

    @property
    def trace_id(self) -> str | None:
        if isinstance(self.span, LightSpan):
            return self.span.hex_ids()[0]
        context = self.span.get_span_context()
        return format(context.trace_id, "032x") if context.is_valid else None

    @property
    def span_id(self) -> str | None:
        context = self.span.get_span_context()
        return format(context.span_id, "016x") if context.is_valid else None

    def fail(self, exc: BaseException) -> None:
        """The request was answered with an error (the edge turned the exception into a JSON-RPC error)."""
        self.error = exc
        mark_error(self.span, exc, redact=self.redact)

    def answered(self, result: Any) -> None:
        """The request was answered with `result`: one with `isError: true` is the conventions' `tool_error`
        in the duration metric (the span got it from the call's record stage)."""
        # is_tool_error(result), inline: it and the record's two run on every call (a call each: ~1k instructions)
        if isinstance(result, dict) and result.get("isError") is True:
            self.tool_error = True


class RequestBlock:
    """`Observability.request`'s block (a plain context manager: no generator per request): makes the
    SERVER span current, records identify under it, and on the way out the error and the duration metric."""

    __slots__ = ("_base", "_identify", "_method", "_obs", "_span", "_started", "_target", "_trace", "_view")
    _trace: RequestTrace  # made on entry

    def __init__(self, obs: Observability, method: str, target: str | None, started: float,
                 span: AbstractContextManager[AnySpan] | None = None,
                 identify: tuple[tuple[int, int], dict[str, Any]] | None = None, view: str | None = None,
                 base: tuple[tuple[str, Any], ...] = ()) -> None:
        self._obs = obs
        self._base = base  # the metric's protocol and connection pairs
        self._method = method  # OTHER_METHOD for a method MCP does not define
        self._target = target
        self._started = started
        self._span = span  # None: tracing off
        self._identify = identify
        self._view = view  # the session's upstream (None: aggregated), for what the target names

    def __enter__(self) -> RequestTrace:
        if self._span is None:
            self._trace = RequestTrace(NO_SPAN)
            return self._trace
        self._trace = RequestTrace(self._span.__enter__(), redact=self._obs.telemetry.redact)
        if self._identify is not None:
            (start_ns, end_ns), who = self._identify
            self._obs.telemetry.record_span("customs.identify", start_ns, end_ns, who)
        return self._trace

    def _unnamed(self, span: AnySpan, target: str) -> None:
        """A failed request's name that nothing lists: not the span's name, and its attribute (kept: a probe is worth
        finding) through the secret redactor, as the decision log writes it (a token sent as a tool name)."""
        span.update_name(self._method)
        redact = self._obs.telemetry.redact
        clean = redact(target) if redact is not None else target
        if clean != target:
            span.set_attribute(_unnamed_attribute(self._method), clean)

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        trace = self._trace
        if exc is not None:
            trace.error = exc
        target = self._target
        # An answered call named a real tool or prompt; a failed one may have named anything: then the name
        # is a metric value and in the span name only if it is listed (not on the call path: errors only).
        if target is not None and trace.error is not None and not self._obs.names_item(self._method, target,
                                                                                      self._view):
            self._unnamed(trace.span, target)
            target = None
        try:
            self._obs._server_metric(self._method, target, trace.error, time.perf_counter() - self._started,
                                     trace.tool_error, self._base)
        finally:
            if self._span is not None:
                self._span.__exit__(kind, exc, tb)  # marks the span if an exception leaves the block, ends it


def _unnamed_attribute(method: str) -> str:
    return "gen_ai.prompt.name" if method == "prompts/get" else "gen_ai.tool.name"
