"""Benchmark: the stateful-context step (`context.task`) per call — in-memory versus Redis.

    .venv/bin/python bench/bench_taskstate.py [--n 5000] [--concurrency 32] [--no-redis]

Times `TaskStage` alone (gateway/taskstate.py): resolving the task and reserving its facts before
the decision (one Lua script call = one Redis round trip), for a call that is forwarded (keeps its
reservation) and for one that is not (the reservation is given back: a second round trip). A bare
Redis PING is timed for reference, and a concurrent run shows throughput with many tasks at once.
Redis runs as a private redis-server child on a free port (never the system one).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.config.model import UpstreamConfig
from gateway.context import CallContext, Principal, ToolInfo
from gateway.taskstate import MemoryFacts, RedisFacts, TaskStage

PRINCIPAL = Principal(id="spiffe://acme/agent-1", issuer="https://idp", subject="agent-1",
                      attributes={"tenant": "acme"})
UPSTREAM = UpstreamConfig.model_validate({"name": "payments", "url": "http://127.0.0.1:9002/mcp",
                                          "tools": {"pay": {"sum_args": ["amount"]}}})


def _ctx(task: str) -> CallContext:
    return CallContext(method="tools/call", request_id=1,
                       params={"name": "pay", "arguments": {"account": "acme-1", "amount": 5}},
                       principal=PRINCIPAL, upstream="payments", tool=ToolInfo("payments", "pay"), task_id=task)


def _stage(store: Any) -> TaskStage:
    return TaskStage(store, {"payments": UPSTREAM}, lambda ctx: "unused")


async def _forwarded(stage: TaskStage, task: str) -> None:
    ctx = _ctx(task)
    await stage(ctx)
    ctx.extra["forwarded"] = True
    await stage.release(ctx)  # keeps the reservation: no store call


async def _not_forwarded(stage: TaskStage, task: str) -> None:
    ctx = _ctx(task)
    await stage(ctx)
    await stage.release(ctx)  # denied / held: the reservation goes back


async def _samples(op: Callable[[int], Awaitable[None]], n: int) -> list[float]:
    for i in range(min(200, n)):  # warm-up: script load, connection pool
        await op(i)
    out = []
    for i in range(n):
        start = time.perf_counter()
        await op(i)
        out.append((time.perf_counter() - start) * 1e6)
    return out


def _line(label: str, samples: list[float]) -> str:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return f"  {label:34s} p50 {statistics.median(ordered):8.1f} µs   p99 {p99:8.1f} µs"


async def _concurrent(stage: TaskStage, n: int, concurrency: int) -> float:
    """Calls per second with `concurrency` callers, each on its own task."""
    per_caller = max(1, n // concurrency)

    async def caller(c: int) -> None:
        for _ in range(per_caller):
            await _forwarded(stage, f"conc-{c}")

    start = time.perf_counter()
    await asyncio.gather(*(caller(c) for c in range(concurrency)))
    return per_caller * concurrency / (time.perf_counter() - start)


async def run(name: str, store: Any, n: int, concurrency: int, ping: Callable[[], Awaitable[Any]] | None) -> None:
    stage = _stage(store)
    print(f"{name}:")
    if ping is not None:
        print(_line("bare PING (one round trip)", await _samples(lambda i: ping(), n)))
    print(_line("forwarded call (reserve)", await _samples(lambda i: _forwarded(stage, f"t-{i % 100}"), n)))
    print(_line("not forwarded (reserve + release)", await _samples(lambda i: _not_forwarded(stage, "t-x"), n)))
    label = f"concurrent, {concurrency} tasks"
    print(f"  {label:34s} {await _concurrent(stage, n, concurrency):8.0f} calls/s")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--no-redis", action="store_true")
    args = parser.parse_args()
    print(f"task-state benchmark: {args.n} calls per figure, p50/p99 in microseconds")
    await run("memory", MemoryFacts(), args.n, args.concurrency, None)
    if args.no_redis:
        return
    import redis.asyncio as aioredis

    from tests.support.redis import RedisServer

    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp))
        server.start()
        client = aioredis.from_url(server.url, max_connections=64)
        try:
            await run("redis (one redis-server on 127.0.0.1)", RedisFacts(client, "bench:"), args.n,
                      args.concurrency, client.ping)
        finally:
            await client.aclose()
            server.kill()


if __name__ == "__main__":
    asyncio.run(main())
