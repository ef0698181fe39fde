"""Cheap per-call histograms: aggregated in place, handed to the OpenTelemetry readers as SDK metric data.

Every proxied call records several durations; one SDK `Histogram.record` costs ~6 µs in a tight loop
and several times that inside a busy gateway (attribute hashing, Measurement objects, locks). Here a
record is a dict lookup, a bisect and four additions. At collection time (a Prometheus scrape, an OTLP
export) the aggregates become the SDK's own `Metric`/`HistogramDataPoint` objects, merged into what the
SDK collected, so the Prometheus and OTLP exporters (library code) write them exactly as they write
SDK histograms: explicit buckets, cumulative temporality, count, sum, min and max.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import Any

from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricsData,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

AttrKey = tuple[tuple[str, Any], ...]
Collect = Callable[..., MetricsData | None]


class HistogramAggregate:
    """One histogram instrument: per attribute set, bucket counts (`le` bounds), count, sum, min, max."""

    def __init__(self, name: str, unit: str, description: str, bounds: tuple[float, ...]) -> None:
        self.name = name
        self.unit = unit
        self.description = description
        self.bounds = bounds
        self._start_ns = time.time_ns()
        self._lock = threading.Lock()  # records run on the event loop, OTLP collection in the reader's thread
        self._points: dict[AttrKey, list[Any]] = {}  # key -> [bucket counts, count, sum, min, max]

    def record(self, value: float, key: AttrKey) -> None:
        with self._lock:
            point = self._points.get(key)
            if point is None:
                point = self._points[key] = [[0] * (len(self.bounds) + 1), 0, 0.0, value, value]
            point[0][bisect_left(self.bounds, value)] += 1  # bucket i holds bounds[i-1] < v <= bounds[i]
            point[1] += 1
            point[2] += value
            if value < point[3]:
                point[3] = value
            if value > point[4]:
                point[4] = value

    def metric(self, now_ns: int) -> Metric | None:
        with self._lock:
            points = [(key, list(p[0]), p[1], p[2], p[3], p[4]) for key, p in self._points.items()]
        if not points:
            return None
        data = [HistogramDataPoint(attributes=dict(key), start_time_unix_nano=self._start_ns, time_unix_nano=now_ns,
                                   count=count, sum=total, bucket_counts=buckets, explicit_bounds=self.bounds,
                                   min=low, max=high)
                for key, buckets, count, total, low, high in points]
        return Metric(name=self.name, description=self.description, unit=self.unit,
                      data=Histogram(data_points=data, aggregation_temporality=AggregationTemporality.CUMULATIVE))


class CounterAggregate:
    """One monotonic counter: a running sum per attribute set, exported as a cumulative SDK `Sum`."""

    def __init__(self, name: str, unit: str, description: str) -> None:
        self.name = name
        self.unit = unit
        self.description = description
        self._start_ns = time.time_ns()
        self._lock = threading.Lock()
        self._sums: dict[AttrKey, float] = {}

    def add(self, amount: float, key: AttrKey) -> None:
        with self._lock:
            self._sums[key] = self._sums.get(key, 0) + amount

    def metric(self, now_ns: int) -> Metric | None:
        with self._lock:
            sums = list(self._sums.items())
        if not sums:
            return None
        data = [NumberDataPoint(attributes=dict(key), start_time_unix_nano=self._start_ns, time_unix_nano=now_ns,
                                value=value) for key, value in sums]
        return Metric(name=self.name, description=self.description, unit=self.unit,
                      data=Sum(data_points=data, aggregation_temporality=AggregationTemporality.CUMULATIVE,
                               is_monotonic=True))


def attr_key(attrs: Mapping[str, Any]) -> AttrKey:
    return tuple(sorted(attrs.items()))


Aggregate = HistogramAggregate | CounterAggregate


def merged(collected: MetricsData | None, aggregates: Iterable[Aggregate], resource: Resource,
           scope: InstrumentationScope) -> MetricsData | None:
    """The SDK's collection with our aggregates added to the `scope` of its (first) resource."""
    now = time.time_ns()
    ours = [m for m in (a.metric(now) for a in aggregates) if m is not None]
    if not ours:
        return collected
    if collected is None or not collected.resource_metrics:
        return MetricsData([ResourceMetrics(resource, [ScopeMetrics(scope, ours, "")], "")])
    first, *rest = collected.resource_metrics
    scopes = list(first.scope_metrics)
    for index, scope_metrics in enumerate(scopes):
        if scope_metrics.scope.name == scope.name:
            scopes[index] = replace(scope_metrics, metrics=[*scope_metrics.metrics, *ours])
            break
    else:
        scopes.append(ScopeMetrics(scope, ours, ""))
    return MetricsData([replace(first, scope_metrics=scopes), *rest])


def merge_into_reader(reader: Any, aggregates: Iterable[Aggregate], resource: Resource,
                      scope: InstrumentationScope) -> None:
    """Make `reader` (registered on a MeterProvider) see our aggregates in every collection.

    The SDK has no public hook for pre-aggregated data; the reader's collect callback is the one place
    both the Prometheus reader and the periodic OTLP reader pass through (tests pin the outcome).
    """
    original: Collect = reader._collect
    frozen = tuple(aggregates)

    def collect(*args: Any, **kwargs: Any) -> MetricsData | None:
        return merged(original(*args, **kwargs), frozen, resource, scope)

    reader._collect = collect

