"""Benchmark identify() on a token's first use (signature verified) next to a repeated use (verified-token cache).

Run: .venv/bin/python bench/bench_identify_cold.py [--n 3000]
bench_identify.py sends the same token again and again, so after its warm-up it measures the identifier's
verified-token cache. An agent does send one token on every call, so that is the steady state; this script
adds the cost of the first call with a new token (or after the cache entry lapsed): header and claims
parsing, the signature check and Principal construction, by emptying the cache before each timed call.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_identify import token_scenarios

from gateway.identity import JwtIdentifier


def cut(samples: list[float], q: float) -> float:
    return sorted(samples)[min(len(samples) - 1, int(len(samples) * q))]


async def timed(identifier: JwtIdentifier, headers: dict[str, str], n: int, cold: bool) -> list[float]:
    samples = []
    for _ in range(n):
        if cold:
            identifier._cache.clear()  # private on purpose: the first-use path without minting n tokens
        start = time.perf_counter()
        await identifier.identify(headers, None)
        samples.append((time.perf_counter() - start) * 1e6)
    return samples


async def run(n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        identifier, scenarios = await token_scenarios(Path(tmp))
        print(f"{'scenario':<14} {'first use p50/p99 µs':>22} {'cached p50/p99 µs':>20}  (n={n})")
        for name, token in scenarios.items():
            headers = {"Authorization": f"Bearer {token}"}
            await timed(identifier, headers, 200, cold=True)  # warm-up
            cold = await timed(identifier, headers, n, cold=True)
            warm = await timed(identifier, headers, n, cold=False)
            print(f"{name:<14} {cut(cold, 0.5):10.1f} / {cut(cold, 0.99):7.1f}   {cut(warm, 0.5):8.1f} / "
                  f"{cut(warm, 0.99):7.1f}   (mean first use {statistics.fmean(cold):.1f})")
        await identifier.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=3000)
    asyncio.run(run(parser.parse_args().n))


if __name__ == "__main__":
    main()
