"""Benchmark: microseconds per credential for a fresh mint (EdDSA, ES256) versus a per-task cache hit.

Run: .venv/bin/python bench/bench_credentials.py [iterations]
Uses the in-memory revocation store, so the figures are signing + bookkeeping (add ~110 µs per
fresh mint for one Redis round trip when `store: redis`). Also times introspection of a token.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

from gateway.config import parse_config
from gateway.context import Actor, Principal
from gateway.credentials import CredentialService


def _config(key_dir: Path, algorithm: str):  # type: ignore[no-untyped-def]
    return parse_config({
        "listen": {"public_url": "http://127.0.0.1:8700"},
        "upstreams": [{"name": "payments", "url": "http://127.0.0.1:9002/mcp",
                       "credentials": {"mode": "minted", "ttl_s": 60, "narrow_to_args": ["account"]}}],
        "signing": {"key_dir": str(key_dir), "algorithm": algorithm}})


async def _run(algorithm: str, n: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        service = CredentialService(_config(Path(tmp), algorithm))
        await service.start()
        principal = Principal(id="spiffe://acme/agent-1", issuer="https://idp", subject="agent-1",
                              chain=(Actor("spiffe://acme/orchestrator"),))
        upstream = service.stage.upstreams["payments"]
        args = {"account": "acme-1", "amount": 5}
        mint = service.minter.mint

        async def timed(fresh: bool) -> list[float]:
            samples = []
            for i in range(n):
                start = time.perf_counter()
                await mint(principal, upstream, ["pay"], args, f"task-{i}" if fresh else "task", cache=not fresh)
                samples.append((time.perf_counter() - start) * 1e6)
            return samples

        await timed(False)  # warm
        fresh, cached = await timed(True), await timed(False)
        token, _ = await mint(principal, upstream, ["pay"], args, "task")
        introspect = []
        for _ in range(n):
            start = time.perf_counter()
            await service.introspector.introspect(token)
            introspect.append((time.perf_counter() - start) * 1e6)
        await service.close()
    return {"mint": statistics.median(fresh), "cache_hit": statistics.median(cached),
            "introspect": statistics.median(introspect)}


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    print(f"credentials benchmark, {n} iterations each, p50 in microseconds")
    for algorithm in ("EdDSA", "ES256"):
        figures = asyncio.run(_run(algorithm, n))
        print(f"  {algorithm:6s} mint {figures['mint']:8.1f} µs   cache hit {figures['cache_hit']:6.1f} µs"
              f"   introspect {figures['introspect']:8.1f} µs")


if __name__ == "__main__":
    main()
