"""Benchmark the authorize stage alone on the shipped policies: decisions/second and µs p50/p99.

Run: .venv/bin/python bench/bench_authorize.py [--n 20000]
Scenarios: an allowed read, an approval-required payment (two evaluations), a two-actor chain,
and a denied restricted read (through the stage, which raises); each once with `context.task`
changing on every call (as a task's calls do: Cedar evaluates every time) and once with identical
inputs repeated (the engine's decision cache answers).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from pathlib import Path

from gateway.authz.engine import PolicyEngine
from gateway.authz.stage import AuthorizeStage
from gateway.config.model import PoliciesConfig
from gateway.context import Actor, CallContext, Principal, ToolInfo
from gateway.errors import GatewayError

POLICIES = Path(__file__).resolve().parents[1] / "policies"
READER = Principal("spiffe://customs.demo/agent/reader", "iss", "reader", {"tenant": "acme", "owner": "alice"})
CHAINED = Principal("spiffe://customs.demo/agent/reader", "iss", "reader", {"tenant": "acme"},
                    chain=(Actor("spiffe://customs.demo/agent/orchestrator", {"tenant": "acme", "trust": "high"}),))
GET = ToolInfo("inventory", "get_stock", read_only=True, destructive=False, idempotent=True, open_world=False)
PAY = ToolInfo("payments", "pay", read_only=False, sensitivity="confidential")
SECRET = ToolInfo("hr", "salaries", read_only=True, destructive=False, sensitivity="restricted")

SCENARIOS = {
    "allow read": (READER, GET, {"sku": "widget"}),
    "approval_required pay": (READER, PAY, {"account": "acme", "amount": 50, "memo": "invoice 7"}),
    "allow read, chain of 1": (CHAINED, GET, {"sku": "widget"}),
    "deny restricted": (READER, SECRET, {}),
}


async def measure(stage: AuthorizeStage, principal: Principal, tool: ToolInfo, args: dict[str, object],
                  n: int, *, fresh: bool) -> list[float]:
    samples: list[float] = []
    for i in range(n):
        ctx = CallContext(method="tools/call", request_id=1, params={"name": tool.name, "arguments": args},
                          principal=principal, tool=tool)
        if fresh:  # what a task's calls look like: context.task changes every call, so Cedar runs every time
            ctx.extra["task"] = {"calls": i, "totals": {"amount": i}, "seen_tools": [tool.cedar_id]}
        started = time.perf_counter()
        try:
            await stage(ctx)
        except GatewayError:
            pass
        samples.append((time.perf_counter() - started) * 1e6)
    return samples


async def main(n: int) -> None:
    engine = PolicyEngine(PoliciesConfig(dir=POLICIES, watch=False), "dev")
    engine.load_sync()
    stage = AuthorizeStage(engine)
    print(f"policies {engine.version} ({engine.status()['policies']} policies), {n} decisions per scenario")
    for fresh in (True, False):
        print("context.task new on every call (Cedar evaluates each time):" if fresh else
              "identical inputs repeated (the engine's decision cache answers):")
        for name, (principal, tool, args) in SCENARIOS.items():
            await measure(stage, principal, tool, args, min(n, 500), fresh=fresh)  # warm-up
            samples = await measure(stage, principal, tool, args, n, fresh=fresh)
            samples.sort()
            total_s = sum(samples) / 1e6
            p50 = statistics.median(samples)
            p99 = samples[int(len(samples) * 0.99) - 1]
            print(f"  {name:26s} {n / total_s:9.0f} decisions/s   p50 {p50:7.1f} µs   p99 {p99:7.1f} µs")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=20000)
    asyncio.run(main(parser.parse_args().n))
