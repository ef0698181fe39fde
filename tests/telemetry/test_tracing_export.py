"""Telemetry exports spans over OTLP/HTTP to a real receiver; config and OTEL_* variables choose where."""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased

from gateway.config.model import TelemetryConfig
from gateway.errors import GatewayError
from gateway.telemetry.settings import metric_settings, signal_url, trace_settings
from gateway.telemetry.tracing import Telemetry
from tests.support.otlp import OtlpReceiver


def config(**traces: object) -> TelemetryConfig:
    return TelemetryConfig.model_validate({"traces": traces})


async def test_server_stage_and_client_spans_arrive_with_attributes(otlp: OtlpReceiver) -> None:
    telemetry = Telemetry(TelemetryConfig.model_validate(
        {"service_name": "customs-test", "traces": {"endpoint": otlp.url}}), env={})
    await telemetry.start()
    try:
        with telemetry.server_span("tools/call", "inventory__get_stock", {"customs.principal": "agent-a"}) as server:
            with telemetry.stage_span("customs.authorize", {"customs.decision": "allow"}):
                pass
            with telemetry.client_span("tools/call", "get_stock", {"customs.upstream": "inventory"}):
                pass
        await telemetry.flush()
    finally:
        await telemetry.close()
    root = await otlp.wait_for_span(lambda s: s.name == "tools/call inventory__get_stock")
    assert root.kind == "SERVER" and root.parent_span_id is None
    assert root.attributes["mcp.method.name"] == "tools/call"
    assert root.attributes["customs.principal"] == "agent-a"
    assert root.resource["service.name"] == "customs-test"
    assert root.scope == "customs"
    assert root.trace_id == format(server.get_span_context().trace_id, "032x")
    children = {s.name: s for s in otlp.children(root)}
    assert children["customs.authorize"].kind == "INTERNAL"
    assert children["customs.authorize"].attributes["customs.decision"] == "allow"
    assert children["tools/call get_stock"].kind == "CLIENT"


async def test_exception_marks_span_error_type_and_status(otlp: OtlpReceiver) -> None:
    telemetry = Telemetry(config(endpoint=otlp.url), env={})
    await telemetry.start()
    try:
        with pytest.raises(GatewayError), telemetry.server_span("tools/call", "x"):
            raise GatewayError("approval_denied")
    finally:
        await telemetry.close()
    span = await otlp.wait_for_span(lambda s: s.name == "tools/call x")
    assert span.attributes["error.type"] == "approval_denied"
    assert span.attributes["rpc.response.status_code"] == "-32031"
    assert span.status == "ERROR" and span.status_message == "Call was denied by an approver"


async def test_record_span_after_the_fact_is_a_child_with_given_times(otlp: OtlpReceiver) -> None:
    telemetry = Telemetry(config(endpoint=otlp.url), env={})
    await telemetry.start()
    try:
        with telemetry.server_span("tools/call", "t", start_time=1_000_000_000):
            telemetry.record_span("customs.identify", 1_000_000_000, 1_000_500_000, {"customs.principal": "p"},
                                  error=GatewayError("unauthenticated"))
    finally:
        await telemetry.close()
    identify = await otlp.wait_for_span(lambda s: s.name == "customs.identify")
    root = await otlp.wait_for_span(lambda s: s.name == "tools/call t")
    assert identify.parent_span_id == root.span_id
    assert (identify.start_ns, identify.end_ns) == (1_000_000_000, 1_000_500_000)
    assert root.start_ns == 1_000_000_000
    assert identify.attributes["error.type"] == "unauthenticated"


@pytest.mark.parametrize("variables", [
    {"OTEL_EXPORTER_OTLP_ENDPOINT": "{base}"},
    {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "{base}/v1/traces"},
])
async def test_standard_environment_variables_configure_export(otlp: OtlpReceiver,
                                                                 variables: dict[str, str]) -> None:
    env = {k: v.format(base=otlp.url) for k, v in variables.items()}
    env["OTEL_SERVICE_NAME"] = "from-env"
    telemetry = Telemetry(TelemetryConfig(), env=env)
    assert telemetry.enabled
    await telemetry.start()
    try:
        with telemetry.server_span("ping"):
            pass
    finally:
        await telemetry.close()
    span = await otlp.wait_for_span(lambda s: s.name == "ping")
    assert span.resource["service.name"] == "from-env"


def test_config_wins_over_environment() -> None:
    env = {"OTEL_SERVICE_NAME": "env-name", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://env:4318",
           "OTEL_TRACES_SAMPLER": "always_off"}
    settings = trace_settings(TelemetryConfig.model_validate(
        {"service_name": "cfg", "traces": {"endpoint": "http://cfg:4318", "sample_ratio": 0.5}}), env)
    assert settings.service_name == "cfg"
    assert settings.endpoint == "http://cfg:4318/v1/traces"
    assert isinstance(settings.sampler, ParentBased) and "0.5" in settings.sampler.get_description()
    from_env = trace_settings(TelemetryConfig(), env)
    assert from_env.sampler is ALWAYS_OFF and from_env.endpoint == "http://env:4318/v1/traces"


def test_environment_switches_and_endpoint_forms() -> None:
    assert not trace_settings(TelemetryConfig(), {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4318",
                                                  "OTEL_SDK_DISABLED": "true"}).enabled
    assert not trace_settings(TelemetryConfig(), {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4318",
                                                  "OTEL_TRACES_EXPORTER": "none"}).enabled
    assert trace_settings(TelemetryConfig(), {"OTEL_TRACES_EXPORTER": "console"}).console
    assert trace_settings(TelemetryConfig(), {"OTEL_EXPORTER_OTLP_HEADERS": "a=1,b=2"}).headers == {"a": "1", "b": "2"}
    assert "ParentBased" in trace_settings(TelemetryConfig(), {"OTEL_TRACES_SAMPLER": "bogus"}).sampler \
        .get_description()
    assert signal_url("http://c:4318", "traces") == "http://c:4318/v1/traces"
    assert signal_url("http://c:4318/", "traces") == "http://c:4318/v1/traces"
    assert signal_url("http://c:4318/v1/traces", "traces") == "http://c:4318/v1/traces"
    assert signal_url("http://c/otlp", "metrics") == "http://c/otlp/v1/metrics"


async def test_tracing_off_builds_no_provider_and_exports_nothing(otlp: OtlpReceiver) -> None:
    off = Telemetry(TelemetryConfig(), env={})
    on = Telemetry(config(endpoint=otlp.url), env={})
    await off.start()
    await on.start()
    try:
        assert not off.enabled and off.provider is None
        assert isinstance(off.tracer, trace.NoOpTracer)
        with off.server_span("tools/call", "quiet") as span, off.stage_span("customs.authorize"):
            assert not span.is_recording()
        off.record_span("customs.identify", 1, 2)
        assert off.extract({"traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01"}, None) == (None, [])
        headers: dict[str, str] = {}
        off.inject(headers, headers)
        assert headers == {}
        with on.server_span("marker"):
            pass
    finally:
        await off.close()
        await on.close()
    await otlp.wait_for_span(lambda s: s.name == "marker")
    assert [s.name for s in otlp.spans] == ["marker"]


async def test_two_instances_keep_separate_providers_and_leave_the_global_alone() -> None:
    async with OtlpReceiver() as first, OtlpReceiver() as second:
        a = Telemetry(TelemetryConfig.model_validate({"service_name": "a", "traces": {"endpoint": first.url}}), env={})
        b = Telemetry(TelemetryConfig.model_validate({"service_name": "b", "traces": {"endpoint": second.url}}),
                      env={})
        await a.start()
        await b.start()
        try:
            with a.server_span("one"):
                pass
            with b.server_span("two"):
                pass
        finally:
            await a.close()
            await b.close()
        assert (await first.wait_for_span(lambda s: True)).resource["service.name"] == "a"
        assert (await second.wait_for_span(lambda s: True)).resource["service.name"] == "b"
        assert [s.name for s in first.spans] == ["one"] and [s.name for s in second.spans] == ["two"]
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


async def test_console_exporter_writes_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    telemetry = Telemetry(config(console=True), env={})
    await telemetry.start()
    try:
        with telemetry.server_span("tools/call", "console_check"):
            pass
    finally:
        await telemetry.close()
    captured = capsys.readouterr()
    assert "tools/call console_check" in captured.err
    assert "console_check" not in captured.out


async def test_collector_rejecting_exports_does_not_fail_the_gateway(otlp: OtlpReceiver) -> None:
    otlp.fail_with = 400
    telemetry = Telemetry(config(endpoint=otlp.url), env={})
    await telemetry.start()
    with telemetry.server_span("tools/call", "dropped"):
        pass
    assert await telemetry.flush() in (True, False)
    await telemetry.close()
    assert otlp.requests and otlp.spans == []


def test_resource_attributes_name_the_service_when_nothing_else_does() -> None:
    """OTEL_RESOURCE_ATTRIBUTES' service.name counts (the spec: OTEL_SERVICE_NAME wins over it), before the default."""
    resource = {"OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=prod,service.name=shop-gw"}
    assert trace_settings(TelemetryConfig(), resource).service_name == "shop-gw"
    assert metric_settings(TelemetryConfig(), resource).service_name == "shop-gw"
    both = {**resource, "OTEL_SERVICE_NAME": "named"}
    assert trace_settings(TelemetryConfig(), both).service_name == "named"
    assert trace_settings(TelemetryConfig.model_validate({"service_name": "cfg"}), both).service_name == "cfg"
    assert trace_settings(TelemetryConfig(), {"OTEL_RESOURCE_ATTRIBUTES": "a=b"}).service_name == "customs"


@pytest.mark.parametrize(("exporters", "otlp", "console"), [
    ("console", False, True), ("otlp,console", True, True), ("console, otlp", True, True), ("otlp", True, False),
    ("none", False, False), ("", True, False),
])
def test_the_exporter_variable_is_a_list_of_exporters(exporters: str, otlp: bool, console: bool) -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://env:4318", "OTEL_TRACES_EXPORTER": exporters,
           "OTEL_METRICS_EXPORTER": exporters}
    traces = trace_settings(TelemetryConfig(), env)
    assert (traces.endpoint is not None, traces.console) == (otlp, console)
    assert (metric_settings(TelemetryConfig(), env).endpoint is not None) == otlp
    explicit = trace_settings(TelemetryConfig.model_validate({"traces": {"endpoint": "http://cfg:4318"}}), env)
    assert explicit.endpoint == "http://cfg:4318/v1/traces"  # the config section's own endpoint wins


def test_the_exporter_variable_adds_the_console_to_a_configured_endpoint() -> None:
    # The section sets the endpoint, not `console`: that one still comes from OTEL_TRACES_EXPORTER.
    config = TelemetryConfig.model_validate({"traces": {"endpoint": "http://cfg:4318"}})
    both = trace_settings(config, {"OTEL_TRACES_EXPORTER": "otlp,console"})
    assert (both.endpoint, both.console) == ("http://cfg:4318/v1/traces", True)
    assert not trace_settings(config, {}).console
    assert not trace_settings(config, {"OTEL_TRACES_EXPORTER": "otlp"}).console


def test_an_explicit_console_false_wins_over_the_exporter_variable() -> None:
    env = {"OTEL_TRACES_EXPORTER": "console"}
    assert not trace_settings(TelemetryConfig.model_validate({"traces": {"console": False}}), env).enabled
    assert trace_settings(TelemetryConfig.model_validate({"traces": {"sample_ratio": 0.5}}), env).console
