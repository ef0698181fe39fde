"""A collector that refuses every export with 503 for a long stretch, then comes back (a real aiohttp collector).

docs/tracing.md: the collector failing never holds up a call; what the exporter child gives up on after its retries is
counted in `customs.spans.dropped`; spans finished after the collector is back arrive as usual. A 503 is the answer
OTLP calls retryable: unlike a collector that is down (connection refused), the child's retries reach it and are
refused again, many batches in a row. Every span of the stretch must be accounted for (dropped, never silently lost,
never shipped twice), and the exporter must not stay wedged behind the backlog.
"""

from __future__ import annotations

import pytest

from gateway.config import parse_config
from gateway.telemetry.observability import Observability
from tests.support.otlp import OtlpReceiver

LOST = 2_000  # several batches' worth


async def test_a_long_503_stretch_drops_and_counts_every_span_then_spans_arrive_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """2,000 spans finished while the collector answers 503 are each counted dropped (the metric says so too), none
    reaches it; once it accepts again the next spans arrive, exactly once, and the drop count does not move."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "0.5")  # the child's retry window (inherited)
    async with OtlpReceiver(fail_with=503) as otlp:
        obs = Observability(parse_config({"upstreams": [{"name": "i", "url": "http://127.0.0.1:1/mcp"}],
                                          "telemetry": {"traces": {"endpoint": otlp.url}}}), env={})
        await obs.start()
        try:
            for n in range(LOST):
                with obs.telemetry.server_span("tools/call", f"lost-{n}"):
                    pass
            assert await obs.telemetry.flush() is False
            assert obs.telemetry.dropped == LOST
            assert len(otlp.requests) >= 1 and otlp.spans == []
            assert next(line for line in obs.metrics.prometheus_text().decode().splitlines()
                        if line.startswith("customs_spans_dropped_total{")).endswith(f" {float(LOST)}")
            otlp.fail_with = None
            for n in range(3):
                with obs.telemetry.server_span("tools/call", f"back-{n}"):
                    pass
            assert await obs.telemetry.flush()
            await otlp.wait_for(lambda o: len(o.spans) >= 3 or None)
            assert sorted(s.name for s in otlp.spans) == [f"tools/call back-{n}" for n in range(3)]
            assert obs.telemetry.dropped == LOST
        finally:
            await obs.close()
