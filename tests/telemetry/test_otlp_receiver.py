"""The test OTLP receiver decodes what the real SDK exporters send (traces gzip or not, metrics)."""

from __future__ import annotations

import asyncio

import pytest
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind

from tests.support.otlp import OtlpReceiver


@pytest.mark.parametrize("compression", [Compression.NoCompression, Compression.Gzip])
async def test_spans_arrive_decoded(compression: Compression) -> None:
    async with OtlpReceiver() as otlp:
        provider = TracerProvider(resource=Resource.create({"service.name": "t"}))
        provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=otlp.traces_url,
                                                                         compression=compression)))
        tracer = provider.get_tracer("test")

        def emit() -> None:
            with tracer.start_as_current_span("outer", kind=SpanKind.SERVER, attributes={"a": 1, "b": ["x", "y"]}):
                with tracer.start_as_current_span("inner"):
                    pass
        await asyncio.to_thread(emit)
        outer = await otlp.wait_for_span(lambda s: s.name == "outer")
        inner = await otlp.wait_for_span(lambda s: s.name == "inner")
        await asyncio.to_thread(provider.shutdown)
    assert outer.kind == "SERVER" and outer.parent_span_id is None
    assert outer.attributes == {"a": 1, "b": ("x", "y")}
    assert inner.parent_span_id == outer.span_id and inner.trace_id == outer.trace_id
    assert otlp.children(outer) == [inner]
    assert outer.resource["service.name"] == "t"
    if compression is Compression.Gzip:
        assert any(r.get("Content-Encoding") == "gzip" for r in otlp.requests)


async def test_metrics_arrive_decoded() -> None:
    async with OtlpReceiver() as otlp:
        reader = PeriodicExportingMetricReader(OTLPMetricExporter(endpoint=otlp.metrics_url),
                                               export_interval_millis=60_000)
        provider = MeterProvider(metric_readers=[reader])
        meter = provider.get_meter("test")
        meter.create_counter("c").add(3, {"k": "v"})
        meter.create_histogram("h", unit="s").record(0.5)
        await asyncio.to_thread(reader.force_flush)
        counter = await otlp.wait_for_point(lambda p: p.metric == "c")
        histogram = await otlp.wait_for_point(lambda p: p.metric == "h")
        await asyncio.to_thread(provider.shutdown)
    assert counter.kind == "sum" and counter.value == 3 and counter.attributes == {"k": "v"}
    assert histogram.kind == "histogram" and histogram.count == 1 and histogram.sum == 0.5 and histogram.unit == "s"


async def test_wait_for_times_out_when_nothing_arrives() -> None:
    async with OtlpReceiver() as otlp:
        with pytest.raises(TimeoutError):
            await otlp.wait_for_span(lambda s: True, within=0.05)
