"""Demo agent for the compose stack: makes demo keys, mints tokens, and walks through four calls.

    python compose/agent.py keys --out /keys            # ES256 key pair + jwks.json (once)
    python compose/agent.py token --subject alice --groups approvers,finance   # an approver token
    python compose/agent.py demo --gateway http://127.0.0.1:8700/mcp --key /keys/signing-key.pem

Each call of the walkthrough starts its own trace (a `traceparent` in `params._meta`) and prints the
Jaeger link, so you can open exactly that trace. With OTEL_EXPORTER_OTLP_ENDPOINT set (the compose file sets
it), the agent exports its own CLIENT span of each call (`tools/call <tool>`, service `demo-agent`), so the
trace starts at the first agent; without it the traceparent names a parent span nobody exports.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, format_trace_id
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from gateway.demo.delegate import KEY_FILE, mint_token, write_demo_keys

JAEGER_UI = "http://localhost:16686"


def new_traceparent() -> tuple[str, str]:
    trace_id = secrets.token_hex(16)
    return trace_id, f"00-{trace_id}-{secrets.token_hex(8)}-01"


def agent_tracing() -> TracerProvider | None:
    """The agent's own spans, exported where OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT points (none when unset)."""
    if not (os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")):
        return None
    provider = TracerProvider(resource=Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME")
                                                        or "demo-agent"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider


@contextmanager
def agent_span(tracing: TracerProvider | None, tool: str) -> Iterator[tuple[str, str]]:
    """(trace id, traceparent) of one call: the agent's CLIENT span's when it exports spans, else made up."""
    if tracing is None:
        yield new_traceparent()
        return
    tracer = tracing.get_tracer("customs-demo-agent")
    attributes = {"mcp.method.name": "tools/call", "gen_ai.tool.name": tool, "gen_ai.operation.name": "execute_tool"}
    with tracer.start_as_current_span(f"tools/call {tool}", kind=SpanKind.CLIENT, attributes=attributes) as span:
        carrier: dict[str, str] = {}
        TraceContextTextMapPropagator().inject(carrier)
        yield format_trace_id(span.get_span_context().trace_id), carrier["traceparent"]


async def call(gateway: str, token: str, tool: str, args: dict[str, Any], title: str,
               tracing: TracerProvider | None = None) -> None:
    print(f"\n== {title}\n   tools/call {tool} {args}")
    with agent_span(tracing, tool) as (trace_id, traceparent):
        async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"},
                                      timeout=httpx2.Timeout(30.0, read=90.0)) as http:
            async with Client(streamable_http_client(gateway, http_client=http), mode="legacy") as client:
                try:
                    result = await client.call_tool(tool, args, meta={"traceparent": traceparent})  # type: ignore[arg-type]
                    text = " ".join(getattr(part, "text", "") for part in result.content)
                    print(f"   -> {'tool error: ' if result.is_error else ''}{text}")
                except Exception as exc:  # the gateway's JSON-RPC error (denied, held, …) is the point of the demo
                    print(f"   -> refused: {exc}")
    print(f"   trace: {JAEGER_UI}/trace/{trace_id}")


def wait_ready(gateway: str, timeout_s: float = 90.0) -> None:
    """Poll /readyz until the gateway and its upstreams answer (compose starts them in parallel)."""
    url = gateway.rsplit("/mcp", 1)[0] + "/readyz"
    end = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass  # not up yet (connection refused, or 503 while upstreams start)
        if time.monotonic() > end:
            raise SystemExit(f"gateway not ready at {url} after {timeout_s:.0f}s")
        time.sleep(1)


async def demo(gateway: str, key: Path) -> None:
    agent = mint_token(key, subject="demo-agent", audience=gateway, claims={"tenant": "acme"})
    untrusted = mint_token(key, subject="untrusted-agent", audience=gateway, claims={"tenant": "acme"})
    tracing = agent_tracing()
    try:
        await call(gateway, agent, "inventory__get_stock", {"sku": "widget"}, "1. allowed: a read-only tool", tracing)
        await call(gateway, untrusted, "inventory__get_stock", {"sku": "widget"},
                   "2. denied: an untrusted agent (policy untrusted-agents)", tracing)
        await call(gateway, agent, "delegate__stock_report", {"sku": "gadget"},
                   "3. delegated: restock-agent calls inventory for demo-agent (act claim, one trace)", tracing)
        await call(gateway, agent, "payments__pay", {"account": "ACME-001", "amount": 250, "memo": "demo"},
                   "4. held: a payment waits for a person (open http://127.0.0.1:8700/approvals)", tracing)
    finally:
        if tracing is not None:
            await asyncio.to_thread(tracing.shutdown)  # export the agent's spans before it exits


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="compose/agent.py", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    keys = sub.add_parser("keys", help="create the demo signing key and jwks.json (kept if present)")
    keys.add_argument("--out", type=Path, required=True)
    token = sub.add_parser("token", help="print a demo access token")
    token.add_argument("--key", type=Path, default=Path("/keys") / KEY_FILE)
    token.add_argument("--subject", required=True)
    token.add_argument("--audience", default="http://127.0.0.1:8700/mcp")
    token.add_argument("--tenant", default="acme")
    token.add_argument("--groups", default="", help="comma-separated groups (approvers: approvers,finance)")
    run = sub.add_parser("demo", help="run the four example calls")
    run.add_argument("--gateway", default="http://127.0.0.1:8700/mcp")
    run.add_argument("--key", type=Path, default=Path("/keys") / KEY_FILE)
    args = parser.parse_args(argv)
    if args.command != "keys" and not args.key.is_file():  # else a FileNotFoundError traceback
        parser.error(f"no demo key at {args.key}: write one with `python compose/agent.py keys --out "
                     f"{args.key.parent}` (the compose stack's one-shot `keys` service does), or pass --key FILE")
    if args.command == "keys":
        print(f"demo key: {write_demo_keys(args.out)}")
    elif args.command == "token":
        claims: dict[str, Any] = {"tenant": args.tenant}
        if args.groups:
            claims["groups"] = [g for g in args.groups.split(",") if g]
        print(mint_token(args.key, subject=args.subject, audience=args.audience, claims=claims, ttl_s=3600))
    else:
        wait_ready(args.gateway)
        asyncio.run(demo(args.gateway, args.key))
    return 0


if __name__ == "__main__":
    sys.exit(main())
