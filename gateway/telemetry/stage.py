"""record, and the tracing of the other stages: decision record, metrics and span attributes of each call.

`RecordStage` runs last for every call (the pipeline's `finally`): it writes the decision record,
counts the call and puts the gateway's facts on the current (SERVER) span. It does no I/O and
does not await anything slow. `instrument(pipeline, ...)` times authorize and credential through the
pipeline's `timed` hook (`StageRecorder`: metric and after-the-fact span), wraps a held call's approve
in its span and forward in the CLIENT span.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from typing import Any

from opentelemetry.trace import SpanContext

from gateway.catalog import PENDING_TOOL
from gateway.config.model import UpstreamConfig
from gateway.context import NOT_FOUND_ITEM, CallContext
from gateway.errors import GatewayError
from gateway.pipeline import Forwarder, Pipeline, Stage
from gateway.telemetry.attributes import (
    FACTS,
    SHARED,
    Attrs,
    approval_attributes,
    call_facts,
    decision_facts,
    transport_attributes,
    upstream_attributes,
)
from gateway.telemetry.decision_log import DecisionLog, error_reason
from gateway.telemetry.metrics import Metrics
from gateway.telemetry.span_errors import error_code, is_tool_error, mark_error, mark_tool_error
from gateway.telemetry.tracing import AnySpan, Telemetry, set_attributes, span_name

UPSTREAM_REASONS = frozenset({"upstream_unavailable", "upstream_timeout", "upstream_error"})
STAGE_SPANS = {"authorize": "customs.authorize", "approve": "customs.approval", "credential": "customs.credential"}


class RecordStage:
    """Decision record + metrics + SERVER-span attributes from a finished CallContext."""

    def __init__(self, log: DecisionLog | None, metrics: Metrics | None, telemetry: Telemetry | None) -> None:
        self._log = log
        self._metrics = metrics
        # The current (SERVER) span, asked by the context variable's own get: None with tracing off.
        self._current = telemetry.current_light_span if telemetry is not None and telemetry.enabled else None
        self._telemetry = telemetry  # its `redact` (set by Observability) cleans a failed call's status description

    async def __call__(self, ctx: CallContext) -> None:
        self.record(ctx)

    def record(self, ctx: CallContext) -> None:
        reason = error_reason(ctx.error)
        if self._metrics is not None:
            self._count(ctx, reason)
        if self._current is not None and (span := self._current()) is not None and span.is_recording():
            # The facts, not the attributes: those are built where the span is exported (attributes.expand).
            span.set_attributes({FACTS: call_facts(ctx)})
            if ctx.error is not None:
                mark_error(span, ctx.error, redact=self._telemetry.redact if self._telemetry is not None else None)
            elif isinstance(result := ctx.result, dict) and result.get("isError") is True:  # is_tool_error, inline
                mark_tool_error(span)
        if self._log is not None:
            self._log.record_decision(ctx)

    def _count(self, ctx: CallContext, reason: str | None) -> None:
        metrics = self._metrics
        assert metrics is not None
        upstream = ctx.upstream or ""
        decision = ctx.decision
        tool = _label(ctx)
        outcome: str
        if decision is not None:
            outcome = decision.outcome
        elif NOT_FOUND_ITEM in ctx.extra:
            outcome = "deny"  # a denial (the agent's answer is one) of no tool
        else:
            outcome = "none"
        result = ctx.result  # is_tool_error(result), inline: every call passes here
        metrics.record_call(upstream, tool, outcome, reason or (
            "tool_error" if isinstance(result, dict) and result.get("isError") is True else "ok"))
        if decision is not None and decision.errors:  # an engine fault denies: count it, or it hides among denials
            metrics.policy_error(upstream, tool)
        if decision is not None and decision.shadow_outcome not in (None, decision.outcome):
            metrics.shadow_disagreement(upstream, tool, outcome, str(decision.shadow_outcome))
        if reason in UPSTREAM_REASONS:
            metrics.upstream_error(upstream, reason or "")
        elif reason == "rate_limited":
            data = ctx.error.data if isinstance(ctx.error, GatewayError) else {}
            metrics.rate_limited(str(data.get("scope") or data.get("limit") or "call"))


def _label(ctx: CallContext) -> str:
    """The call's `gen_ai.tool.name` in metrics: a name the agent may have made up is no label value (one series
    per invented name), nor is a resource URI (its ToolInfo's name). A tool is real once found in its upstream's
    list (not for one denied before its list was known: PENDING_TOOL still there), a prompt once answered."""
    tool = ctx.tool
    if tool is None or NOT_FOUND_ITEM in ctx.extra or ctx.action == "read_resource":
        return ""
    if ctx.action == "get_prompt":
        return tool.name if ctx.error is None else ""
    return "" if PENDING_TOOL in ctx.extra else tool.name


class StageRecorder:
    """The pipeline's `timed`: the duration metric of authorize and credential, and their spans.

    Nothing these stages do happens inside their span (no child span, no propagated context, no
    decision-log event), so the span is recorded when the stage ends, never made current: its end is
    now, its start the end minus the monotonic duration.
    """

    def __init__(self, telemetry: Telemetry, metrics: Metrics | None) -> None:
        self._telemetry = telemetry
        # The histogram's own record, bound once: Metrics.stage_duration around it is a call more per stage per call.
        self._record_duration = metrics.stage.record if metrics is not None and metrics.enabled else None
    def __call__(self, stage: str, ctx: CallContext, started_ns: int, error: BaseException | None) -> None:
        duration_ns = time.perf_counter_ns() - started_ns
        if self._record_duration is not None:
            self._record_duration(duration_ns / 1e9, stage)
        if self._telemetry.enabled:
            end_ns = time.time_ns()
            # The spans' attributes as deferred facts (attributes.expand).
            attrs = {FACTS: ("credential", ctx.credential_mode, ctx.credential_audience)} if stage == "credential" \
                else decision_facts(ctx.decision)
            self._telemetry.record_span(STAGE_SPANS[stage], end_ns - duration_ns, end_ns, attrs, error)


class _Traced:
    """A stage wrapped in a child span named after it, with attributes read from ctx afterwards."""

    def __init__(self, stage: Stage, name: str, telemetry: Telemetry, metrics: Metrics | None,
                 after: Callable[[CallContext], Attrs], only_if: Callable[[CallContext], bool] | None = None) -> None:
        self._stage = stage
        self._name = name
        self._span_name = STAGE_SPANS[name]
        self._telemetry = telemetry
        self._metrics = metrics
        self._after = after
        self._only_if = only_if

    async def __call__(self, ctx: CallContext) -> None:
        if self._only_if is not None and not self._only_if(ctx):
            await self._stage(ctx)
            return
        started = time.perf_counter()
        if not self._telemetry.enabled:
            try:
                await self._stage(ctx)
            finally:
                if self._metrics is not None:
                    self._metrics.stage_duration(self._name, time.perf_counter() - started)
            return
        with self._telemetry.stage_span(self._span_name) as span:
            try:
                await self._stage(ctx)
            finally:
                set_attributes(span, self._after(ctx))
                if self._name == "approve":
                    link_held_call(span, ctx)
                if self._metrics is not None:
                    self._metrics.stage_duration(self._name, time.perf_counter() - started)


def link_held_call(span: AnySpan, ctx: CallContext) -> None:
    """A call released by an approval another request asked for (the agent's retry after `approval_pending`, an
    identical call that joined a held one) links its `customs.approval` span to that request's, whose trace holds
    the wait: nothing of that context came with this request, so a link, never a parent (docs/tracing.md)."""
    held = ctx.approval.held_span if ctx.approval is not None else None
    if held is None or not span.is_recording():
        return
    try:
        trace_id, span_id = int(held[0], 16), int(held[1], 16)
    except ValueError:  # not ids (an item written by something else): nothing to link to
        return
    own = span.get_span_context()
    if (trace_id, span_id) != (own.trace_id, own.span_id) and trace_id and span_id:
        span.add_link(SpanContext(trace_id, span_id, is_remote=True), {"customs.link": "held_call"})


class _TracedForward:
    """forward inside the CLIENT span (so `inject` propagates it), timed as an MCP client operation."""

    def __init__(self, forward: Forwarder, telemetry: Telemetry, metrics: Metrics | None,
                 upstreams: Mapping[str, UpstreamConfig]) -> None:
        self._forward = forward
        self._telemetry = telemetry
        self._metrics = metrics
        self._transport = {name: transport_attributes(config) for name, config in upstreams.items()}
        self._base: dict[tuple[Any, ...], Attrs] = {}

    def _attributes(self, ctx: CallContext) -> Attrs:
        if self._telemetry.capture_args:
            return upstream_attributes(ctx, self._transport.get(ctx.upstream or ""), True, self._telemetry.redact)
        # Without argument values the attributes depend only on upstream, method and tool or URI: built once per
        # such key. `jsonrpc.request.id` is the id the transport sends upstream, not the agent's: it sets it.
        key = (ctx.upstream, ctx.method, ctx.params.get("name"), ctx.params.get("uri"))
        base = self._base.get(key)
        if base is None:
            if len(self._base) >= 1024:
                self._base.clear()
            # (the redactor: a resource URI may carry a token, and is recorded with or without capture_args)
            base = self._base[key] = upstream_attributes(ctx, self._transport.get(ctx.upstream or ""), False,
                                                         self._telemetry.redact)
        return {SHARED: base}  # merged where exported (attributes.expand), marshalled once per batch

    async def __call__(self, ctx: CallContext) -> dict[str, Any]:
        attrs = self._attributes(ctx) if self._telemetry.enabled else None
        target = ctx.tool.name if ctx.tool and ctx.method in ("tools/call", "prompts/get") else None
        started = time.perf_counter()
        error: str | None = None
        code: str | None = None
        # An exception leaving the block marks the span as it exits (own_code=False, the gateway's redactor).
        with self._telemetry.client_span(ctx.method, target, attrs) as span:
            if attrs is not None and (relay := ctx.extra.get("relay")) is not None:
                # What the upstream sends during the call is handled under this span, whichever task reads it.
                ctx.extra["relay"] = self._telemetry.within(span, relay)
            try:
                result = await self._forward(ctx)
                if is_tool_error(result):
                    error = "tool_error"
                    mark_tool_error(span)
            except BaseException as exc:
                error = error_reason(exc) if isinstance(exc, GatewayError) else _code(exc)
                code = error_code(exc, own=False)  # the upstream's answer only: none when it never answered
                if target is not None and ctx.method == "prompts/get":  # maybe a name the agent made up
                    span.update_name(ctx.method)
                raise
            finally:
                if self._metrics is not None:
                    self._record(ctx, time.perf_counter() - started, error, code)
        return result

    def _record(self, ctx: CallContext, seconds: float, error: str | None, code: str | None) -> None:
        assert self._metrics is not None
        self._metrics.stage_duration("forward", seconds)
        attrs: Attrs = {"customs.upstream": ctx.upstream or ""}
        if ctx.method == "tools/call" and ctx.tool is not None:
            attrs["gen_ai.tool.name"] = ctx.tool.name
        elif ctx.method == "prompts/get" and ctx.tool is not None and error is None:  # (answered: a real prompt)
            attrs["gen_ai.prompt.name"] = ctx.tool.name
        if error is not None:
            attrs["error.type"] = error
            if code is not None:
                attrs["rpc.response.status_code"] = code
        session = ctx.extra.get("session")  # the agent's: its connection to this upstream negotiated the revision
        if session is not None and ctx.upstream and (
                version := self._metrics.negotiated_version(session.upstreams.get(ctx.upstream))):
            attrs["mcp.protocol.version"] = version
        self._metrics.client_operation(ctx.method, seconds, attrs)


def _code(exc: BaseException) -> str:
    error = getattr(exc, "error", None)
    if isinstance(error, dict) and error.get("code") is not None:
        return str(error["code"])
    return error_reason(exc) or type(exc).__name__


def _held(ctx: CallContext) -> bool:
    return ctx.decision is not None and ctx.decision.outcome == "approval_required"


def instrument(pipeline: Pipeline, telemetry: Telemetry, metrics: Metrics | None,
               upstreams: Mapping[str, UpstreamConfig] | None = None) -> Pipeline:
    """The same pipeline with spans and stage timings of authorize, approve, credential and forward.

    authorize and credential are timed by the pipeline itself (`StageRecorder`); approve is wrapped in
    its span only for calls that were held (decision approval_required); forward in the CLIENT span.
    """
    configs = dict(upstreams or {})
    return dataclasses.replace(
        pipeline,
        timed=StageRecorder(telemetry, metrics),
        approve=_Traced(pipeline.approve, "approve", telemetry, metrics,
                        lambda ctx: approval_attributes(ctx.approval), only_if=_held),
        forward=_TracedForward(pipeline.forward, telemetry, metrics, configs),
    )


__all__ = ["RecordStage", "StageRecorder", "instrument", "span_name"]
