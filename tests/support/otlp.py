"""A real OTLP/HTTP receiver for tests: decodes exported spans and metrics so tests can assert on them.

`OtlpReceiver` is an aiohttp server on 127.0.0.1:0 accepting `POST /v1/traces` and `POST /v1/metrics`
(protobuf; gzip bodies are decompressed by aiohttp). Decoded spans and metric points are kept in
order of arrival; `wait_for(predicate)` wakes on every export (asyncio.Condition, no sleeps).

    async with OtlpReceiver() as otlp:
        config = {"telemetry": {"traces": {"endpoint": otlp.url}}}
        ...
        span = await otlp.wait_for_span(lambda s: s.name == "tools/call get_stock")
        trace = otlp.trace(span.trace_id)          # every span of that trace received so far
        assert otlp.children(span)[0].name == "authorize"

`stalled_collector()` is the opposite: a collector that takes every trace export and never answers.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import web
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from tests.support.servers import run_aiohttp

T = TypeVar("T")

SPAN_KINDS = {0: "UNSPECIFIED", 1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}
STATUS_CODES = {0: "UNSET", 1: "OK", 2: "ERROR"}


def any_value(value: AnyValue) -> Any:
    """Decode an OTLP AnyValue into plain Python (arrays as tuples, kvlists as dicts)."""
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return tuple(any_value(v) for v in value.array_value.values)
    if kind == "kvlist_value":
        return attributes(value.kvlist_value.values)
    return getattr(value, kind)


def attributes(pairs: Any) -> dict[str, Any]:
    return {kv.key: any_value(kv.value) for kv in pairs if isinstance(kv, KeyValue)}


@dataclass(frozen=True)
class ReceivedLink:
    trace_id: str
    span_id: str
    attributes: dict[str, Any]


@dataclass(frozen=True)
class ReceivedSpan:
    """One exported span; ids are lower-case hex, `parent_span_id` None for a root."""

    name: str
    trace_id: str
    span_id: str
    parent_span_id: str | None
    kind: str
    attributes: dict[str, Any]
    links: tuple[ReceivedLink, ...]
    status: str
    status_message: str
    start_ns: int
    end_ns: int
    resource: dict[str, Any]
    scope: str
    events: tuple[str, ...] = ()
    trace_state: str = ""


@dataclass(frozen=True)
class ReceivedPoint:
    """One metric data point: sums/gauges carry `value`, histograms `count` and `sum`."""

    metric: str
    kind: str  # sum | gauge | histogram
    attributes: dict[str, Any]
    value: float | None = None
    count: int | None = None
    sum: float | None = None
    unit: str = ""


@dataclass
class OtlpReceiver:
    """Collector stand-in. `url` is the base endpoint (what `telemetry.traces.endpoint` takes)."""

    spans: list[ReceivedSpan] = field(default_factory=list)
    points: list[ReceivedPoint] = field(default_factory=list)
    requests: list[dict[str, str]] = field(default_factory=list)  # headers of each export request
    fail_with: int | None = None  # answer exports with this HTTP status (to test exporter failures)
    port: int = 0  # where to listen (0: any free port); a fixed one stands for a collector that comes back
    _runner: web.AppRunner | None = None
    _port: int = 0
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    @property
    def traces_url(self) -> str:
        return f"{self.url}/v1/traces"

    @property
    def metrics_url(self) -> str:
        return f"{self.url}/v1/metrics"

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.add_routes([web.post("/v1/traces", self._traces), web.post("/v1/metrics", self._metrics)])
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        server = site._server
        assert server is not None and server.sockets  # type: ignore[attr-defined]
        self._port = int(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> OtlpReceiver:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- handlers ----------------------------------------------------------------------------------

    async def _traces(self, request: web.Request) -> web.Response:
        self.requests.append(dict(request.headers))
        if self.fail_with is not None:
            return web.Response(status=self.fail_with)
        message = ExportTraceServiceRequest()
        message.ParseFromString(await request.read())
        received = [span for rs in message.resource_spans for span in _spans(rs)]
        async with self._changed:
            self.spans.extend(received)
            self._changed.notify_all()
        return _protobuf(ExportTraceServiceResponse().SerializeToString())

    async def _metrics(self, request: web.Request) -> web.Response:
        self.requests.append(dict(request.headers))
        if self.fail_with is not None:
            return web.Response(status=self.fail_with)
        message = ExportMetricsServiceRequest()
        message.ParseFromString(await request.read())
        received = [p for rm in message.resource_metrics for sm in rm.scope_metrics
                    for metric in sm.metrics for p in _points(metric)]
        async with self._changed:
            self.points.extend(received)
            self._changed.notify_all()
        return _protobuf(ExportMetricsServiceResponse().SerializeToString())

    # -- queries -----------------------------------------------------------------------------------

    async def wait_for(self, predicate: Callable[[OtlpReceiver], T | None], within: float = 10.0) -> T:
        """Wait until `predicate(self)` is truthy (checked now and after every export); return its value."""
        async def satisfied() -> T:
            async with self._changed:
                result = predicate(self)
                while not result:
                    await self._changed.wait()
                    result = predicate(self)
                return result
        return await asyncio.wait_for(satisfied(), within)

    async def wait_for_span(self, match: Callable[[ReceivedSpan], bool], within: float = 10.0) -> ReceivedSpan:
        return await self.wait_for(lambda r: next((s for s in r.spans if match(s)), None), within)

    async def wait_for_point(self, match: Callable[[ReceivedPoint], bool], within: float = 10.0) -> ReceivedPoint:
        return await self.wait_for(lambda r: next((p for p in reversed(r.points) if match(p)), None), within)

    def named(self, name: str) -> list[ReceivedSpan]:
        return [s for s in self.spans if s.name == name]

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        return [s for s in self.spans if s.trace_id == trace_id]

    def children(self, parent: ReceivedSpan) -> list[ReceivedSpan]:
        return [s for s in self.spans if s.parent_span_id == parent.span_id and s.trace_id == parent.trace_id]

    def with_attribute(self, key: str, value: Any) -> list[ReceivedSpan]:
        return [s for s in self.spans if s.attributes.get(key) == value]


@dataclass(frozen=True)
class StalledCollector:
    """`url` is the base endpoint; `arrived` is set once the first export is being held."""

    url: str
    arrived: asyncio.Event


@asynccontextmanager
async def stalled_collector() -> AsyncIterator[StalledCollector]:
    """A collector that accepts connections and holds every `POST /v1/traces` unanswered until the block ends:
    an exporter child that ships to it is stuck on its first request."""
    arrived, release = asyncio.Event(), asyncio.Event()

    async def stalled(request: web.Request) -> web.Response:
        arrived.set()
        await release.wait()
        return web.Response(body=b"", content_type="application/x-protobuf")

    app = web.Application()
    app.add_routes([web.post("/v1/traces", stalled)])
    async with run_aiohttp(app, access_log=None, shutdown_timeout=1) as url:
        try:
            yield StalledCollector(url, arrived)
        finally:
            release.set()  # before the server's clean-up, which would wait for the held requests


def _protobuf(body: bytes) -> web.Response:
    return web.Response(body=body, content_type="application/x-protobuf")


def _spans(resource_spans: Any) -> list[ReceivedSpan]:
    resource = attributes(resource_spans.resource.attributes)
    out: list[ReceivedSpan] = []
    for scope_spans in resource_spans.scope_spans:
        for span in scope_spans.spans:
            out.append(ReceivedSpan(
                name=span.name, trace_id=span.trace_id.hex(), span_id=span.span_id.hex(),
                parent_span_id=span.parent_span_id.hex() or None, kind=SPAN_KINDS.get(span.kind, str(span.kind)),
                attributes=attributes(span.attributes),
                links=tuple(ReceivedLink(link.trace_id.hex(), link.span_id.hex(), attributes(link.attributes))
                            for link in span.links),
                status=STATUS_CODES.get(span.status.code, str(span.status.code)), status_message=span.status.message,
                start_ns=span.start_time_unix_nano, end_ns=span.end_time_unix_nano, resource=resource,
                scope=scope_spans.scope.name, events=tuple(e.name for e in span.events),
                trace_state=span.trace_state))
    return out


def _points(metric: Any) -> list[ReceivedPoint]:
    kind = metric.WhichOneof("data")
    if kind in ("sum", "gauge"):
        return [ReceivedPoint(metric.name, kind, attributes(p.attributes),
                              value=p.as_double if p.WhichOneof("value") == "as_double" else float(p.as_int),
                              unit=metric.unit)
                for p in getattr(metric, kind).data_points]
    if kind == "histogram":
        return [ReceivedPoint(metric.name, kind, attributes(p.attributes), count=p.count, sum=p.sum, unit=metric.unit)
                for p in metric.histogram.data_points]
    return []
