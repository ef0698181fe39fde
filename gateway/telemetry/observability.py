"""The one telemetry part the app wires: traces, metrics and the decision log behind a small surface.

    obs = Observability(config, redactor=secrets.redact)       # no I/O
    owners: obs (start/close);  routes: obs.routes() (/metrics)
    ForwardStage(..., inject=obs.inject);  Pipeline(..., record=obs.record);  pipeline = obs.instrument(pipeline)
    Router(..., upstream_call=obs.upstream_calls())
    at the HTTP edge, around dispatch of one JSON-RPC request:
        with obs.request(request.headers, message.method, message.params, message.id, principal=...,
                         session_id=..., protocol_version=..., start_ns=t0, identify_ns=(t0, t1)) as req:
            ... inbound.trace_id = req.trace_id ... on an error answer: req.fail(exc)
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from typing import Any

from aiohttp import web
from multidict import CIMultiDictProxy

from gateway.config.model import Config
from gateway.context import Principal
from gateway.credentials.redaction import Redactor
from gateway.memo import Memo
from gateway.pipeline import Pipeline
from gateway.telemetry.attributes import (
    MCP_METHODS,
    OTHER_METHOD,
    PEER,
    SHARED,
    WHO,
    connection_attributes,
    principal_attributes,
    request_attributes,
    shared_request_attributes,
    target_of,
)
from gateway.telemetry.decision_log import DecisionLog
from gateway.telemetry.decision_log import Redactor as RedactFn
from gateway.telemetry.metrics import PROMETHEUS_CONTENT_TYPE, Metrics
from gateway.telemetry.request_block import RequestBlock, RequestTrace
from gateway.telemetry.settings import unsupported_protocol
from gateway.telemetry.span_errors import error_code, error_type
from gateway.telemetry.stage import RecordStage, instrument
from gateway.telemetry.tracing import Telemetry
from gateway.telemetry.upstream_calls import UpstreamCalls
from gateway.telemetry.upstream_notices import UpstreamNotices
from gateway.transport.base import NotifyHook, UpstreamSession

log = logging.getLogger("customs.telemetry")


SHARED_LIMIT = 1024  # request kinds whose shared attributes are kept (see Observability._request_attributes)


# The approval transitions that end its wait: a person's decision (the last vote of a quorum), expiry, or the call
# withdrawn / its agent gone (approvals.md). `customs.approval.outcome` on the wait histogram.
APPROVAL_ENDS = frozenset({"approved", "denied", "expired", "cancelled", "abandoned"})


def _warn_unsupported_protocols(env: Mapping[str, str], traces: str | None, metrics: str | None) -> None:
    for signal, endpoint in (("traces", traces), ("metrics", metrics)):
        protocol = unsupported_protocol(env, signal) if endpoint is not None else None
        if protocol is not None:
            log.warning("OTLP protocol %r is not supported: %s are exported as OTLP/HTTP protobuf to %s",
                        protocol, signal, endpoint)


class Observability:
    """Owner of Telemetry (traces), Metrics and DecisionLog for one gateway; start/close in that order."""

    def __init__(self, config: Config, redactor: RedactFn | None = None, *,
                 env: Mapping[str, str] | None = None) -> None:
        self.telemetry = Telemetry(config.telemetry, env=env)
        # Exported spans leave the gateway: captured arguments always pass a secret redactor.
        self.telemetry.redact = redactor or Redactor(config.secrets).redact
        self.metrics = Metrics(config.telemetry, env=env)
        _warn_unsupported_protocols(os.environ if env is None else env, self.telemetry.settings.endpoint,
                                    self.metrics.settings.endpoint)
        if self.telemetry.settings.endpoint is not None:
            self.metrics.watch_spans_dropped(lambda: self.telemetry.dropped)
        self.log = DecisionLog(config.decision_log, redactor, on_drop=self.metrics.log_record_dropped,
                               current_ids=self.telemetry.current_ids)
        # Built once per principal and shared by the spans that carry it.
        self._principal_attributes = Memo(principal_attributes)
        self._shared: dict[tuple[Any, ...], dict[str, Any]] = {}  # see _request_attributes
        self._metric_bases: dict[tuple[Any, Any], tuple[tuple[str, Any], ...]] = {}  # see _metric_base
        # A connection's client.address/port, built once per connection (asyncio transport) and shared.
        self._peers: Memo[Any, dict[str, Any]] = Memo(lambda transport: connection_attributes(
            transport.get_extra_info("peername"), None))
        # Not memoized: every call gets its own Decision (its own evaluation time), so a memo by object never hits.
        self.record = RecordStage(self.log, self.metrics, self.telemetry)
        self._upstreams = {u.name: u for u in config.upstreams}
        # (tool name as the agent used it, session's view) -> listed by its upstream; set by the app (catalog).
        # None: every name counts as real (no catalog to ask).
        self.lists_tool: Callable[[str, str | None], bool] | None = None
        self._upstream_calls: UpstreamCalls | None = None
        self._upstream_notices: UpstreamNotices | None = None

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

    def upstream_calls(self) -> UpstreamCalls | None:
        """`Router(upstream_call=...)`: CLIENT spans and client duration metric of the router's own upstream
        requests (and of agents' notifications passed on); None with tracing and metrics both off (the router
        then sends them as they are)."""
        if not self.telemetry.enabled and not self.metrics.enabled:
            return None
        if self._upstream_calls is None:
            self._upstream_calls = UpstreamCalls(self.telemetry, self._upstreams,
                                                 self.metrics if self.metrics.enabled else None)
        return self._upstream_calls

    def upstream_notices(self) -> UpstreamNotices | None:
        """`SessionManager(notified=...)`, `Router(notified=...)`: SERVER and relay CLIENT spans of what upstreams
        send on their own (upstream_notices.py); None with tracing off (routed as they are, nothing in between)."""
        if not self.telemetry.enabled:
            return None
        if self._upstream_notices is None:
            self._upstream_notices = UpstreamNotices(self.telemetry, self._upstreams)
        return self._upstream_notices

    async def notify_upstream(self, upstream: str, session: UpstreamSession, message: dict[str, Any]) -> None:
        """An agent's notification passed on to one of its upstream sessions, traced and timed as its sender
        (`UpstreamCalls.notify`) unless tracing and metrics are both off."""
        calls = self.upstream_calls()
        await (calls.notify(upstream, session, message) if calls is not None else session.notify(message))

    def notify_hook(self, upstream: str) -> NotifyHook | None:
        """An upstream's `on_notify`: the notifications its transport sends on its own (notifications/cancelled of a
        call given up on) get a CLIENT span and a duration; None with tracing and metrics both off."""
        calls = self.upstream_calls()
        return functools.partial(calls.sent, upstream) if calls is not None else None

    def instrument(self, pipeline: Pipeline) -> Pipeline:
        return instrument(pipeline, self.telemetry, self.metrics, self._upstreams)

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/metrics", self.metrics_handler)] if self.metrics.registry else []

    async def metrics_handler(self, request: web.Request) -> web.Response:
        response = web.Response(body=self.metrics.prometheus_text())
        response.headers["Content-Type"] = PROMETHEUS_CONTENT_TYPE
        return response

    # -- the HTTP edge -----------------------------------------------------------------------------

    def request(self, headers: Mapping[str, Any] | None, method: str, params: Mapping[str, Any] | None,
                request_id: Any, *, principal: Principal | None = None, session_id: str | None = None,
                protocol_version: str | None = None, start_ns: int | None = None,
                identify_ns: tuple[int, int] | None = None, http: web.BaseRequest | None = None,
                view: str | None = None) -> AbstractContextManager[RequestTrace]:
        """The SERVER span of one JSON-RPC request (current inside the block) and its duration metric.

        `start_ns`/`identify_ns` (time.time_ns()) let the span start when the HTTP request arrived and
        record identify, which runs before the method is known, as a child after the fact. `http`, the
        aiohttp request, gives the connection's `client.address`/`client.port`/`network.protocol.version`.
        `view`: the session's upstream (None: the aggregated endpoint), which a tool name is looked up in.

        A method MCP does not define is `_OTHER` in the metric and span name (the span keeps it as
        `mcp.method.name`), as is a tool or prompt name no upstream lists when the request fails (see `names_item`).
        """
        params = params or {}
        target = target_of(method, params)
        named = method if method in MCP_METHODS else OTHER_METHOD
        base = self._metric_base(protocol_version, http.version) if http is not None else ()
        if not self.telemetry.enabled:  # tracing off: only the duration metric, no attribute work
            return RequestBlock(self, named, target, time.perf_counter(), view=view, base=base)
        meta = params.get("_meta")
        if meta is not None and not isinstance(meta, Mapping):  # (no ABC check for the usual absent _meta)
            meta = None
        if not meta and type(headers) is CIMultiDictProxy and "traceparent" not in headers:
            parent, links = None, None  # no inbound context, the usual case (extract's own first check, inline)
        else:
            parent, links = self.telemetry.extract(headers, meta)
        attrs = self._request_attributes(method, params, request_id, session_id, protocol_version,
                                         http.version if http is not None else None)
        if http is not None and (transport := http.transport) is not None:
            attrs[PEER] = self._peers(transport)  # the connection's client.address/port: shared by its requests
        who = self._principal_attributes(principal) if principal is not None else None
        if who is not None:
            attrs[WHO] = who  # shared, merged where exported (attributes.expand)
        started = time.perf_counter() if start_ns is None else time.perf_counter() - (time.time_ns() - start_ns) / 1e9
        span = self.telemetry.server_span(named, target, attrs, parent, links, start_time=start_ns)
        identify = (identify_ns, who) if identify_ns is not None and who is not None else None
        return RequestBlock(self, named, target, started, span, identify, view, base)

    def _metric_base(self, protocol_version: str | None, http_version: Any) -> tuple[tuple[str, Any], ...]:
        """`mcp.server.operation.duration`'s recommended `mcp.protocol.version` and `network.*` pairs of a request
        over HTTP: one tuple per protocol and HTTP version (a handful), looked up, not built, per request."""
        key = (protocol_version, http_version)
        base = self._metric_bases.get(key)
        if base is None:
            pairs: list[tuple[str, Any]] = [("network.transport", "tcp"), ("network.protocol.name", "http")]
            pairs.extend(connection_attributes(None, http_version).items())
            if protocol_version:
                pairs.append(("mcp.protocol.version", protocol_version))
            if len(self._metric_bases) >= SHARED_LIMIT:
                self._metric_bases.clear()
            base = self._metric_bases[key] = tuple(pairs)
        return base

    def _request_attributes(self, method: str, params: Mapping[str, Any], request_id: Any, session_id: str | None,
                            protocol_version: str | None, http_version: Any = None) -> dict[str, Any]:
        """`request_attributes` and the HTTP version's `network.protocol.version`, their part shared by requests of
        one method, tool or prompt, protocol version and HTTP version under SHARED (attributes.expand): built once,
        and marshalled once per batch of spans. Not with captured arguments, nor for resources (their URIs are no
        key to share by)."""
        if self.telemetry.capture_args or method.startswith("resources/"):
            attrs = request_attributes(method, params, request_id, session_id=session_id,
                                       protocol_version=protocol_version, capture_args=self.telemetry.capture_args,
                                       redact=self.telemetry.redact)
            attrs.update(connection_attributes(None, http_version))
            return attrs
        name = params.get("name")
        key = (method, name if type(name) is str else None, protocol_version, http_version)
        shared = self._shared.get(key)
        if shared is None:
            if len(self._shared) >= SHARED_LIMIT:  # names are the agents' to choose: bounded
                self._shared.clear()
            shared = self._shared[key] = {**shared_request_attributes(method, params, protocol_version),
                                          **connection_attributes(None, http_version)}
        attrs = {"mcp.method.name": method, SHARED: shared}
        if request_id is not None:
            attrs["jsonrpc.request.id"] = str(request_id)
        if session_id:
            attrs["mcp.session.id"] = session_id
        return attrs

    def names_item(self, method: str, target: str, view: str | None) -> bool:
        """Whether a failed request's target is a real name (so may be a metric value and in the span name): a
        tool its upstream lists; never a prompt (no prompt list is kept: an answered prompts/get names one)."""
        if method == "tools/call":
            return self.lists_tool is None or self.lists_tool(target, view)
        return False

    def identified(self, duration_ns: int) -> None:
        """identify of one POSTed message took `duration_ns` (a refusal too): the stage-duration metric's `identify`."""
        self.metrics.stage_duration("identify", duration_ns / 1e9)

    def _server_metric(self, method: str, target: str | None, error: BaseException | None, seconds: float,
                       tool_error: bool = False, base: tuple[tuple[str, Any], ...] = ()) -> None:
        attrs: dict[str, Any] = {}
        if method == "tools/call" and target:
            attrs["gen_ai.tool.name"] = target
        elif method == "prompts/get" and target:  # the conventions' other conditionally required name
            attrs["gen_ai.prompt.name"] = target
        if error is not None:
            attrs["error.type"] = error_type(error)
            code = error_code(error)
            if code is not None:
                attrs["rpc.response.status_code"] = code
        elif tool_error:
            attrs["error.type"] = "tool_error"
        self.metrics.server_operation(method, seconds, attrs, base)

    # -- event records -----------------------------------------------------------------------------

    def event(self, type: str, **fields: Any) -> None:
        """A non-decision record in the decision log (approval_state, revocation, quarantine, policy_reload)."""
        self.log.event(type, **fields)

    def policy_reloaded(self, ok: bool, version: str | None = None, error: str | None = None,
                        policy_set: str = "enforced") -> None:
        """A reload of one policy set: `enforced` (policies.dir) or `shadow` (policies.shadow_dir)."""
        self.metrics.policy_reload(ok, policy_set)
        self.log.event("policy_reload", policy_set=policy_set, outcome="ok" if ok else "error",
                       policy_version=version, error=error)

    def tool_quarantined(self, upstream: str, tool: str, reason: str, digest: str | None = None) -> None:
        self.metrics.tool_quarantined(upstream, tool)
        self.log.event("quarantine", upstream=upstream, tool=tool, reason=reason, definition_digest=digest)

    def approval_changed(self, approval_id: str, state: str, **fields: Any) -> None:
        """Approval state change, for the decision log, and the wait of an approval that ended
        (`customs.approval.wait.duration`). The pending gauge is not counted from these (another replica may decide
        an item held here): PendingGauge reads it from the store."""
        self.log.event("approval", approval_id=approval_id, state=state, **fields)
        transition = fields.get("transition")
        if transition in APPROVAL_ENDS:
            # Timed where the change happened (one replica, once per item), from the hold: a call waits at most
            # approvals.wait_s, and a person deciding after it answered approval_pending is the usual case.
            at, held, due = fields.get("at"), fields.get("created_at"), fields.get("expires_at")
            if transition == "expired" and isinstance(due, int | float) and isinstance(at, int | float):
                at = min(at, due)  # found by a sweep or a read, seconds later: it waited until it was due
            if isinstance(at, int | float) and isinstance(held, int | float):
                self.metrics.approval_waited(max(0.0, at - held), str(transition))
