"""Metrics: Prometheus text per gateway instance, OTLP export, and the no-op path when both are off."""

from __future__ import annotations

import asyncio
import gc
import logging
import random
import re
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import prometheus_client
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource

from gateway.config import parse_config
from gateway.config.model import TelemetryConfig
from gateway.telemetry import Metrics, Observability
from gateway.telemetry.aggregate import CARDINALITY_LIMIT
from gateway.telemetry.metrics import DURATION_BUCKETS, STAGE_BUCKETS
from tests.conftest import RunningGateway
from tests.support.otlp import OtlpReceiver

StartGateway = Callable[[dict[str, Any]], Awaitable[RunningGateway]]


def exercise(metrics: Metrics) -> None:
    metrics.record_call("inventory", "get_stock", "allow")
    metrics.record_call("payments", "pay", "deny", "unknown_tool")
    metrics.stage_duration("authorize", 0.0001)
    metrics.server_operation("tools/call", 0.01, {"gen_ai.tool.name": "inventory__get_stock"})
    metrics.client_operation("tools/call", 0.005, {"customs.upstream": "inventory"})
    metrics.set_approvals_pending(2)
    metrics.set_approvals_pending(1)  # the store's latest count replaces the last one
    metrics.approval_waited(12.0, "approved")
    metrics.upstream_error("payments", "upstream_timeout")
    metrics.upstream_restart("files")
    metrics.policy_reload(True)
    metrics.tool_quarantined("inventory", "get_stock")
    metrics.rate_limited("principal")
    metrics.shadow_disagreement("payments", "pay", "allow", "deny")
    metrics.log_record_dropped()
    metrics.policy_error("payments", "pay")
    metrics.request_refused("unauthenticated", 401)


PROMETHEUS_NAMES = (
    "customs_calls_total", "customs_stage_duration_seconds_bucket", "mcp_server_operation_duration_seconds_bucket",
    "mcp_client_operation_duration_seconds_count", "customs_approvals_pending",
    "customs_approval_wait_duration_seconds",
    "customs_upstream_errors_total", "customs_upstream_restarts_total", "customs_policy_reloads_total",
    "customs_tool_quarantines_total", "customs_rate_limited_total", "customs_shadow_disagreements_total",
    "customs_decision_log_dropped_total", "customs_policy_errors_total", "customs_requests_refused_total",
)


def test_prometheus_text_names_every_instrument() -> None:
    metrics = Metrics(TelemetryConfig(), env={})
    exercise(metrics)
    text = metrics.prometheus_text().decode()
    for name in PROMETHEUS_NAMES:
        assert name in text, name
    assert 'customs_calls_total{customs_decision="deny",customs_outcome="unknown_tool"' in text
    assert 'customs_stage_duration_seconds_bucket{' in text and 'stage="authorize"' in text
    assert "customs_approvals_pending{" in text and "} 1.0" in text.split("customs_approvals_pending{")[1][:400]


def test_each_instance_has_its_own_registry() -> None:
    first, second = Metrics(TelemetryConfig(), env={}), Metrics(TelemetryConfig(), env={})
    first.record_call("inventory", "get_stock", "allow")
    assert "customs_calls_total{" in first.prometheus_text().decode()
    assert "customs_calls_total{" not in second.prometheus_text().decode()
    assert b"customs_calls" not in prometheus_client.generate_latest(prometheus_client.REGISTRY)


async def test_metrics_export_over_otlp(otlp: OtlpReceiver) -> None:
    metrics = Metrics(TelemetryConfig.model_validate({"metrics": {"prometheus": False, "otlp_endpoint": otlp.url}}),
                      env={})
    exercise(metrics)
    await metrics.flush()
    await metrics.close()
    calls = await otlp.wait_for_point(lambda p: p.metric == "customs.calls" and p.attributes.get(
        "customs.decision") == "deny")
    assert calls.value == 1 and calls.attributes["customs.upstream"] == "payments"
    duration = await otlp.wait_for_point(lambda p: p.metric == "mcp.server.operation.duration")
    assert duration.kind == "histogram" and duration.unit == "s" and duration.count == 1
    assert metrics.prometheus_text() == b""


async def test_otlp_metrics_from_environment(otlp: OtlpReceiver) -> None:
    metrics = Metrics(TelemetryConfig(), env={"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": otlp.metrics_url})
    metrics.policy_reload(False)
    await metrics.close()
    point = await otlp.wait_for_point(lambda p: p.metric == "customs.policy.reloads")
    assert point.attributes == {"customs.outcome": "error", "customs.policy_set": "enforced"}


def test_both_off_uses_no_op_instruments() -> None:
    metrics = Metrics(TelemetryConfig.model_validate({"metrics": {"prometheus": False}}), env={})
    assert not metrics.enabled and metrics.provider is None and metrics.registry is None
    exercise(metrics)
    assert metrics.prometheus_text() == b""


async def test_metrics_route_serves_prometheus_text() -> None:
    config = parse_config({"upstreams": [{"name": "inventory", "url": "http://127.0.0.1:9001/mcp"}]}, env={})
    obs = Observability(config, env={})
    obs.metrics.record_call("inventory", "get_stock", "allow")
    app = web.Application()
    app.add_routes(obs.routes())
    async with TestClient(TestServer(app)) as client:
        response = await client.get("/metrics")
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        assert "customs_calls_total{" in await response.text()
    await obs.close()
    off = Observability(parse_config({"upstreams": [{"name": "i", "url": "http://127.0.0.1:1/mcp"}],
                                      "telemetry": {"metrics": {"prometheus": False}}}, env={}), env={})
    assert off.routes() == []


async def test_metrics_answers_head_as_get(start_gateway: StartGateway) -> None:
    """A scraper's or load balancer's HEAD /metrics gets GET's status and headers, no body, as /healthz does."""
    gw = await start_gateway({"upstreams": [{"name": "inventory", "url": "http://127.0.0.1:1/mcp"}]})
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{gw.url}/metrics") as got:
            assert got.status == 200
            content_type = got.headers["Content-Type"]
        async with http.head(f"{gw.url}/metrics") as head:
            assert head.status == 200, head.headers.get("Allow")
            assert head.headers["Content-Type"] == content_type
            assert await head.read() == b""


# -- the per-call instruments write what plain SDK instruments would --------------------------------------

PER_CALL = {  # name -> (kind, unit, description, buckets): pinned here, independently of metrics.py
    "customs.calls": ("counter", "{call}", "Tool calls by upstream, tool and decision", None),
    "customs.stage.duration": ("histogram", "s", "Time spent in each pipeline stage", STAGE_BUCKETS),
    "mcp.server.operation.duration": ("histogram", "s", "MCP requests handled by the gateway, receipt to response",
                                      DURATION_BUCKETS),
    "mcp.client.operation.duration": ("histogram", "s", "MCP requests the gateway sent upstream, send to response",
                                      DURATION_BUCKETS),
}


def reference(reader: MetricReader) -> dict[str, Any]:
    """The per-call instruments as plain SDK instruments, with the documented buckets."""
    views = [View(instrument_name=name, aggregation=ExplicitBucketHistogramAggregation(boundaries=buckets))
             for name, (_, _, _, buckets) in PER_CALL.items() if buckets is not None]
    provider = MeterProvider(metric_readers=[reader], views=views,
                             resource=Resource.create({"service.name": "customs"}))
    meter = provider.get_meter("customs", "0.1.0")
    out: dict[str, Any] = {"provider": provider}
    for name, (kind, unit, description, _) in PER_CALL.items():
        create = meter.create_counter if kind == "counter" else meter.create_histogram
        out[name] = create(name, unit, description)
    return out


TOOL_OP = {"gen_ai.operation.name": "execute_tool"}  # the conventions' marker of tools/call operations


def per_call_traffic(metrics: Metrics, sdk: dict[str, Any]) -> None:
    """The same facts into `metrics` and into the reference instruments (attributes as the SDK path built them)."""
    rng = random.Random(11)
    for i in range(400):
        tool, seconds = f"t{i % 3}", rng.choice([rng.uniform(0, 0.002), rng.uniform(0, 400), *STAGE_BUCKETS])
        upstream, decision, outcome = ("inventory", "payments")[i % 2], ("allow", "deny")[i % 5 == 0], "ok"
        metrics.record_call(upstream, tool, decision, outcome)
        sdk["customs.calls"].add(1, {"customs.upstream": upstream, "gen_ai.tool.name": tool,
                                     "customs.decision": decision, "customs.outcome": outcome})
        stage = ("authorize", "approve", "credential", "forward")[i % 4]
        metrics.stage_duration(stage, seconds)
        sdk["customs.stage.duration"].record(seconds, {"stage": stage})
        extra: dict[str, Any] = {"gen_ai.tool.name": tool, **({"error.type": "upstream_timeout"} if i % 7 else {})}
        metrics.server_operation("tools/call", seconds, extra)
        sdk["mcp.server.operation.duration"].record(seconds, {"mcp.method.name": "tools/call", **TOOL_OP, **extra})
        upstream_attrs = {"customs.upstream": upstream, **extra}
        method = "tools/call" if i % 9 else "tools/list"
        metrics.client_operation(method, seconds, upstream_attrs)
        sdk["mcp.client.operation.duration"].record(
            seconds, {"mcp.method.name": method, **(TOOL_OP if method == "tools/call" else {}), **upstream_attrs})


def test_per_call_prometheus_text_is_the_sdks() -> None:
    from opentelemetry.exporter.prometheus import PrometheusMetricReader

    registry = prometheus_client.CollectorRegistry(auto_describe=True)
    sdk = reference(PrometheusMetricReader(registry=registry))
    metrics = Metrics(TelemetryConfig(), env={})
    per_call_traffic(metrics, sdk)

    def lines(text: bytes) -> list[str]:
        # Not per-call: the process-wide target info and the collector's passes (which change between reads).
        return [line for line in text.decode().splitlines()
                if not line.startswith("target_info") and "cpython_gc_collections" not in line]

    assert lines(metrics.prometheus_text()) == lines(prometheus_client.generate_latest(registry))
    assert "customs_stage_duration_seconds_bucket{" in metrics.prometheus_text().decode()


async def test_per_call_otlp_points_are_the_sdks(otlp: OtlpReceiver) -> None:
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

    async with OtlpReceiver() as theirs:
        sdk = reference(PeriodicExportingMetricReader(OTLPMetricExporter(endpoint=theirs.metrics_url),
                                                      export_interval_millis=3_600_000))
        metrics = Metrics(TelemetryConfig.model_validate({"metrics": {"prometheus": False,
                                                                      "otlp_endpoint": otlp.url}}), env={})
        per_call_traffic(metrics, sdk)
        await metrics.close()
        await asyncio.to_thread(sdk["provider"].shutdown)  # blocking HTTP: off the loop serving the receiver

        def points(receiver: OtlpReceiver) -> list[Any]:
            return sorted((p.metric, p.kind, p.unit, sorted(p.attributes.items()), p.value, p.count,
                           None if p.sum is None else round(p.sum, 9)) for p in receiver.points
                          if p.metric != "cpython.gc.collections")

        mine = await otlp.wait_for(lambda r: points(r) or None)
        assert {p[0] for p in mine} == set(PER_CALL)
        assert mine == await theirs.wait_for(lambda r: points(r) or None)


def test_client_supplied_tool_names_cannot_grow_memory_without_bound() -> None:
    """Past the SDK's cardinality limit new names share one overflow series, as with SDK instruments."""
    metrics = Metrics(TelemetryConfig(), env={})
    for i in range(CARDINALITY_LIMIT + 50):
        metrics.server_operation("tools/call", 0.001, {"gen_ai.tool.name": f"invented-{i}"})
    text = metrics.prometheus_text().decode()
    assert text.count("mcp_server_operation_duration_seconds_count{") == CARDINALITY_LIMIT + 1
    count = "mcp_server_operation_duration_seconds_count{"
    overflow = [line for line in text.splitlines() if line.startswith(count) and 'otel_metric_overflow="true"' in line]
    assert len(overflow) == 1 and overflow[0].endswith(" 50.0")


def test_garbage_collector_passes_are_counted_per_generation() -> None:
    metrics = Metrics(TelemetryConfig(), env={})
    young = re.compile(r'^cpython_gc_collections_total\{cpython_gc_generation="0"[^}]*\} (\S+)$', re.M)

    def passes() -> float:
        found = young.search(metrics.prometheus_text().decode())
        assert found is not None
        return float(found[1])

    gc.disable()  # only the two passes below: none set off by the allocations of reading the metrics
    try:
        before = passes()
        gc.collect(0)
        gc.collect(0)
        assert passes() == before + 2
    finally:
        gc.enable()


async def test_an_otlp_protocol_other_than_http_protobuf_is_warned_about(caplog: pytest.LogCaptureFixture,
                                                                        otlp: OtlpReceiver) -> None:
    """OTEL_EXPORTER_OTLP_PROTOCOL=grpc (say, with a collector's 4317) is not what the gateway speaks: say so."""
    config = parse_config({"upstreams": [{"name": "i", "url": "http://127.0.0.1:1/mcp"}]}, env={})
    # A collector that answers: the final metrics export at close is taken at once, not retried for 7 s.
    base = {"OTEL_EXPORTER_OTLP_ENDPOINT": otlp.url}
    with caplog.at_level(logging.WARNING, "customs.telemetry"):
        grpc = Observability(config, env={**base, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
                                          "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "http/protobuf"})
        plain = Observability(config, env={**base, "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"})
    await asyncio.gather(grpc.close(), plain.close())
    warned = [r.getMessage() for r in caplog.records if "not supported" in r.getMessage()]
    assert warned == ["OTLP protocol 'grpc' is not supported: traces are exported as OTLP/HTTP protobuf to "
                      f"{otlp.traces_url}"]


def test_the_metrics_resource_names_the_version_as_the_spans_resource_does() -> None:
    """Spans carry service.name and service.version (tracing.py); metrics named the service only, so a dashboard
    could not tell which release a series came from, nor join it to that release's traces."""
    from gateway.telemetry.tracing import VERSION

    metrics = Metrics(TelemetryConfig.model_validate({"service_name": "shop-gw"}), env={})
    metrics.record_call("inventory", "get_stock", "allow")
    info = next(line for line in metrics.prometheus_text().decode().splitlines() if line.startswith("target_info{"))
    assert 'service_name="shop-gw"' in info and f'service_version="{VERSION}"' in info, info


@pytest.mark.parametrize("preference", ["delta", "LowMemory"])
async def test_a_delta_temporality_preference_is_warned_about(caplog: pytest.LogCaptureFixture, otlp: OtlpReceiver,
                                                              preference: str) -> None:
    """OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE=delta reached the SDK's exporter, so the rarer instruments
    went out as deltas, while the per-call ones (aggregate.py) are always cumulative: a delta-only backend dropped
    the gateway's main series with nothing said. Start-up says which instruments stay cumulative."""
    variable = "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE"
    env = {variable: preference}
    config = TelemetryConfig.model_validate({"metrics": {"prometheus": False, "otlp_endpoint": otlp.url}})
    with caplog.at_level(logging.WARNING, "customs.telemetry"):
        warned_about = Metrics(config, env=env)
        for quiet in (Metrics(config, env={}), Metrics(config, env={variable: "cumulative"}),
                      Metrics(TelemetryConfig(), env=env)):  # no OTLP export: nothing to say
            await quiet.close()
    await warned_about.close()
    warned = [r.getMessage() for r in caplog.records if "TEMPORALITY_PREFERENCE" in r.getMessage()]
    assert len(warned) == 1 and "customs.calls" in warned[0] and "cumulative" in warned[0], warned
