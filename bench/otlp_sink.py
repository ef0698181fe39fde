"""A minimal OTLP/HTTP receiver for benchmarks: answers exports with 200 and counts what arrived.

Run: .venv/bin/python bench/otlp_sink.py [--port 0]   (prints `listening on http://127.0.0.1:P`)
POST /v1/traces and /v1/metrics get an empty protobuf response (what a collector answers on success);
spans are counted by decoding the request (upb, cheap), so a benchmark can prove that batch export
really happened. GET /stats returns {"trace_exports", "spans", "metric_exports", "bytes"} as JSON.
Unlike tests/support/otlp.py it keeps nothing but counters, so a long load run does not grow it.
"""

from __future__ import annotations

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest


def make_app() -> web.Application:
    stats = {"trace_exports": 0, "spans": 0, "metric_exports": 0, "bytes": 0}

    async def traces(request: web.Request) -> web.Response:
        body = await request.read()  # aiohttp already undid Content-Encoding: gzip
        message = ExportTraceServiceRequest()
        message.ParseFromString(body)
        stats["trace_exports"] += 1
        stats["bytes"] += len(body)
        stats["spans"] += sum(len(ss.spans) for rs in message.resource_spans for ss in rs.scope_spans)
        return web.Response(body=b"", content_type="application/x-protobuf")

    async def metrics(request: web.Request) -> web.Response:
        stats["metric_exports"] += 1
        stats["bytes"] += len(await request.read())
        return web.Response(body=b"", content_type="application/x-protobuf")

    async def show(request: web.Request) -> web.Response:
        return web.json_response(stats)

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.add_routes([web.post("/v1/traces", traces), web.post("/v1/metrics", metrics), web.get("/stats", show)])
    return app


if __name__ == "__main__":
    from serve_app import main  # run as a script: bench/ is on sys.path
    main(__doc__, make_app, path="", backlog=1024)
