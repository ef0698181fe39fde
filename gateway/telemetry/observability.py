"""The one telemetry part the app wires: traces, metrics and the decision log behind a small surface.

    obs = Observability(config, redactor=secrets.redact)       # no I/O
    owners: obs (start/close);  routes: obs.routes() (/metrics)
    ForwardStage(..., inject=obs.inject);  Pipeline(..., record=obs.record);  pipeline = obs.instrument(pipeline)
    at the HTTP edge, around dispatch of one JSON-RPC request:
        with obs.request(request.headers, message.method, message.params, message.id, principal=...,
                         session_id=..., protocol_version=..., start_ns=t0, identify_ns=(t0, t1)) as req:
            ... inbound.trace_id = req.trace_id ... on an error answer: req.fail(exc)
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from gateway.config.model import Config
from gateway.context import Principal
from gateway.credentials.redaction import Redactor
from gateway.memo import Memo
from gateway.pipeline import Pipeline
from gateway.telemetry.attributes import (
    decision_attributes,
    principal_attributes,
    request_attributes,
    target_of,
)
from gateway.telemetry.decision_log import DecisionLog
from gateway.telemetry.decision_log import Redactor as RedactFn
from gateway.telemetry.metrics import PROMETHEUS_CONTENT_TYPE, Metrics
from gateway.telemetry.spans import LightSpan
from gateway.telemetry.stage import RecordStage, instrument
from gateway.telemetry.tracing import NO_SPAN, AnySpan, Telemetry, error_type, mark_error


@dataclass
class RequestTrace:
    """The SERVER span of one inbound request, and what the edge learned about its outcome."""

    span: AnySpan
    error: BaseException | None = None

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
        mark_error(self.span, exc)


class Observability:
    """Owner of Telemetry (traces), Metrics and DecisionLog for one gateway; start/close in that order."""

    def __init__(self, config: Config, redactor: RedactFn | None = None, *,
                 env: Mapping[str, str] | None = None) -> None:
        self.telemetry = Telemetry(config.telemetry, env=env)
        # Exported spans leave the gateway: captured arguments always pass a secret redactor.
        self.telemetry.redact = redactor or Redactor(config.secrets).redact
        self.metrics = Metrics(config.telemetry, env=env)
        self.log = DecisionLog(config.decision_log, redactor, on_drop=self.metrics.log_record_dropped,
                               current_ids=self.telemetry.current_ids)
        # Built once per principal / cached decision and shared by the spans that carry them.
        self._principal_attributes = Memo(principal_attributes)
        self._decision_attributes = Memo(decision_attributes)
        self.record = RecordStage(self.log, self.metrics, self.telemetry, self._decision_attributes)
        self._upstreams = {u.name: u for u in config.upstreams}

    async def start(self) -> None:
        await self.telemetry.start()
        await self.metrics.start()
        await self.log.start()

    async def close(self) -> None:
        # The decision log first: its last records may still carry ids of spans being exported.
        try:
            await self.log.close()
        finally:
            try:
                await self.telemetry.close()
            finally:
                await self.metrics.close()

    # -- wiring ------------------------------------------------------------------------------------

    def inject(self, headers: dict[str, str], meta: dict[str, Any]) -> None:
        self.telemetry.inject(headers, meta)

    def instrument(self, pipeline: Pipeline) -> Pipeline:
        return instrument(pipeline, self.telemetry, self.metrics, self._upstreams, self._decision_attributes)

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/metrics", self.metrics_handler, allow_head=False)] if self.metrics.registry else []

    async def metrics_handler(self, request: web.Request) -> web.Response:
        response = web.Response(body=self.metrics.prometheus_text())
        response.headers["Content-Type"] = PROMETHEUS_CONTENT_TYPE
        return response

    # -- the HTTP edge -----------------------------------------------------------------------------

    @contextmanager
    def request(self, headers: Mapping[str, Any] | None, method: str, params: Mapping[str, Any] | None,
                request_id: Any, *, principal: Principal | None = None, session_id: str | None = None,
                protocol_version: str | None = None, start_ns: int | None = None,
                identify_ns: tuple[int, int] | None = None) -> Iterator[RequestTrace]:
        """The SERVER span of one JSON-RPC request (current inside the block) and its duration metric.

        `start_ns`/`identify_ns` (time.time_ns()) let the span start when the HTTP request arrived and
        record identify, which runs before the method is known, as a child after the fact.
        """
        params = params or {}
        if not self.telemetry.enabled:  # tracing off: only the duration metric, no attribute work
            trace = RequestTrace(NO_SPAN)
            started = time.perf_counter()
            try:
                yield trace
            except BaseException as exc:
                trace.error = exc
                raise
            finally:
                self._server_metric(method, target_of(method, params), trace.error, time.perf_counter() - started)
            return
        meta = params.get("_meta")
        parent, links = self.telemetry.extract(headers, meta if isinstance(meta, Mapping) else None)
        attrs = request_attributes(method, params, request_id, session_id=session_id,
                                   protocol_version=protocol_version, capture_args=self.telemetry.capture_args,
                                   redact=self.telemetry.redact)
        who = self._principal_attributes(principal) if principal is not None else None
        if who is not None:
            attrs.update(who)
        started = time.perf_counter() if start_ns is None else time.perf_counter() - (time.time_ns() - start_ns) / 1e9
        target = target_of(method, params)
        with self.telemetry.server_span(method, target, attrs, parent, links, start_time=start_ns) as span:
            trace = RequestTrace(span)
            if identify_ns is not None and who is not None:
                self.telemetry.record_span("customs.identify", identify_ns[0], identify_ns[1], who)
            try:
                yield trace
            except BaseException as exc:
                trace.error = exc
                raise
            finally:
                self._server_metric(method, target, trace.error, time.perf_counter() - started)

    def _server_metric(self, method: str, target: str | None, error: BaseException | None, seconds: float) -> None:
        attrs: dict[str, Any] = {}
        if method == "tools/call" and target:
            attrs["gen_ai.tool.name"] = target
        if error is not None:
            attrs["error.type"] = error_type(error)
        self.metrics.server_operation(method, seconds, attrs)

    # -- event records -----------------------------------------------------------------------------

    def event(self, type: str, **fields: Any) -> None:
        """A non-decision record in the decision log (approval_state, revocation, quarantine, policy_reload)."""
        self.log.event(type, **fields)

    def policy_reloaded(self, ok: bool, version: str | None = None, error: str | None = None) -> None:
        self.metrics.policy_reload(ok)
        self.log.event("policy_reload", outcome="ok" if ok else "error", policy_version=version, error=error)

    def tool_quarantined(self, upstream: str, tool: str, reason: str, digest: str | None = None) -> None:
        self.metrics.tool_quarantined(upstream, tool)
        self.log.event("quarantine", upstream=upstream, tool=tool, reason=reason, definition_digest=digest)

    def approval_changed(self, approval_id: str, state: str, **fields: Any) -> None:
        """Approval state change: `pending` adds to the pending gauge, any later state takes it away."""
        if state == "pending":
            self.metrics.approval_pending(+1)
        else:
            self.metrics.approval_pending(-1)
        self.log.event("approval", approval_id=approval_id, state=state, **fields)

    def revoked(self, jti: str, **fields: Any) -> None:
        self.log.event("revocation", jti=jti, **fields)
