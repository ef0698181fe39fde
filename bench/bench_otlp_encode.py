"""Benchmark the exporter child's encoding: µs per span, SDK path (readable + encode_spans) vs OtlpEncoder.

Three rows: the SDK path, `OtlpEncoder.encode` + serialize (the message path), and `OtlpEncoder.serialize`
(what the child sends: the same bytes, checked).

Run: .venv/bin/python bench/bench_otlp_encode.py [--requests 2000] [--rounds 7]
The spans are the five a proxied tools/call makes (identify, authorize, credential, client, server),
with the attributes the gateway's own functions (gateway/telemetry/attributes.py) give them; request
ids, decision ids, trace/span ids and authorization timings differ per request. Both paths encode
batches of 512 (the child's) and serialize them; each figure is the best of --rounds (CPU time).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource

from gateway.config.model import UpstreamConfig
from gateway.context import Actor, CallContext, Decision, Principal, ToolInfo
from gateway.telemetry.attributes import (
    call_attributes,
    credential_attributes,
    decision_attributes,
    principal_attributes,
    request_attributes,
    transport_attributes,
    upstream_attributes,
)
from gateway.telemetry.otlp_encode import OtlpEncoder
from gateway.telemetry.spans import WireContext, WireSpan, readable

PRINCIPAL = Principal("agent-b", "https://idp.example.com", "agent-b", {"tenant": "acme"}, chain=(Actor("agent-a"),))
TOOL = ToolInfo("inventory", "get_stock", read_only=True)
TRANSPORT = transport_attributes(UpstreamConfig(name="inventory", url="http://inventory.internal:8080/mcp"))
INTERNAL, SERVER, CLIENT = 0, 1, 2
BATCH = 512


def request_spans(i: int, rng: random.Random) -> list[WireSpan]:
    """One tools/call's spans, in the order they end (the order the child receives them)."""
    params = {"name": "inventory__get_stock", "arguments": {"sku": f"widget-{i % 50}"}}
    ctx = CallContext(method="tools/call", request_id=i, params=params, principal=PRINCIPAL, upstream="inventory",
                      tool=TOOL, session_id="3f9a1c2e7b4d4e0f8a6b5c4d3e2f1a0b", protocol_version="2025-06-18",
                      credential_mode="token_exchange", credential_audience="https://inventory.example.com")
    ctx.decision = Decision("allow", ("reads-allowed",), eval_us=rng.uniform(30, 120), policy_version="a1b2c3d4")
    trace_id = rng.getrandbits(128)

    def child() -> WireContext:
        return (trace_id, rng.getrandbits(64), False, 1, ())

    caller = (trace_id, rng.getrandbits(64), True, 1, ())  # the agent's traceparent
    server = (trace_id, rng.getrandbits(64), False, 1, ())
    server_attributes = {"mcp.method.name": "tools/call", **request_attributes(
        "tools/call", params, i, session_id=ctx.session_id, protocol_version=ctx.protocol_version),
        **principal_attributes(PRINCIPAL)}
    server_attributes.update(call_attributes(ctx))  # set when the call finishes (RecordStage)
    t = 1_700_000_000_000_000_000 + i * 1_000_000
    unset = (0, None)
    return [
        ("customs.identify", INTERNAL, child(), server, t + 10_000, t + 40_000, principal_attributes(PRINCIPAL), [],
         unset),
        ("customs.authorize", INTERNAL, child(), server, t + 50_000, t + 120_000, decision_attributes(ctx.decision),
         [], unset),
        ("customs.credential", INTERNAL, child(), server, t + 130_000, t + 140_000, credential_attributes(ctx), [],
         unset),
        ("tools/call get_stock", CLIENT, child(), server, t + 150_000, t + 600_000,
         {"mcp.method.name": "tools/call", **upstream_attributes(ctx, TRANSPORT)}, [], unset),
        ("tools/call inventory__get_stock", SERVER, server, caller, t, t + 700_000, server_attributes, [], unset),
    ]


def best_us_per_span(encode: Callable[[list[WireSpan]], Any], spans: list[WireSpan], rounds: int) -> float:
    """Best of `rounds` CPU µs a span of `encode` (giving bytes) over batches of BATCH."""
    best = float("inf")
    for _ in range(rounds):
        started = time.process_time()
        for start in range(0, len(spans), BATCH):
            encode(spans[start:start + BATCH])
        best = min(best, (time.process_time() - started) / len(spans) * 1e6)
    return best


def main(requests: int, rounds: int) -> None:
    rng = random.Random(7)
    spans = [span for i in range(requests) for span in request_spans(i, rng)]
    resource = Resource.create({"service.name": "customs", "service.version": "0.1.0"})
    encoder = OtlpEncoder(dict(resource.attributes))
    first = spans[:BATCH]
    assert encoder.encode(first) == encode_spans([readable(span, resource) for span in first]), "outputs differ"

    assert all(encoder.serialize(spans[i:i + BATCH]) == encoder.encode(spans[i:i + BATCH]).SerializeToString()
               for i in range(0, len(spans), BATCH)), "serialize differs from encode"

    def sdk(batch: list[WireSpan]) -> Any:
        return encode_spans([readable(span, resource) for span in batch]).SerializeToString()

    before = best_us_per_span(sdk, spans, rounds)
    message = best_us_per_span(lambda batch: encoder.encode(batch).SerializeToString(), spans, rounds)
    after = best_us_per_span(encoder.serialize, spans, rounds)
    print(f"{len(spans)} spans ({requests} requests x 5), batches of {BATCH}, best of {rounds} rounds, CPU time")
    print(f"SDK path   (readable + encode_spans + serialize) {before:7.1f} µs/span")
    print(f"OtlpEncoder.encode + SerializeToString           {message:7.1f} µs/span")
    print(f"OtlpEncoder.serialize (the child's)              {after:7.1f} µs/span")
    print(f"SDK path / serialize                             {before / after:7.1f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    main(args.requests, args.rounds)
