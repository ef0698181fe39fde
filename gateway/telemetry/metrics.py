"""Metrics: the gateway's named instruments, exported on `/metrics` (Prometheus) and over OTLP.

`Metrics` owns one `MeterProvider` (never the global one) with a Prometheus reader bound to its own
`CollectorRegistry`, so two gateways in one process keep separate counts. With Prometheus off and
no OTLP endpoint the instruments come from the API's no-op provider.

Names follow the MCP semantic conventions (`mcp.server.operation.duration`,
`mcp.client.operation.duration`, `mcp.server.session.duration`, `mcp.client.session.duration`, seconds,
the recommended buckets) plus `customs.*` instruments.
The per-call instruments (calls, stage and operation durations) are aggregated in place and merged
into every collection (gateway/telemetry/aggregate.py); the rarer ones are plain SDK instruments.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from opentelemetry import metrics as metrics_api
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from gateway.config.model import TelemetryConfig, UpstreamConfig
from gateway.telemetry.aggregate import Attrs, CounterAggregate, HistogramAggregate, merge_into_reader
from gateway.telemetry.attributes import transport_attributes
from gateway.telemetry.settings import MetricSettings, delta_preference, metric_settings
from gateway.transport.base import SessionEnded

log = logging.getLogger("customs.telemetry")
DEFAULT_CLOSE_S = 10.0  # the final export at shutdown, when no shutdown deadline is known (as the span export)
MIN_CLOSE_S = 1.0  # ... and at least this much of it past a drain that used up the deadline

# The conventions' advice for MCP operation durations; also good for gateway stages and approval waits.
DURATION_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)
# Gateway stages are mostly sub-millisecond: finer buckets at the low end.
STAGE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
                 30, 60, 300, 900)
APPROVAL_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 900, 1800, 3600)
PROMETHEUS_CONTENT_TYPE = CONTENT_TYPE_LATEST
SCOPE = InstrumentationScope("customs", "0.1.0")

INSTRUMENTS = (
    "customs.calls", "customs.stage.duration", "mcp.server.operation.duration", "mcp.client.operation.duration",
    "customs.approvals.pending", "customs.approval.wait.duration", "customs.upstream.errors",
    "customs.upstream.restarts", "customs.policy.reloads", "customs.config.reloads", "customs.tool.quarantines",
    "customs.rate_limited", "customs.shadow.disagreements", "customs.decision_log.dropped", "cpython.gc.collections",
    "customs.policy.errors", "customs.requests.refused", "customs.sessions.open", "customs.credential.revocations",
    "mcp.server.session.duration", "customs.spans.dropped", "mcp.client.session.duration",
)


# The per-call instruments, aggregated here (aggregate.py): always cumulative temporality.
AGGREGATED = ("customs.calls", "customs.stage.duration", "mcp.server.operation.duration",
              "mcp.client.operation.duration")
CALL_ATTRIBUTES = ("customs.upstream", "gen_ai.tool.name", "customs.decision", "customs.outcome")


# Attribute sets from the cheap keys the fact methods below record with (built once per distinct set).
def _call_attrs(key: tuple[str, str, str, str]) -> Attrs:
    return dict(zip(CALL_ATTRIBUTES, key, strict=True))


def _stage_attrs(stage: str) -> Attrs:
    return {"stage": stage}


def _operation_attrs(key: tuple[Any, ...]) -> Attrs:
    method, *extra = key  # extra: the caller's (name, value) pairs, which may override the method
    attrs: Attrs = {"mcp.method.name": method}
    if method == "tools/call":  # the conventions' recommended marker of a tool execution (free: once per key)
        attrs["gen_ai.operation.name"] = "execute_tool"
    attrs.update(extra)
    return attrs


def gc_collections(options: CallbackOptions | None = None) -> Iterable[Observation]:
    """`cpython.gc.collections` (the runtime semantic conventions): passes of the cyclic collector per
    generation since start. Read at collection time from `gc.get_stats()`: nothing on the call path."""
    return [Observation(stats["collections"], {"cpython.gc.generation": generation})
            for generation, stats in enumerate(gc.get_stats())]


def _views() -> list[View]:
    # The per-call histograms carry their buckets themselves (aggregate.py); these are the SDK ones.
    return [View(instrument_name="customs.approval.wait.duration",
                 aggregation=ExplicitBucketHistogramAggregation(boundaries=APPROVAL_BUCKETS)),
            View(instrument_name="mcp.server.session.duration",
                 aggregation=ExplicitBucketHistogramAggregation(boundaries=DURATION_BUCKETS)),
            View(instrument_name="mcp.client.session.duration",
                 aggregation=ExplicitBucketHistogramAggregation(boundaries=DURATION_BUCKETS))]


class Metrics:
    """Owner of the meter provider; one method per fact the gateway reports."""

    def __init__(self, config: TelemetryConfig, *, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self.settings: MetricSettings = metric_settings(config, env)
        # Set when shutdown begins (loop time by which the process should be gone): the final export's bound.
        self.shutdown_deadline: float | None = None
        self.registry: CollectorRegistry | None = None
        self.provider: MeterProvider | None = None
        readers: list[MetricReader] = []
        if self.settings.prometheus:
            from opentelemetry.exporter.prometheus import PrometheusMetricReader

            self.registry = CollectorRegistry(auto_describe=True)
            readers.append(PrometheusMetricReader(registry=self.registry))
        self._otlp_reader: PeriodicExportingMetricReader | None = None
        if self.settings.endpoint is not None:
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

            exporter = OTLPMetricExporter(endpoint=self.settings.endpoint, headers=self.settings.headers or None)
            self._otlp_reader = PeriodicExportingMetricReader(
                exporter, export_interval_millis=self.settings.interval_ms)
            readers.append(self._otlp_reader)
            if (preference := delta_preference(env)) is not None:
                # A delta-only backend drops cumulative series: say which ones it will not get as deltas.
                log.warning("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE=%s applies to the rarer instruments "
                            "only: %s are exported cumulative", preference, ", ".join(AGGREGATED))
        meter_provider: metrics_api.MeterProvider
        # Per-call instruments are aggregated here (aggregate.py): the six measurements of a proxied call
        # cost ~2 µs together instead of ~50 µs through SDK instruments, and no thread competes with
        # the event loop for the GIL. Rarer facts use the SDK.
        self.calls = CounterAggregate("customs.calls", "{call}", "Tool calls by upstream, tool and decision",
                                      _call_attrs)
        self.stage = HistogramAggregate("customs.stage.duration", "s", "Time spent in each pipeline stage",
                                        STAGE_BUCKETS, _stage_attrs)
        self.server_duration = HistogramAggregate(
            "mcp.server.operation.duration", "s", "MCP requests handled by the gateway, receipt to response",
            DURATION_BUCKETS, _operation_attrs)
        # An upstream's transport attributes (client_session_recorder), added to its client series when each
        # is first made: they follow from `customs.upstream`, so a call's key need not carry them.
        self._upstream_transport: dict[str, Attrs] = {}
        self.client_duration = HistogramAggregate(
            "mcp.client.operation.duration", "s", "MCP requests the gateway sent upstream, send to response",
            DURATION_BUCKETS, self._client_operation_attrs)
        if readers:
            # As the spans' resource (tracing.py): the release too, so series and traces join on it.
            resource = Resource.create({"service.name": self.settings.service_name, "service.version": SCOPE.version})
            self.provider = MeterProvider(metric_readers=readers, resource=resource, views=_views())
            meter_provider = self.provider
            for reader in readers:
                merge_into_reader(reader, (self.calls, self.stage, self.server_duration, self.client_duration),
                                  resource, SCOPE)
        else:
            meter_provider = metrics_api.NoOpMeterProvider()
        self.enabled = self.provider is not None
        self._approvals_pending: int | None = None  # last count read from the store; None: not known
        self._sessions_open: Callable[[], Mapping[str, int]] | None = None  # set by watch_sessions
        self._spans_dropped: Callable[[], int] | None = None  # set by watch_spans_dropped
        self._build(meter_provider.get_meter(SCOPE.name, SCOPE.version))

    def _build(self, meter: metrics_api.Meter) -> None:
        # Store-wide, read by PendingGauge (gateway/approvals/gauge.py): per-replica +1/-1 drifts when one
        # replica holds an item and another decides it.
        meter.create_observable_gauge("customs.approvals.pending", [self._observe_pending], "{approval}",
                                      "Calls waiting for a human decision, in the whole approval store")
        # Read from the session manager at collection time: nothing is added to a request's path.
        meter.create_observable_gauge("customs.sessions.open", [self._observe_sessions], "{session}",
                                      "Open MCP sessions in this replica, by kind (stateful, stateless)")
        self.approval_wait = meter.create_histogram("customs.approval.wait.duration", "s",
                                                    "Time from hold to decision")
        self.session_duration = meter.create_histogram("mcp.server.session.duration", "s",
                                                       "MCP sessions with agents, initialize to end")
        self.client_session_duration = meter.create_histogram("mcp.client.session.duration", "s",
                                                              "The gateway's MCP sessions with upstreams, "
                                                              "initialize to end")
        self.upstream_errors = meter.create_counter("customs.upstream.errors", "{error}", "Failed upstream requests")
        self.upstream_restarts = meter.create_counter("customs.upstream.restarts", "{restart}",
                                                      "Restarts of stdio upstreams")
        self.policy_reloads = meter.create_counter("customs.policy.reloads", "{reload}", "Policy reload attempts")
        self.config_reloads = meter.create_counter("customs.config.reloads", "{reload}",
                                                   "Config file re-reads on SIGHUP, accepted or refused")
        self.quarantines = meter.create_counter("customs.tool.quarantines", "{tool}", "Tools quarantined")
        self.rate_limited_calls = meter.create_counter("customs.rate_limited", "{call}", "Calls refused by limits")
        self.shadow = meter.create_counter("customs.shadow.disagreements", "{call}",
                                           "Calls where the shadow policy decided differently")
        self.policy_errors = meter.create_counter("customs.policy.errors", "{call}",
                                                  "Calls denied because policy evaluation reported errors")
        self.refused = meter.create_counter("customs.requests.refused", "{request}",
                                            "MCP requests refused at the HTTP edge, before any call (bad token, "
                                            "unknown session, bad body, Host/Origin ...)")
        self.log_dropped = meter.create_counter("customs.decision_log.dropped", "{record}",
                                                "Decision records that could not be written")
        self.token_revocations = meter.create_counter(
            "customs.credential.revocations", "{token}",
            "Exchanged tokens revoked (or not) at their authorization server when their task ended (RFC 7009)")
        # The span exporter's own count (span_export.py), read at collection time like the gauges above.
        meter.create_observable_counter("customs.spans.dropped", [self._observe_spans_dropped], "{span}",
                                        "Finished spans lost before the collector took them (collector down "
                                        "or refusing, exporter behind or restarted)")
        meter.create_observable_counter("cpython.gc.collections", [gc_collections], "{collection}",
                                        "Passes of the cyclic garbage collector, by generation")

    async def start(self) -> None:
        """Readers are live from construction; nothing to start (kept for the owners' lifecycle)."""

    async def close(self) -> None:
        """Final OTLP export and reader shutdown, off the loop (blocking HTTP), bounded as the span export's is.

        The SDK's exporter retries a collector that refuses or stalls for up to its own timeout (10 s) on top
        of the drain; once shutdown has begun (`shutdown_deadline`, loop time) the export gets what is left of
        it, at least a second. It runs on a daemon thread, which the process does not wait for at exit."""
        provider, self.provider = self.provider, None
        if provider is None:
            return
        loop = asyncio.get_running_loop()
        timeout_s = DEFAULT_CLOSE_S
        if self.shutdown_deadline is not None:
            timeout_s = max(MIN_CLOSE_S, min(DEFAULT_CLOSE_S, self.shutdown_deadline - loop.time()))
        done: asyncio.Future[None] = loop.create_future()

        def shut_down() -> None:
            try:
                provider.shutdown()
            finally:
                with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits any more
                    loop.call_soon_threadsafe(_settle, done)

        threading.Thread(target=shut_down, name="customs-metrics-close", daemon=True).start()
        try:
            await asyncio.wait_for(asyncio.shield(done), timeout_s)
        except TimeoutError:
            log.warning("final metrics export did not finish within %.0f s of shutdown: its points are lost",
                        timeout_s)

    async def flush(self) -> None:
        if self._otlp_reader is not None:
            await asyncio.to_thread(self._otlp_reader.force_flush)

    # -- facts -------------------------------------------------------------------------------------

    # The per-call facts record with flat keys (no attribute dict per call); attribute values are
    # str/bool/int/float, as OpenTelemetry allows (not sequences: the key must be hashable). They are
    # called from the event loop's thread only (aggregate.py takes no lock per measurement).

    def record_call(self, upstream: str, tool: str, decision: str, outcome: str = "ok") -> None:
        if self.enabled:
            self.calls.add(1, (upstream, tool, decision, outcome))

    def stage_duration(self, stage: str, seconds: float) -> None:
        if self.enabled:
            self.stage.record(seconds, stage)

    def server_operation(self, method: str, seconds: float, attrs: Mapping[str, Any] | None = None,
                         base: tuple[tuple[str, Any], ...] = ()) -> None:
        """`base`: the connection's pairs (`Observability.metric_base`), one tuple shared by its requests."""
        if self.enabled:
            self.server_duration.record(seconds, (method, *base, *attrs.items()) if attrs else (method, *base))

    def client_operation(self, method: str, seconds: float, attrs: Mapping[str, Any] | None = None) -> None:
        if self.enabled:
            self.client_duration.record(seconds, (method, *attrs.items()) if attrs else (method,))

    def set_approvals_pending(self, count: int | None) -> None:
        """The approval store's count of pending items (None: unknown, the gauge reports nothing)."""
        self._approvals_pending = count

    def _observe_pending(self, options: CallbackOptions | None = None) -> Iterable[Observation]:
        # Called at collection time, possibly from the OTLP exporter's thread: only reads the cached count.
        count = self._approvals_pending
        return [] if count is None else [Observation(count)]

    def watch_sessions(self, counts: Callable[[], Mapping[str, int]]) -> None:
        """Report `counts()` (open sessions by kind) as the `customs.sessions.open` gauge."""
        self._sessions_open = counts

    def _observe_sessions(self, options: CallbackOptions | None = None) -> Iterable[Observation]:
        counts = self._sessions_open
        if counts is None:
            return []
        return [Observation(n, {"customs.session.kind": kind}) for kind, n in counts().items()]

    def watch_spans_dropped(self, count: Callable[[], int]) -> None:
        """Report `count()` (spans lost on the way to the OTLP collector) as `customs.spans.dropped`."""
        self._spans_dropped = count

    def _observe_spans_dropped(self, options: CallbackOptions | None = None) -> Iterable[Observation]:
        count = self._spans_dropped
        return [] if count is None else [Observation(count())]

    def session_ended(self, seconds: float, protocol_version: str) -> None:
        """An MCP session with an agent ended (DELETE, idle expiry, shutdown): not an error, so no `error.type`.
        Agents reach the gateway over HTTP only."""
        self.session_duration.record(seconds, {"mcp.protocol.version": protocol_version, "network.transport": "tcp",
                                               "network.protocol.name": "http"})

    def _client_operation_attrs(self, key: tuple[Any, ...]) -> Attrs:
        attrs = _operation_attrs(key)
        return {**self._upstream_transport.get(attrs.get("customs.upstream", ""), {}), **attrs}

    def client_session_recorder(self, upstream: UpstreamConfig) -> SessionEnded | None:
        """The upstream's `on_session_end` hook: each of the gateway's MCP sessions with it, when it ends (closed
        with the agent's session or at shutdown; `error.type` when the upstream ended it: an expired session, a
        closed SSE stream, a child that exited). None with metrics off, so the transports time nothing.

        Also notes the upstream's transport attributes for its `mcp.client.operation.duration` series."""
        if not self.enabled:
            return None
        transport = self._upstream_transport[upstream.name] = transport_attributes(upstream)
        base: Attrs = {"customs.upstream": upstream.name, **transport}
        histogram = self.client_session_duration

        def ended(seconds: float, protocol_version: str | None, error: str | None) -> None:
            attrs = dict(base)
            if protocol_version:
                attrs["mcp.protocol.version"] = protocol_version
            if error:
                attrs["error.type"] = error
            histogram.record(seconds, attrs)
        return ended

    @staticmethod
    def negotiated_version(upstream_session: Any) -> str | None:
        """The MCP revision an upstream session negotiated (its `initialize` answer's), for the client metric's
        `mcp.protocol.version`; None without a session or a version."""
        version = upstream_session.initialize_result.get("protocolVersion") if upstream_session is not None else None
        return version if isinstance(version, str) else None

    def approval_waited(self, seconds: float, outcome: str) -> None:
        self.approval_wait.record(seconds, {"customs.approval.outcome": outcome})

    def upstream_error(self, upstream: str, reason: str) -> None:
        self.upstream_errors.add(1, {"customs.upstream": upstream, "error.type": reason})

    def upstream_restart(self, upstream: str) -> None:
        self.upstream_restarts.add(1, {"customs.upstream": upstream})

    def policy_reload(self, ok: bool, policy_set: str = "enforced") -> None:
        self.policy_reloads.add(1, {"customs.outcome": "ok" if ok else "error", "customs.policy_set": policy_set})

    def config_reload(self, ok: bool) -> None:
        self.config_reloads.add(1, {"customs.outcome": "ok" if ok else "error"})

    def tool_quarantined(self, upstream: str, tool: str) -> None:
        self.quarantines.add(1, {"customs.upstream": upstream, "gen_ai.tool.name": tool})

    def rate_limited(self, scope: str) -> None:
        self.rate_limited_calls.add(1, {"customs.limit": scope})

    def policy_error(self, upstream: str, tool: str) -> None:
        self.policy_errors.add(1, {"customs.upstream": upstream, "gen_ai.tool.name": tool})

    def shadow_disagreement(self, upstream: str, tool: str, decision: str, shadow: str) -> None:
        self.shadow.add(1, {"customs.upstream": upstream, "gen_ai.tool.name": tool, "customs.decision": decision,
                            "customs.shadow_decision": shadow})

    def token_revoked(self, upstream: str, outcome: str) -> None:
        """An exchanged token's revocation at the authorization server: ok | failed | dropped."""
        self.token_revocations.add(1, {"customs.upstream": upstream, "customs.outcome": outcome})

    def request_refused(self, reason: str, status: int) -> None:
        self.refused.add(1, {"error.type": reason, "http.response.status_code": status})

    def log_record_dropped(self) -> None:
        self.log_dropped.add(1)

    # -- Prometheus --------------------------------------------------------------------------------

    def prometheus_text(self) -> bytes:
        """The Prometheus exposition of this instance's registry (empty when Prometheus is off)."""
        if self.registry is None:
            return b""
        return bytes(generate_latest(self.registry))


def _settle(done: asyncio.Future[None]) -> None:
    if not done.done():
        done.set_result(None)
