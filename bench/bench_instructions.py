"""CPU instructions per proxied call, counted by valgrind's callgrind: forwarder vs gateway variants, in one run.

Run: .venv/bin/python bench/bench_instructions.py [--calls 500] [--warmup 300] [--clients 1]
     [--variants bare,traced,jwt,full] [--floor] [--json out.json]

Wall-clock figures on a shared 2-core machine move by ±15 % from run to run; instruction counts do
not (the same build and inputs give the same count within ~0.5 %, whatever else the machine does), so
this is the benchmark to judge a change to the per-call path by. Each target (the minimal forwarder,
then each gateway variant of bench_gateway_variants.py) runs alone under
`valgrind --tool=callgrind` (children such as the span exporter are not counted) in front of the
same native echo upstream; `--clients` concurrent clients (default one) make `--warmup` tools/calls,
the counters are zeroed (`callgrind_control -z`), they make `--calls` more and the counters are dumped.
Under callgrind a call takes ~50 times longer, so work batched by time (decision-log writes every
50 ms, span shipping every 200 ms) is shared by ~50 times fewer calls than in real operation: counts
overstate it; `--stretch-batching 50` multiplies those intervals in the gateway by 50 (a module-constant patch
made before it starts), so batches hold about as many calls as in real operation and the counts no longer
depend on how busy the machine is (a loaded machine slows callgrind further: fewer calls per batch). Printed:
instructions per call, and the ratios the issues ask about, as instructions: forwarder / gateway
(the throughput ratio a CPU-bound gateway would reach against a CPU-bound forwarder) and the cost of
tracing over bare. Needs valgrind (`callgrind_control` comes with it); takes a few minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_core import REPO, Children, Target, _url_of, open_session, sanity_call
from bench_gateway_variants import ECHO_ARGS, VARIANTS, Variants

# `python -m gateway` with the time-based batching intervals multiplied by k (--stretch-batching).
STRETCHED = ("import runpy, gateway.telemetry.span_export as s, gateway.telemetry.decision_log as d; "
             "s.BATCH_INTERVAL_S *= {k}; d.FLUSH_INTERVAL_S *= {k}; "
             "runpy.run_module('gateway', run_name='__main__', alter_sys=True)")


async def calls(target: Target, session: str | None, n: int, clients: int = 1) -> None:
    """`n` tools/calls from `clients` concurrent clients, each calling in sequence; every one must succeed
    (a fast error would be counted as a call)."""
    headers = target.request_headers(session)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients)) as http:
        async def client(first: int) -> None:
            for i in range(first, n, clients):
                body = {"jsonrpc": "2.0", "id": f"c{i}", "method": "tools/call",
                        "params": {"name": target.tool, "arguments": target.arguments}}
                async with http.post(target.url, json=body, headers=headers) as response:
                    answer = await response.read()
                    if response.status != 200 or b'"isError":false' not in answer.replace(b" ", b""):
                        raise RuntimeError(f"{target.name}: call {i} failed: HTTP {response.status} {answer[:200]!r}")

        await asyncio.gather(*(client(c) for c in range(clients)))


def dumped_instructions(out_dir: Path, pid: int) -> int:
    dumps = sorted(out_dir.glob(f"cg.{pid}.*"))
    if not dumps:
        raise RuntimeError(f"no callgrind dump for {pid} in {out_dir}")
    text = dumps[-1].read_text(errors="replace")
    found = re.search(r"^(?:summary|totals):\s+(\d+)", text, re.MULTILINE)
    if found is None:
        raise RuntimeError(f"no instruction total in {dumps[-1]}")
    return int(found[1])


async def measure(children: Children, name: str, cmd: list[str], target_of: Any, args: argparse.Namespace,
                  out_dir: Path) -> int:
    grind = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out_dir}/cg.%p", "--trace-children=no"]
    line = await children.start(name, grind + cmd, timeout_s=300)
    proc = children.procs[-1]
    target: Target = target_of(_url_of(line))
    async with aiohttp.ClientSession() as http:
        session = await open_session(http, target)
        await sanity_call(http, target, session)
    await calls(target, session, args.warmup, args.clients)  # caches, pools, allocator, lazily built state
    subprocess.run(["callgrind_control", "-z", str(proc.pid)], check=True, capture_output=True)
    await calls(target, session, args.calls, args.clients)
    subprocess.run(["callgrind_control", "-d", str(proc.pid)], check=True, capture_output=True)
    proc.terminate()
    proc.wait(60)
    per_call = dumped_instructions(out_dir, proc.pid) // int(args.calls)
    print(f"  {name:<10} {per_call:>10,} instructions per call", flush=True)
    return per_call


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, int]:
    py = sys.executable
    children = Children(workdir)
    out_dir = workdir / "callgrind"
    out_dir.mkdir()
    try:
        echo = _url_of(await children.start("echo", [py, str(REPO / "bench/echo_upstream.py")]))
        sink = _url_of(await children.start("otlp-sink", [py, str(REPO / "bench/otlp_sink.py")]))
        counts = {"forwarder": await measure(
            children, "forwarder", [py, str(REPO / "bench/minimal_forwarder.py"), "--upstream", echo],
            lambda url: Target("forwarder", url, "echo", ECHO_ARGS), args, out_dir)}
        if args.floor:  # the forwarder plus parsing, id remapping and a timeout: what any MCP-aware proxy does
            counts["floor"] = await measure(
                children, "floor", [py, str(REPO / "bench/parsing_forwarder.py"), "--upstream", echo],
                lambda url: Target("floor", url, "echo", ECHO_ARGS), args, out_dir)
        variant = Variants(workdir, echo, sink)
        gateway = [py, "-m", "gateway"] if args.stretch_batching == 1 else [py, "-c", STRETCHED.format(
            k=args.stretch_batching)]
        for name in args.variants:
            path, target = variant.setup(name)
            counts[name] = await measure(
                children, name, [*gateway, "serve", "--config", str(path), "--log-level", "warning"],
                lambda _line, target=target: target, args, out_dir)
        return counts
    finally:
        children.close()


def report(counts: dict[str, int]) -> dict[str, float]:
    ratios: dict[str, float] = {}
    for name, count in counts.items():
        if name != "forwarder":
            ratios[f"forwarder / {name} instructions (throughput-equivalent)"] = counts["forwarder"] / count
    if "floor" in counts:
        for name, count in counts.items():
            if name not in ("forwarder", "floor"):
                ratios[f"floor / {name} instructions"] = counts["floor"] / count
    for traced, plain in (("traced", "bare"), ("full", "jwt")):
        if traced in counts and plain in counts:
            ratios[f"tracing cost: {traced} / {plain} instructions - 1"] = counts[traced] / counts[plain] - 1
    print("ratios:")
    for key, value in ratios.items():
        print(f"  {key:<58} {value:6.3f}")
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--clients", type=int, default=1,
                        help="concurrent clients (50: the loop serves many calls per iteration, as under load)")
    parser.add_argument("--variants", type=lambda s: s.split(","), default=["bare", "traced"],
                        help=f"any of {','.join(VARIANTS)}")
    parser.add_argument("--floor", action="store_true",
                        help="also measure bench/parsing_forwarder.py (parses, remaps ids: the floor under a gateway)")
    parser.add_argument("--stretch-batching", type=float, default=1,
                        help="multiply the gateway's span-shipping and decision-log batching intervals by this (50: "
                             "batches as large as in real operation, counts independent of machine load)")
    parser.add_argument("--json", help="write counts and ratios to this file")
    args = parser.parse_args()
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        sys.exit("bench_instructions needs valgrind (Debian package valgrind)")
    with tempfile.TemporaryDirectory(prefix="customs-instructions-") as tmp:
        counts = asyncio.run(run(args, Path(tmp)))
    ratios = report(counts)
    if args.json:
        Path(args.json).write_text(json.dumps({"instructions_per_call": counts, "ratios": ratios}, indent=2))


if __name__ == "__main__":
    main()
