"""OTEL_EXPORTER_OTLP_TRACES_HEADERS takes precedence over OTEL_EXPORTER_OTLP_HEADERS as the SDK's exporters apply
it: in place of the generic list, not merged into it. Merged, a credential meant for the generic endpoint (metrics at
one vendor) went with every span export to another collector (traces elsewhere, with their own key)."""

from __future__ import annotations

from gateway.config.model import TelemetryConfig
from gateway.telemetry.tracing import Telemetry
from tests.support.otlp import OtlpReceiver


async def test_per_signal_headers_replace_the_generic_ones(otlp: OtlpReceiver) -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", "OTEL_EXPORTER_OTLP_HEADERS": "authorization=generic",
           "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": otlp.traces_url, "OTEL_EXPORTER_OTLP_TRACES_HEADERS": "x-api-key=b"}
    telemetry = Telemetry(TelemetryConfig(), env=env)
    await telemetry.start()
    try:
        with telemetry.server_span("ping"):
            pass
        await telemetry.flush()
    finally:
        await telemetry.close()
    await otlp.wait_for_span(lambda s: s.name == "ping")
    sent = {k.lower(): v for k, v in otlp.requests[0].items()}
    assert sent.get("x-api-key") == "b"
    assert "authorization" not in sent
