"""Gateway variants in one run: bare vs JWT + shipped Cedar policies vs tracing on, against one forwarder baseline.

Run: .venv/bin/python bench/bench_gateway_variants.py [--duration 10] [--connections 1,50] [--rounds 1]
     [--json out.json]

All targets front the same echo upstream (bench/echo_upstream.py), each a child process on 127.0.0.1:
  forwarder  bench/minimal_forwarder.py (the ~30-line aiohttp pass-through baseline)
  bare       gateway: anonymous identity, allow-all Cedar policy (what bench_core.py measures)
  open       gateway: anonymous identity and no `policies` section: the transparent proxy issue 2 measures ("the
             gateway with no policy"; the gateway evaluates its own allow-all policy, anonymous-allow-all)
  jwt        gateway: JWT identity (RS256 key of a TestIssuer, JWKS file; one token with a `tenant` claim,
             sent as `Authorization: Bearer` by wrk) + the SHIPPED policies (policies/; the echo tool is
             read-only, so `reads-allowed` permits it)
  traced     bare + `telemetry.traces.endpoint` → bench/otlp_sink.py (BatchSpanProcessor really exports)
  full       jwt + tracing (what a production deployment pays)
Every gateway writes its decision log to a file (one line per call). Targets are measured one after
another (never two loads at once); --rounds N repeats the whole sequence and reports the median per
figure, which evens out drift on a shared machine. Prints the ratios issues 3 and 6 ask for, and for each
saturated load the CPU time per call of the target's process (and of its children: the decision-log writer,
a traced gateway's span exporter), read from /proc: while a target is CPU-bound, its throughput ≈ 1 / CPU per call.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import aiohttp
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_core import (
    REPO,
    Children,
    Result,
    Target,
    _free_port,
    _url_of,
    measure,
    parse_paced,
    permissive_policy_dir,
    pin_others,
)

from tests.support.tokens import TestIssuer

ECHO_ARGS = {"text": "hi"}
VARIANTS = ("bare", "jwt", "traced", "full", "open")
LABELS = (("jwt", "JWT+Cedar"), ("traced", "tracing on"), ("full", "JWT+Cedar+tracing"),
          ("open", "no policy"))  # variants vs bare


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def gateway_config(port: int, echo: str, workdir: Path, name: str, *, identity: dict[str, Any],
                   policies: Path | None, traces: str | None) -> Path:
    config: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "port": port}, "upstreams": [{"name": "echo", "url": echo}],
        "identity": identity, **({"policies": {"dir": str(policies)}} if policies is not None else {}),
        "decision_log": {"path": str(workdir / f"decisions-{name}.jsonl")},
        "signing": {"key_dir": str(workdir / f"keys-{name}")},
    }
    if traces is not None:
        config["telemetry"] = {"traces": {"endpoint": traces}}
    path = workdir / f"customs-{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


async def start_all(children: Children, workdir: Path, variants: list[str]) -> tuple[list[Target], str]:
    py = sys.executable
    echo = _url_of(await children.start("echo", [py, str(REPO / "bench/echo_upstream.py")]))
    forwarder = _url_of(await children.start("forwarder", [py, str(REPO / "bench/minimal_forwarder.py"),
                                                           "--upstream", echo]))
    sink = _url_of(await children.start("otlp-sink", [py, str(REPO / "bench/otlp_sink.py")]))
    targets = [Target("forwarder", forwarder, "echo", ECHO_ARGS, pid=children.pids["forwarder"])]
    variant = Variants(workdir, echo, sink)
    for name in variants:
        path, target = variant.setup(name)
        await children.start(f"gateway-{name}", [py, "-m", "gateway", "serve", "--config", str(path),
                                                 "--log-level", "warning"])
        targets.append(replace(target, pid=children.pids[f"gateway-{name}"]))
    return targets, sink


class Variants:
    """Config file and load target of each gateway variant, in front of one echo upstream and one OTLP sink."""

    def __init__(self, workdir: Path, echo: str, sink: str) -> None:
        self._workdir, self._echo, self._sink = workdir, echo, sink
        self._issuer = TestIssuer(workdir, algorithms=("RS256",))
        self._allow_all = permissive_policy_dir(workdir)

    def setup(self, name: str) -> tuple[Path, Target]:
        port = _free_port()
        aud = f"http://127.0.0.1:{port}/mcp"
        jwt = name in ("jwt", "full")
        identity = {"mode": "jwt", "issuers": [self._issuer.config(audience=aud)]} if jwt else {"mode": "anonymous"}
        path = gateway_config(port, self._echo, self._workdir, name, identity=identity,
                              policies=REPO / "policies" if jwt else None if name == "open" else self._allow_all,
                              traces=self._sink if name in ("traced", "full") else None)
        headers: tuple[tuple[str, str], ...] = ()
        if jwt:
            token = self._issuer.mint("spiffe://customs.demo/agent/bench", aud=aud, tenant="acme", ttl=3600)
            headers = (("Authorization", f"Bearer {token}"),)
        return path, Target(name, f"http://127.0.0.1:{port}/mcp/echo", "echo", ECHO_ARGS, headers)


def median_results(rounds: list[list[Result]]) -> list[Result]:
    """Per (target, connections): the median of each figure over the rounds."""
    keyed: dict[tuple[str, int, int], list[Result]] = {}
    for results in rounds:
        for r in results:
            keyed.setdefault((r.target, r.connections, r.pace_ms), []).append(r)
    return [Result(t, c, statistics.median(x.rps for x in rs), statistics.median(x.p50_ms for x in rs),
                   statistics.median(x.p99_ms for x in rs), sum(x.requests for x in rs), sum(x.errors for x in rs),
                   rs[0].generator, pace, cpu_us_per_call=median_of_known(x.cpu_us_per_call for x in rs),
                   child_cpu_us_per_call=median_of_known(x.child_cpu_us_per_call for x in rs))
            for (t, c, pace), rs in keyed.items()]


def median_of_known(values: Iterable[float | None]) -> float | None:
    """The median of the values that are not None; None if there are none."""
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def ratios(results: list[Result]) -> dict[str, float]:
    out = saturated_ratios([r for r in results if not r.pace_ms])
    by = {(r.target, r.load): r for r in results if r.pace_ms}
    for (name, load), r in sorted(by.items()):
        fwd = by.get(("forwarder", load))
        if name != "forwarder" and fwd is not None:
            # Below saturation the p50 difference is the time the gateway adds to a call, not queueing.
            out[f"{name} p50 - forwarder p50 ms {load}"] = r.p50_ms - fwd.p50_ms
    return out


def saturated_ratios(results: list[Result]) -> dict[str, float]:
    by = {(r.target, r.connections): r for r in results}
    out: dict[str, float] = {}
    for c in sorted({r.connections for r in results}):
        fwd, bare = by.get(("forwarder", c)), by.get(("bare", c))
        if bare is None:
            continue
        for name, label in LABELS:
            if (name, c) in by:
                r = by[(name, c)]
                out[f"{label} / bare throughput c={c}"] = r.rps / bare.rps
                out[f"{label} p50 - bare p50 ms c={c}"] = r.p50_ms - bare.p50_ms
        if fwd is not None:
            for name in ("bare", *(n for n in ("jwt", "traced", "full", "open") if (n, c) in by)):
                r = by[(name, c)]
                out[f"{name} / forwarder throughput c={c}"] = r.rps / fwd.rps
                out[f"{name} p50 - forwarder p50 ms c={c}"] = r.p50_ms - fwd.p50_ms
        out.update(cpu_ratios(by, c))
    return out


def cpu_ratios(by: dict[tuple[str, int], Result], c: int) -> dict[str, float]:
    """CPU per call at c connections: each variant over bare (main process; a traced variant also with its
    exporter child), and the forwarder over each gateway (like a throughput ratio: higher is better)."""
    out: dict[str, float] = {}
    bare, fwd = by[("bare", c)], by.get(("forwarder", c))
    if not bare.cpu_us_per_call:
        return out
    for name, label in LABELS:
        r = by.get((name, c))
        if r is None or r.cpu_us_per_call is None:
            continue
        out[f"{label} / bare CPU per call c={c}"] = r.cpu_us_per_call / bare.cpu_us_per_call
        if r.child_cpu_us_per_call is not None:  # its children: decision-log writer (and a traced one's exporter)
            out[f"{label} / bare CPU per call incl. exporter c={c}"] = total_cpu(r) / total_cpu(bare)
    if fwd is not None and fwd.cpu_us_per_call is not None:
        for name in ("bare", *(n for n, _ in LABELS)):
            r = by.get((name, c))
            if r is not None and r.cpu_us_per_call:
                out[f"forwarder / {name} CPU per call c={c}"] = fwd.cpu_us_per_call / r.cpu_us_per_call
    return out


def total_cpu(r: Result) -> float:
    """CPU µs per call of the target's process and its children together."""
    return (r.cpu_us_per_call or 0.0) + (r.child_cpu_us_per_call or 0.0)


def count_lines(path: Path) -> int:
    return sum(1 for _ in path.open()) if path.exists() else 0


async def measure_round(targets: list[Target], args: argparse.Namespace, workdir: Path, use_wrk: bool) -> list[Result]:
    """One round: every target at every load. With --auto-pace C the paced load is chosen in the first round
    (and kept, so rounds compare): C connections offering half what the slowest target served at C
    saturated connections."""
    if not args.auto_pace:
        return [r for t in targets for r in await measure(t, args, workdir, use_wrk)]
    saturated = argparse.Namespace(**{**vars(args), "paced": []})
    results = [r for t in targets for r in await measure(t, saturated, workdir, use_wrk)]
    if not getattr(args, "auto_pace_ms", 0):
        slowest = min(r.rps for r in results if r.connections == args.auto_pace)
        args.auto_pace_ms = max(1, round(2 * args.auto_pace * 1000 / slowest))  # C / pace = slowest / 2 a second
        print(f"  auto pace: {args.auto_pace} connections x {args.auto_pace_ms} ms "
              f"(offered ~{slowest / 2:.0f} calls/s)", flush=True)
    pace_ms = args.auto_pace_ms
    paced = argparse.Namespace(**{**vars(args), "connections": [], "paced": [(args.auto_pace, pace_ms)], "warmup": 0})
    return results + [r for t in targets for r in await measure(t, paced, workdir, use_wrk)]


async def sink_stats(sink: str) -> dict[str, int]:
    async with aiohttp.ClientSession() as http, http.get(f"{sink}/stats") as response:
        stats: dict[str, int] = await response.json()
        return stats


async def main_async(args: argparse.Namespace) -> int:
    use_wrk = args.generator == "wrk" or (args.generator == "auto" and shutil.which("wrk") is not None)
    print(f"load generator: {'wrk' if use_wrk else 'python aiohttp'}; {args.duration:g} s per target and "
          f"connection count {args.connections}; {args.rounds} round(s); {os.cpu_count()} CPU(s); "
          f"load average before: {load_average()}", flush=True)
    rounds: list[list[Result]] = []
    loads: list[str] = []
    if args.pin:
        pin_others()
    with tempfile.TemporaryDirectory(prefix="bench-variants-") as tmp:
        workdir = Path(tmp)
        children = Children(workdir)
        try:
            targets, sink = await start_all(children, workdir, args.variants)
            for number in range(args.rounds):
                print(f"round {number + 1} (load average {load_average()})", flush=True)
                rounds.append(await measure_round(targets, args, workdir, use_wrk))
                loads.append(load_average())
            exported = await sink_stats(sink)
            decisions = {name: count_lines(workdir / f"decisions-{name}.jsonl") for name in args.variants}
        finally:
            children.close()
    results = median_results(rounds)
    figures = ratios(results)
    print(f"\nload average after each round: {'; '.join(loads)}")
    print("median over rounds:" if args.rounds > 1 else "results:")
    for r in results:
        print(f"  {r.target:<10} {r.load:<17} {r.rps:>9.0f} req/s  p50 {r.p50_ms:7.3f} ms  "
              f"p99 {r.p99_ms:7.3f} ms  errors {r.errors}{r.cpu_text}")
    print("ratios:")
    for key, value in figures.items():
        print(f"  {key:<58} {value:8.3f}")
    print(f"decision-log lines per gateway: {decisions}")
    print(f"OTLP sink received: {exported}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "rounds": [[asdict(r) for r in rs] for rs in rounds], "median": [asdict(r) for r in results],
            "ratios": figures, "decisions_logged": decisions, "otlp_sink": exported, "load_average": loads},
            indent=2))
    traced = [v for v in args.variants if v in ("traced", "full")]
    failed = any(r.errors for rs in rounds for r in rs) or (traced and exported.get("spans", 0) == 0)
    return 1 if failed else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per target per connection count")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up per target (0: none)")
    parser.add_argument("--connections", type=lambda s: [int(x) for x in s.split(",")], default=[1, 50])
    parser.add_argument("--paced", type=parse_paced, default=[(50, 40)],
                        help="paced loads C:MS,... (C connections, each waiting MS ms between calls): the p50 a "
                             "call gains below saturation")
    parser.add_argument("--auto-pace", type=int, default=0, metavar="C",
                        help="instead of --paced: C paced connections offering half the slowest target's "
                             "saturated throughput at C connections (chosen each round; needs C in --connections)")
    parser.add_argument("--rounds", type=int, default=1, help="repeat the whole sequence; report medians")
    parser.add_argument("--variants", type=lambda s: s.split(","), default=list(VARIANTS),
                        help=f"comma list of {', '.join(VARIANTS)}")
    parser.add_argument("--generator", choices=["auto", "wrk", "python"], default="auto")
    parser.add_argument("--pin", action="store_true",
                        help="each target alone on CPU 0 while measured; its children, the upstream, the OTLP sink "
                             "and the load generator on the last CPU (steadier figures on a shared machine)")
    parser.add_argument("--json", help="write results, medians and ratios to this file")
    args = parser.parse_args()
    if args.auto_pace and args.auto_pace not in args.connections:
        parser.error("--auto-pace C needs C among --connections")
    unknown = set(args.variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants: {', '.join(sorted(unknown))}")
    sys.exit(asyncio.run(main_async(args)))


if __name__ == "__main__":
    main()
