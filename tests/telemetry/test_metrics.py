"""Metrics: Prometheus text per gateway instance, OTLP export, and the no-op path when both are off."""

from __future__ import annotations

import prometheus_client
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.config import parse_config
from gateway.config.model import TelemetryConfig
from gateway.telemetry import Metrics, Observability
from tests.support.otlp import OtlpReceiver


def exercise(metrics: Metrics) -> None:
    metrics.record_call("inventory", "get_stock", "allow")
    metrics.record_call("payments", "pay", "deny", "unknown_tool")
    metrics.stage_duration("authorize", 0.0001)
    metrics.server_operation("tools/call", 0.01, {"gen_ai.tool.name": "inventory__get_stock"})
    metrics.client_operation("tools/call", 0.005, {"customs.upstream": "inventory"})
    metrics.approval_pending(+1)
    metrics.approval_pending(+1)
    metrics.approval_pending(-1)
    metrics.approval_waited(12.0, "approved")
    metrics.upstream_error("payments", "upstream_timeout")
    metrics.upstream_restart("files")
    metrics.policy_reload(True)
    metrics.tool_quarantined("inventory", "get_stock")
    metrics.rate_limited("principal")
    metrics.shadow_disagreement("payments", "pay", "allow", "deny")
    metrics.log_record_dropped()


PROMETHEUS_NAMES = (
    "customs_calls_total", "customs_stage_duration_seconds_bucket", "mcp_server_operation_duration_seconds_bucket",
    "mcp_client_operation_duration_seconds_count", "customs_approvals_pending",
    "customs_approval_wait_duration_seconds",
    "customs_upstream_errors_total", "customs_upstream_restarts_total", "customs_policy_reloads_total",
    "customs_tool_quarantines_total", "customs_rate_limited_total", "customs_shadow_disagreements_total",
    "customs_decision_log_dropped_total",
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
    assert point.attributes == {"customs.outcome": "error"}


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
