"""Benchmark: N held calls waiting at once (memory and Redis stores) — memory per held call, event-loop lag
while they wait, and approval-to-result latency p50/p99.

    .venv/bin/python bench/bench_approvals.py [--held 1000] [--no-redis]

Redis runs as a private redis-server child on a free port (never the system one).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.approvals.memory import MemoryApprovalStore
from gateway.approvals.redis import RedisApprovalStore
from gateway.approvals.stage import ApproveStage
from gateway.config.model import ApprovalsConfig
from gateway.context import CallContext, Decision, Principal, ToolInfo


def _ctx(n: int, notify: Any) -> CallContext:
    principal = Principal(id=f"agent-{n % 50}", issuer="https://idp.bench", subject=f"agent-{n % 50}",
                          attributes={"tenant": "acme"})
    return CallContext(method="tools/call", request_id=n, params={"name": "pay", "arguments": {"n": n, "amount": 10}},
                       principal=principal, upstream="payments", tool=ToolInfo("payments", "pay"),
                       decision=Decision("approval_required", ("bench",)), notify=notify, progress_token=n,
                       cancelled=asyncio.Event())


async def _lag_probe(samples: list[float], stop: asyncio.Event, interval: float = 0.01) -> None:
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        start = loop.time()
        await asyncio.sleep(interval)
        samples.append(loop.time() - start - interval)


def _rss() -> int:
    """Resident set size in bytes (Linux /proc)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run(store: Any, held: int, label: str) -> None:
    stage = ApproveStage(store, ApprovalsConfig(keepalive_s=5.0, wait_s=600))
    finished: dict[str, float] = {}
    sent = 0

    async def notify(message: dict[str, Any]) -> None:
        nonlocal sent
        sent += 1

    async def one(n: int) -> None:
        ctx = _ctx(n, notify)
        await stage(ctx)
        assert ctx.approval is not None
        finished[ctx.approval.id] = time.perf_counter()

    gc.collect()
    base = _rss()
    t0 = time.perf_counter()
    tasks = [asyncio.create_task(one(n)) for n in range(held)]
    while len(await store.list(["pending"], held + 10)) < held:
        await asyncio.sleep(0.2)
    print(f"[{label}]   {held} calls held after {time.perf_counter() - t0:.1f} s", flush=True)
    gc.collect()
    per_call = (_rss() - base) / held

    lag: list[float] = []
    stop = asyncio.Event()
    probe = asyncio.create_task(_lag_probe(lag, stop))
    await asyncio.sleep(2.0)  # measure lag while all calls are held
    stop.set()
    await probe

    pending = await store.list(["pending"], held + 10)
    print(f"[{label}]   lag measured; approving", flush=True)
    latency: list[float] = []
    sample = pending[: min(200, len(pending))]
    for item in sample:  # one at a time while the others keep waiting: approval -> the held call returns
        decided = time.perf_counter()
        await store.decide(item.id, "bench-approver", "approved", None)
        while item.id not in finished:
            await asyncio.sleep(0)
        latency.append((finished[item.id] - decided) * 1000)
    started = time.perf_counter()
    for item in pending[len(sample):]:
        await store.decide(item.id, "bench-approver", "approved", None)
    await asyncio.gather(*tasks)
    total = time.perf_counter() - started
    print(f"[{label}] held calls: {held}")
    print(f"[{label}]   memory per held call (RSS delta: task, stage, store item, waiter): {per_call / 1024:.1f} KiB")
    print(f"[{label}]   event-loop lag while held (10 ms probe): p50 {statistics.median(lag) * 1000:.2f} ms, "
          f"p99 {_pct(lag, 0.99) * 1000:.2f} ms, max {max(lag) * 1000:.2f} ms")
    print(f"[{label}]   approval→result latency: p50 {statistics.median(latency):.2f} ms, "
          f"p99 {_pct(latency, 0.99):.2f} ms (one at a time, {len(latency)} samples); "
          f"remaining {held - len(latency)} approved back-to-back and returned in {total:.2f} s")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--held", type=int, default=1000)
    parser.add_argument("--no-redis", action="store_true")
    parser.add_argument("--only-redis", action="store_true")
    args = parser.parse_args()
    if not args.only_redis:
        await run(MemoryApprovalStore(), args.held, "memory")
    if args.no_redis:
        return
    from tests.support.redis import RedisServer

    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp))
        server.start()
        store = RedisApprovalStore.from_url(server.url, "bench:", max_connections=64)
        await store.start()
        try:
            await run(store, args.held, "redis")
        finally:
            await store.close()
            server.kill()


if __name__ == "__main__":
    asyncio.run(main())
