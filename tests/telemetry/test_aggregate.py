"""The in-place per-call aggregates export exactly what the OpenTelemetry SDK would for the same measurements."""

from __future__ import annotations

import random
import sys
import threading
import time
from typing import Any

from google.protobuf.json_format import MessageToDict
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader, MetricsData, NumberDataPoint
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from gateway.telemetry import aggregate
from gateway.telemetry.aggregate import (
    CARDINALITY_LIMIT,
    INDEX_LIMIT,
    CounterAggregate,
    HistogramAggregate,
    merge_into_reader,
)
from gateway.telemetry.metrics import STAGE_BUCKETS

SCOPE = InstrumentationScope("customs", "0.1.0")


def pairs(key: tuple[tuple[str, Any], ...]) -> dict[str, Any]:
    return dict(key)


def sdk_and_ours() -> tuple[Any, Any, HistogramAggregate, CounterAggregate, InMemoryMetricReader]:
    """SDK instruments `x.h`/`x.c` and ours `x.h`/`x.c` (same names) on one reader, ours under another scope."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader], views=[
        View(instrument_name="x.h", aggregation=ExplicitBucketHistogramAggregation(boundaries=STAGE_BUCKETS))])
    meter = provider.get_meter("sdk", "0.1.0")
    ours_h = HistogramAggregate("x.h", "s", "durations", STAGE_BUCKETS, pairs)
    ours_c = CounterAggregate("x.c", "{call}", "calls", pairs)
    merge_into_reader(reader, (ours_h, ours_c), Resource.create({}), SCOPE)
    return (meter.create_histogram("x.h", "s", "durations"), meter.create_counter("x.c", "{call}", "calls"),
            ours_h, ours_c, reader)


def by_scope(data: MetricsData | None) -> dict[str, dict[str, list[Any]]]:
    """scope name -> metric name -> data points, each sorted by attributes."""
    assert data is not None
    out: dict[str, dict[str, list[Any]]] = {}
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            out[sm.scope.name] = {m.name: sorted(m.data.data_points, key=lambda p: sorted(p.attributes.items()))
                                  for m in sm.metrics}
    return out


def record_both(sdk: Any, ours: Any, value: float, attrs: dict[str, Any], add: bool = False) -> None:
    if add:
        sdk.add(value, attrs)
        ours.add(value, tuple(attrs.items()))
    else:
        sdk.record(value, attrs)
        ours.record(value, tuple(attrs.items()))


def test_histograms_and_counters_match_the_sdk() -> None:
    sdk_h, sdk_c, ours_h, ours_c, reader = sdk_and_ours()
    rng = random.Random(7)
    values = [*STAGE_BUCKETS, 0.0, 1e-9, 2000.0, *(rng.uniform(0, 2) for _ in range(500))]  # bounds land in `le`
    for i, value in enumerate(values):
        record_both(sdk_h, ours_h, value, {"stage": ("authorize", "forward", "credential")[i % 3]})
        counted = {"gen_ai.tool.name": "pay", "customs.decision": "allow" if i % 4 else "deny"}
        record_both(sdk_c, ours_c, 1, counted, add=True)
    found = by_scope(reader.get_metrics_data())
    for theirs, mine in zip(found["sdk"]["x.h"], found["customs"]["x.h"], strict=True):
        assert isinstance(theirs, HistogramDataPoint) and isinstance(mine, HistogramDataPoint)
        assert mine.attributes == theirs.attributes
        assert list(mine.bucket_counts) == list(theirs.bucket_counts)
        assert tuple(mine.explicit_bounds) == tuple(theirs.explicit_bounds)
        assert (mine.count, mine.min, mine.max) == (theirs.count, theirs.min, theirs.max)
        assert abs(mine.sum - theirs.sum) < 1e-9
    for theirs_c, mine_c in zip(found["sdk"]["x.c"], found["customs"]["x.c"], strict=True):
        assert isinstance(theirs_c, NumberDataPoint) and isinstance(mine_c, NumberDataPoint)
        assert (list(dict(mine_c.attributes or {}).items()), mine_c.value) == (
            list(dict(theirs_c.attributes or {}).items()), theirs_c.value)


def otlp_metrics(data: MetricsData | None, scope: str) -> list[dict[str, Any]]:
    """Our scope's metrics as the OTLP exporter encodes them (library encoder), timestamps left out."""
    assert data is not None
    request = MessageToDict(encode_metrics(data))
    metrics = [m for rm in request["resourceMetrics"] for sm in rm["scopeMetrics"]
               if sm["scope"]["name"] == scope for m in sm["metrics"]]
    for metric in metrics:
        for point in next(v for k, v in metric.items() if k in ("sum", "histogram"))["dataPoints"]:
            assert int(point.pop("startTimeUnixNano")) <= int(point.pop("timeUnixNano"))
    return sorted(metrics, key=lambda m: str(m["name"]))


def test_otlp_encoding_is_the_sdks() -> None:
    """Same protobuf as the SDK's instruments: int sums, temporality, monotonicity, buckets, min/max, order."""
    sdk_h, sdk_c, ours_h, ours_c, reader = sdk_and_ours()
    for i in range(50):
        record_both(sdk_h, ours_h, i / 100, {"mcp.method.name": "tools/call", "error.type": f"e{i % 2}"})
        record_both(sdk_c, ours_c, 1, {"customs.upstream": "u", "customs.outcome": "ok"}, add=True)
    data = reader.get_metrics_data()
    assert otlp_metrics(data, "customs") == otlp_metrics(data, "sdk")


def test_each_attribute_set_starts_at_its_first_measurement() -> None:
    _, _, ours_h, _, reader = sdk_and_ours()
    ours_h.record(0.1, (("stage", "authorize"),))
    between = time.time_ns()
    ours_h.record(0.1, (("stage", "forward"),))
    points = {p.attributes["stage"]: p for p in by_scope(reader.get_metrics_data())["customs"]["x.h"]}
    assert points["authorize"].start_time_unix_nano <= between <= points["forward"].start_time_unix_nano


def test_keys_in_any_order_meet_in_one_point() -> None:
    _, _, ours_h, _, reader = sdk_and_ours()
    ours_h.record(0.1, (("a", "1"), ("b", "2")))
    ours_h.record(0.2, (("b", "2"), ("a", "1")))
    [point] = by_scope(reader.get_metrics_data())["customs"]["x.h"]
    assert point.count == 2 and list(point.attributes) == ["a", "b"]  # attributes in the order first seen


def test_cardinality_overflow_like_the_sdk() -> None:
    """Past the SDK's limit of attribute sets, new sets share one `otel.metric.overflow` point; old ones go on."""
    sdk_h, sdk_c, ours_h, ours_c, reader = sdk_and_ours()
    for i in range(CARDINALITY_LIMIT + 10):
        record_both(sdk_h, ours_h, 0.001, {"gen_ai.tool.name": f"t{i}"})
        record_both(sdk_c, ours_c, 1, {"gen_ai.tool.name": f"t{i}"}, add=True)
    record_both(sdk_c, ours_c, 1, {"gen_ai.tool.name": "t0"}, add=True)
    found = by_scope(reader.get_metrics_data())
    for name in ("x.h", "x.c"):
        theirs = [(p.attributes, getattr(p, "count", None), getattr(p, "value", None)) for p in found["sdk"][name]]
        mine = [(p.attributes, getattr(p, "count", None), getattr(p, "value", None)) for p in found["customs"][name]]
        assert mine == theirs
        assert len(mine) == CARDINALITY_LIMIT + 1


def test_memory_stays_bounded_when_clients_invent_names() -> None:
    _, _, ours_h, _, reader = sdk_and_ours()
    for i in range(INDEX_LIMIT + 100):
        ours_h.record(0.001, (("gen_ai.tool.name", f"t{i}"),))
    ours_h.record(0.001, (("gen_ai.tool.name", "t0"),))
    assert len(ours_h._index) == INDEX_LIMIT and len(ours_h._points) == CARDINALITY_LIMIT + 1
    points = by_scope(reader.get_metrics_data())["customs"]["x.h"]
    assert sum(p.count for p in points) == INDEX_LIMIT + 101
    assert [p.count for p in points if p.attributes == {"gen_ai.tool.name": "t0"}] == [2]


def test_nothing_recorded_adds_nothing_and_our_data_alone_still_exports() -> None:
    _, _, ours_h, _, reader = sdk_and_ours()
    assert reader.get_metrics_data() is None  # no data anywhere: the SDK's answer stands
    ours_h.record(0.5, (("stage", "forward"),))
    assert [p.count for p in by_scope(reader.get_metrics_data())["customs"]["x.h"]] == [1]


def test_collection_from_another_thread_while_recording() -> None:
    """Records run on the event loop (no lock) while the OTLP reader collects in its own thread."""
    _, _, ours_h, ours_c, reader = sdk_and_ours()
    stop = threading.Event()
    off: list[Any] = []

    def collect() -> None:
        while not stop.is_set():
            data = reader.get_metrics_data()  # new attribute sets keep arriving while it walks them
            if data is not None:  # counted values are in sum, min and max; the sum may hold one more
                off.extend(p for p in by_scope(data)["customs"].get("x.h", [])
                           if not p.count * 0.001 - 1e-9 <= p.sum <= (p.count + 1) * 0.001 + 1e-9
                           or (p.min, p.max) != (0.001, 0.001))

    collector = threading.Thread(target=collect)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: interleave records and collections
    collector.start()
    try:
        for i in range(40_000):
            ours_h.record(0.001, (("stage", f"s{i // 20}"),))  # a new set every 20 measurements
            ours_c.add(1, (("n", i // 20),))
    finally:
        stop.set()
        collector.join()
        sys.setswitchinterval(interval)
    found = by_scope(reader.get_metrics_data())["customs"]
    assert sum(p.count for p in found["x.h"]) == 40_000 and len(found["x.h"]) == 2000
    assert sum(p.value for p in found["x.c"]) == 40_000
    assert off == []


def test_measurements_finishing_while_a_point_is_copied_are_not_half_seen() -> None:
    """The collecting thread may be descheduled between copying a point's buckets and its sum: every measurement
    finished meanwhile must be in both or in neither (it once showed a count of 11 with the sum of 20)."""

    class Racing(list[Any]):
        """A histogram point on which three measurements finish while the collector copies sum, min and max."""

        raced = False

        def __getitem__(self, index: Any) -> Any:
            if isinstance(index, slice) and not self.raced:
                self.raced = True
                for _ in range(3):  # each as HistogramAggregate.record does it: sum first, its bucket last
                    self[1] += 0.001
                    self[0][3] += 1
            return super().__getitem__(index)

    point = Racing([[0, 0, 0, 5, 0], 0.005, 0.001, 0.001, {"stage": "s"}, 0])
    buckets, total, low, high, *_ = aggregate._snapshot(point)
    assert (sum(buckets), round(total, 9), low, high) == (8, 0.008, 0.001, 0.001)
