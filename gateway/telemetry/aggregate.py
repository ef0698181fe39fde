"""Cheap per-call instruments: aggregated in place, handed to the OpenTelemetry readers as SDK metric data.

Every proxied call makes six measurements; one SDK `Counter.add`/`Histogram.record` costs ~6-10 µs
(attribute hashing, Measurement objects, locks). Here a measurement is one dict lookup by the caller's
own cheap key (a string or a flat tuple, never a fresh attribute dict), and for histograms a bisect,
two comparisons and two additions. At collection time (a Prometheus scrape, an OTLP export) the aggregates become the
SDK's own `Metric`/`HistogramDataPoint`/`NumberDataPoint` objects, merged into what the SDK collected,
so the Prometheus and OTLP exporters (library code) write them exactly as they write SDK instruments.

Threads: measurements come from one thread (the event loop) and take no lock; collection may run in
another (the periodic OTLP reader). A new attribute set and the collection's walk over the sets hold
the lock; a point's count is the sum of its buckets as copied in one step, so an export never shows
a count its buckets disagree with, and a measurement counts itself last, so a counted value is
always in min and max. The rest of a point (sum, min, max) is copied between two reads of its
buckets that agree (`_snapshot`), so the sum holds exactly the counted measurements plus at most the
one being recorded at that moment, however long the collecting thread is descheduled between the
two copies; that one may show in the sum or min/max one export before the count (the next cumulative
export agrees). A set not yet measured is left out.

What the SDK would do, we do: explicit `le` buckets, cumulative temporality with each attribute set's
start time taken at its first measurement, count, sum, min and max, attributes in the order first
seen, and at most `CARDINALITY_LIMIT` attribute sets per instrument, later sets counted in one
`otel.metric.overflow=true` point (tests compare both side by side).
"""

from __future__ import annotations

import math
import threading
import time
from abc import ABC, abstractmethod
from bisect import bisect_left
from collections.abc import Callable, Hashable, Iterable
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

Attrs = dict[str, Any]
ToAttrs = Callable[[Any], Attrs]  # a caller's key -> the attribute set it stands for
Collect = Callable[..., MetricsData | None]

# The SDK's default per instrument (opentelemetry.sdk.metrics ... _DEFAULT_CARDINALITY_LIMIT). Tool
# names in server operations come from clients, so the bound also caps memory.
CARDINALITY_LIMIT = 2000
OVERFLOW = (("otel.metric.overflow", True),)  # the attributes of the point beyond the limit
# Caller keys are indexed up to this many (several keys may name one attribute set); beyond it a
# measurement still lands on the right point, through the slower canonical lookup.
INDEX_LIMIT = 4 * CARDINALITY_LIMIT

# Slots of a histogram point (a list: indexing by constant is the cheapest mutable record in CPython).
_BUCKETS, _SUM, _MIN, _MAX, _ATTRS, _START = range(6)
# Slots of a counter point.
_VALUE, _C_ATTRS, _C_START = range(3)


def _canonical(attrs: Attrs) -> frozenset[tuple[str, type, Any]]:
    # Order-insensitive, and type-tagged like the SDK's key so that True, 1 and 1.0 stay apart.
    return frozenset((key, type(value), value) for key, value in attrs.items())


class _Aggregate(ABC):
    """Points by attribute set, found through the caller's key (written by one thread, collected by any)."""

    def __init__(self, name: str, unit: str, description: str, to_attrs: ToAttrs) -> None:
        self.name = name
        self.unit = unit
        self.description = description
        self._to_attrs = to_attrs
        self._lock = threading.Lock()  # new sets vs a collection walking them (OTLP reader's thread)
        self._index: dict[Hashable, list[Any]] = {}  # caller key -> point; only the recording thread uses it
        self._points: dict[frozenset[tuple[str, type, Any]], list[Any]] = {}  # attribute set -> point

    @abstractmethod
    def _new(self, attrs: Attrs, start_ns: int) -> list[Any]:
        """A fresh point for one attribute set (the histogram's and the counter's differ)."""

    def _find(self, key: Hashable) -> list[Any]:
        """The point for a caller key not indexed yet: its set's, a new one, or the overflow."""
        attrs = self._to_attrs(key)
        canonical = _canonical(attrs)
        point = self._points.get(canonical)
        if point is None:
            if len(self._points) >= CARDINALITY_LIMIT:
                attrs = dict(OVERFLOW)
                canonical = _canonical(attrs)
                point = self._points.get(canonical)
            if point is None:
                point = self._new(attrs, time.time_ns())
                with self._lock:
                    self._points[canonical] = point
        if len(self._index) < INDEX_LIMIT:  # bounded even when clients invent names
            self._index[key] = point
        return point


SNAPSHOT_TRIES = 100  # (at least 1) a point measured without pause could keep changing; then the last copy is taken


def _snapshot(point: list[Any]) -> list[Any]:
    """A copy of one histogram point whose sum, min and max cover every measurement its bucket counts
    (and at most the one in progress): the buckets are copied (`list()`: one step under the GIL)
    before and compared after the rest, until no measurement completed in between."""
    for _ in range(SNAPSHOT_TRIES):
        buckets = list(point[_BUCKETS])
        rest = point[1:]
        if buckets == point[_BUCKETS]:  # one step too: no measurement finished since `buckets`
            break
    return [buckets, *rest]


class HistogramAggregate(_Aggregate):
    """One histogram instrument: per attribute set, bucket counts (`le` bounds), count, sum, min, max."""

    def __init__(self, name: str, unit: str, description: str, bounds: tuple[float, ...],
                 to_attrs: ToAttrs) -> None:
        super().__init__(name, unit, description, to_attrs)
        self.bounds = bounds

    def _new(self, attrs: Attrs, start_ns: int) -> list[Any]:
        return [[0] * (len(self.bounds) + 1), 0.0, math.inf, -math.inf, attrs, start_ns]

    def record(self, value: float, key: Hashable) -> None:
        """One measurement for the attribute set `to_attrs(key)`; `key` must be hashable and cheap to build."""
        point = self._index.get(key) or self._find(key)
        point[1] += value  # slots: see _BUCKETS, _SUM, ... (constants here: no global lookups)
        if value < point[2]:
            point[2] = value
        if value > point[3]:
            point[3] = value
        point[0][bisect_left(self.bounds, value)] += 1  # last: see the module docstring on threads

    def metric(self, now_ns: int) -> Metric | None:
        with self._lock:
            copies = [_snapshot(p) for p in self._points.values()]
        points = [p for p in copies if any(p[_BUCKETS])]
        if not points:
            return None
        data = [HistogramDataPoint(attributes=dict(p[_ATTRS]), start_time_unix_nano=p[_START], time_unix_nano=now_ns,
                                   count=sum(p[_BUCKETS]), sum=p[_SUM], bucket_counts=p[_BUCKETS],
                                   explicit_bounds=self.bounds, min=p[_MIN], max=p[_MAX])
                for p in points]
        return Metric(name=self.name, description=self.description, unit=self.unit,
                      data=Histogram(data_points=data, aggregation_temporality=AggregationTemporality.CUMULATIVE))


class CounterAggregate(_Aggregate):
    """One monotonic counter: a running sum per attribute set, exported as a cumulative SDK `Sum`.

    Amounts are positive: a set whose sum is still 0 counts as not measured yet (see threads above).
    """

    def _new(self, attrs: Attrs, start_ns: int) -> list[Any]:
        return [0, attrs, start_ns]

    def add(self, amount: int, key: Hashable) -> None:
        """Add to the attribute set `to_attrs(key)`; `key` must be hashable and cheap to build."""
        point = self._index.get(key) or self._find(key)
        point[0] += amount

    def metric(self, now_ns: int) -> Metric | None:
        with self._lock:
            points = [list(p) for p in self._points.values() if p[_VALUE]]
        if not points:
            return None
        data = [NumberDataPoint(attributes=dict(p[_C_ATTRS]), start_time_unix_nano=p[_C_START],
                                time_unix_nano=now_ns, value=p[_VALUE]) for p in points]
        return Metric(name=self.name, description=self.description, unit=self.unit,
                      data=Sum(data_points=data, aggregation_temporality=AggregationTemporality.CUMULATIVE,
                               is_monotonic=True))


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
