"""The final metrics export at shutdown is bounded by the drain deadline, as the span export is.

The SDK's OTLP metric exporter retries a collector that refuses connections (down, restarting) for up to its
own 10 s timeout, so a gateway exporting metrics took 6.5 to 12 s to stop on SIGTERM with its collector down
(spans alone: 0.2 s). Once shutdown has begun the export gets what is left of `listen.drain_timeout_s`, at
least a second, on a thread the process does not wait for; what it could not send is lost and said so.
"""

from __future__ import annotations

import asyncio

import pytest

from gateway.config.model import TelemetryConfig
from gateway.telemetry.metrics import Metrics
from tests.conftest import free_port
from tests.support.otlp import OtlpReceiver


async def test_the_final_metrics_export_shares_the_drain_deadline(caplog: pytest.LogCaptureFixture) -> None:
    refused = f"http://127.0.0.1:{free_port()}"  # nothing listens there: every attempt is refused
    metrics = Metrics(TelemetryConfig.model_validate(
        {"metrics": {"prometheus": False, "otlp_endpoint": refused}}), env={})
    metrics.record_call("inventory", "get_stock", "allow", "ok")
    metrics.shutdown_deadline = asyncio.get_running_loop().time()  # the drain used it all
    with caplog.at_level("WARNING", "customs.telemetry"):
        await asyncio.wait_for(metrics.close(), 30)
    lost = [r.getMessage() for r in caplog.records if "final metrics export" in r.getMessage()]
    assert lost == ["final metrics export did not finish within 1 s of shutdown: its points are lost"], lost
    assert metrics.provider is None


async def test_a_reachable_collector_gets_the_final_export_within_the_bound(otlp: OtlpReceiver) -> None:
    metrics = Metrics(TelemetryConfig.model_validate(
        {"metrics": {"prometheus": False, "otlp_endpoint": otlp.url}}), env={})
    metrics.record_call("inventory", "get_stock", "allow", "ok")
    metrics.shutdown_deadline = asyncio.get_running_loop().time()
    await asyncio.wait_for(metrics.close(), 30)
    point = await otlp.wait_for_point(lambda p: p.metric == "customs.calls")
    assert point.attributes["customs.upstream"] == "inventory"
