"""The in-place per-call aggregates export exactly what the OpenTelemetry SDK would for the same measurements."""

from __future__ import annotations

import random
import threading
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader, NumberDataPoint
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from gateway.telemetry.aggregate import CounterAggregate, HistogramAggregate, attr_key, merge_into_reader
from gateway.telemetry.metrics import STAGE_BUCKETS

SCOPE = InstrumentationScope("customs", "0.1.0")


def sdk_and_ours() -> tuple[Any, Any, HistogramAggregate, CounterAggregate, InMemoryMetricReader]:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader], views=[
        View(instrument_name="sdk.h", aggregation=ExplicitBucketHistogramAggregation(boundaries=STAGE_BUCKETS))])
    meter = provider.get_meter("customs", "0.1.0")
    ours_h = HistogramAggregate("ours.h", "s", "ours", STAGE_BUCKETS)
    ours_c = CounterAggregate("ours.c", "{call}", "ours")
    merge_into_reader(reader, (ours_h, ours_c), Resource.create({}), SCOPE)
    return meter.create_histogram("sdk.h", "s"), meter.create_counter("sdk.c", "{call}"), ours_h, ours_c, reader


def points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    data = reader.get_metrics_data()
    assert data is not None
    out: dict[str, list[Any]] = {}
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            assert sm.scope.name == "customs"
            for metric in sm.metrics:
                out[metric.name] = sorted(metric.data.data_points, key=lambda p: sorted(p.attributes.items()))
    return out


def test_histograms_and_counters_match_the_sdk() -> None:
    sdk_h, sdk_c, ours_h, ours_c, reader = sdk_and_ours()
    rng = random.Random(7)
    values = [*STAGE_BUCKETS, 0.0, 1e-9, 2000.0, *(rng.uniform(0, 2) for _ in range(500))]  # bounds land in `le`
    for i, value in enumerate(values):
        attrs = {"stage": ("authorize", "forward", "credential")[i % 3]}
        sdk_h.record(value, attrs)
        ours_h.record(value, attr_key(attrs))
        counted = {"customs.decision": "allow" if i % 4 else "deny", "gen_ai.tool.name": "pay"}
        sdk_c.add(1, counted)
        ours_c.add(1, attr_key(counted))
    found = points(reader)
    for theirs, mine in zip(found["sdk.h"], found["ours.h"], strict=True):
        assert isinstance(theirs, HistogramDataPoint) and isinstance(mine, HistogramDataPoint)
        assert mine.attributes == theirs.attributes
        assert list(mine.bucket_counts) == list(theirs.bucket_counts)
        assert tuple(mine.explicit_bounds) == tuple(theirs.explicit_bounds)
        assert (mine.count, mine.min, mine.max) == (theirs.count, theirs.min, theirs.max)
        assert abs(mine.sum - theirs.sum) < 1e-9
    for theirs_c, mine_c in zip(found["sdk.c"], found["ours.c"], strict=True):
        assert isinstance(theirs_c, NumberDataPoint) and isinstance(mine_c, NumberDataPoint)
        assert (mine_c.attributes, mine_c.value) == (theirs_c.attributes, theirs_c.value)


def test_nothing_recorded_adds_nothing_and_our_data_alone_still_exports() -> None:
    _, _, ours_h, _, reader = sdk_and_ours()
    assert reader.get_metrics_data() is None  # no data anywhere: the SDK's answer stands
    ours_h.record(0.5, attr_key({"stage": "forward"}))
    assert [p.count for p in points(reader)["ours.h"]] == [1]  # the SDK collected nothing, ours is there


def test_collection_from_another_thread_while_recording() -> None:
    """Records run on the event loop while the OTLP reader collects in its own thread."""
    _, _, ours_h, ours_c, reader = sdk_and_ours()
    stop = threading.Event()

    def collect() -> None:
        while not stop.is_set():
            reader.get_metrics_data()

    collector = threading.Thread(target=collect)
    collector.start()
    try:
        for i in range(20_000):
            ours_h.record(0.001, attr_key({"stage": f"s{i % 50}"}))
            ours_c.add(1, attr_key({"n": i % 50}))
    finally:
        stop.set()
        collector.join()
    found = points(reader)
    assert sum(p.count for p in found["ours.h"]) == 20_000
    assert sum(p.value for p in found["ours.c"]) == 20_000
