"""Benchmark identify() alone: µs per bearer-token identification (RS256, ES256, EdDSA), p50/p99.

Run: .venv/bin/python bench/bench_identify.py [--n 5000]
Each scenario verifies one token repeatedly through JwtIdentifier (JWKS file source, keys built once),
so the figures are header/claims parsing + signature + claims checks + Principal construction.
A fourth scenario adds a three-actor delegation chain (RS256).
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

from gateway.config.model import IdentityConfig
from gateway.identity import JwtIdentifier
from tests.support.tokens import TestIssuer, act_chain

RESOURCE = "http://127.0.0.1:8700"
AUDIENCE = f"{RESOURCE}/mcp"
AGENT = "spiffe://customs.demo/agent/shopper"


async def token_scenarios(tmp: Path) -> tuple[JwtIdentifier, dict[str, str]]:
    """A started identifier for a fresh test issuer, and one token per scenario (shared with the cold bench)."""
    issuer = TestIssuer(tmp)
    config = IdentityConfig.model_validate({"mode": "jwt", "issuers": [issuer.config()]})
    identifier = JwtIdentifier(config, {}, RESOURCE, None)
    await identifier.start()
    chain = act_chain("spiffe://customs.demo/agent/a", "spiffe://customs.demo/agent/b",
                      "spiffe://customs.demo/agent/c")
    scenarios = {alg: issuer.mint(AGENT, aud=AUDIENCE, alg=alg, tenant="acme", ttl=3600)
                 for alg in ("RS256", "ES256", "EdDSA")}
    scenarios["RS256+chain3"] = issuer.mint(AGENT, aud=AUDIENCE, tenant="acme", act=chain, ttl=3600)
    return identifier, scenarios


async def run(n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        identifier, scenarios = await token_scenarios(Path(tmp))
        print(f"{'scenario':<14} {'p50 µs':>8} {'p99 µs':>8} {'mean µs':>8}  (n={n})")
        for name, token in scenarios.items():
            headers = {"Authorization": f"Bearer {token}"}
            for _ in range(200):  # warm-up
                await identifier.identify(headers, None)
            samples = []
            for _ in range(n):
                start = time.perf_counter()
                await identifier.identify(headers, None)
                samples.append((time.perf_counter() - start) * 1e6)
            samples.sort()
            print(f"{name:<14} {samples[len(samples) // 2]:8.1f} {samples[int(len(samples) * 0.99)]:8.1f} "
                  f"{statistics.fmean(samples):8.1f}")
        await identifier.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=5000)
    asyncio.run(run(parser.parse_args().n))


if __name__ == "__main__":
    main()
