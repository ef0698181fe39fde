"""Benchmark the telemetry cost per call: server span + instrumented pipeline + record, tracing off vs on.

Run: .venv/bin/python bench/bench_tracing.py [--n 20000]
Stages are no-ops, so the figures are the telemetry overhead alone. "on" exports over OTLP/HTTP to a
local receiver through the exporter child process (the figures are the event loop's share; the
child's encoding runs on another core); the decision log writes
to /dev/null through the normal buffered writer. Prometheus metrics are on in every scenario.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.config import parse_config
from gateway.context import Actor, CallContext, Decision, Principal, ToolInfo
from gateway.pipeline import Pipeline
from gateway.telemetry import Observability
from tests.support.otlp import OtlpReceiver

PRINCIPAL = Principal("agent-b", "https://idp", "agent-b", {"tenant": "acme"}, chain=(Actor("agent-a"),))
TOOL = ToolInfo("inventory", "get_stock", read_only=True)


async def _allow(ctx: CallContext) -> None:
    ctx.decision = Decision("allow", ("reads-allowed",), eval_us=70.0)


async def _nothing(ctx: CallContext) -> None:
    return None


def forwarder(obs: Observability) -> Any:
    async def forward(ctx: CallContext) -> dict[str, Any]:
        headers: dict[str, str] = {}
        meta: dict[str, Any] = {}
        obs.inject(headers, meta)
        return {"content": []}
    return forward


async def measure(obs: Observability | None, n: int) -> list[float]:
    if obs is None:  # the bare pipeline: the baseline
        pipeline = Pipeline(authorize=_allow, approve=_nothing, credential=_nothing,
                            forward=lambda ctx: _result(), record=_nothing)
    else:
        pipeline = obs.instrument(Pipeline(authorize=_allow, approve=_nothing, credential=_nothing,
                                           forward=forwarder(obs), record=obs.record))
    params = {"name": "inventory__get_stock", "arguments": {"sku": "widget"},
              "_meta": {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}}
    samples: list[float] = []
    for i in range(n):
        ctx = CallContext(method="tools/call", request_id=i, params=params, principal=PRINCIPAL,
                          upstream="inventory", tool=TOOL, session_id="s")
        start = time.perf_counter()
        if obs is None:
            await pipeline.run(ctx)
        else:
            with obs.request({}, "tools/call", params, i, principal=PRINCIPAL, session_id="s"):
                await pipeline.run(ctx)
        samples.append((time.perf_counter() - start) * 1e6)
        if i % 1000 == 0:
            await asyncio.sleep(0)  # let the decision log writer run, as it would between requests
    return samples


async def _result() -> dict[str, Any]:
    return {"content": []}


def report(name: str, samples: list[float], baseline: float | None) -> float:
    samples.sort()
    p50, p99 = statistics.median(samples), samples[int(len(samples) * 0.99)]
    extra = f"  (+{p50 - baseline:.1f} µs over bare)" if baseline is not None else ""
    print(f"{name:<34} p50 {p50:7.1f} µs   p99 {p99:7.1f} µs{extra}")
    return p50


async def main(n: int) -> None:
    base = {"upstreams": [{"name": "inventory", "url": "http://127.0.0.1:9/mcp"}],
            "decision_log": {"path": "/dev/null"}}
    bare = report("bare pipeline", await measure(None, n), None)
    off = Observability(parse_config(base, env={}), env={})
    await off.start()
    report("tracing off (log + metrics)", await measure(off, n), bare)
    await off.close()
    async with OtlpReceiver() as otlp:
        on = Observability(parse_config({**base, "telemetry": {"traces": {"endpoint": otlp.url}}}, env={}), env={})
        await on.start()
        report("tracing on (OTLP, batch)", await measure(on, n), bare)
        await on.close()
        print(f"spans received: {len(otlp.spans)}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000)
    asyncio.run(main(parser.parse_args().n))
