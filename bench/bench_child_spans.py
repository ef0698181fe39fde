"""The span exporter child's encoding on the spans a real gateway ships: µs of CPU per span, by span, and per call.

Run: .venv/bin/python bench/bench_child_spans.py [--calls 3000] [--variants traced,full] [--keep FILE]

For each variant of bench_gateway_variants.py (traced: anonymous, allow-all; full: JWT + the shipped policies),
starts the echo upstream, the OTLP sink and that gateway, makes `--calls` tools/call at 20 concurrent
clients, and keeps every batch the gateway's `SpanShipper` sent its exporter child (the gateway runs this
script with `--serve`: `SpanShipper._send` wrapped to keep a copy, written out at exit). Then, in this
process, each batch is unmarshalled and encoded as the child does (`OtlpEncoder.serialize`), best of five
passes, CPU time: unlike bench_otlp_encode.py's synthetic spans these carry the facts, shared dicts and
unique values (request ids, decision ids, digests, timings) of real calls.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import marshal
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_core import Children, _url_of, open_session, sanity_call
from bench_gateway_variants import REPO, Variants

CLIENTS = 20


def serve(config: str, out: str) -> None:
    """The gateway (`customs serve`), keeping a copy of every batch of spans it ships to its exporter child."""
    from gateway.cli import main
    from gateway.telemetry import span_export

    batches: list[Any] = []
    send = span_export.SpanShipper._send

    async def keeping(self: span_export.SpanShipper, message: Any) -> None:
        if message[0] == "spans":
            batches.append(message[1])
        await send(self, message)

    span_export.SpanShipper._send = keeping  # type: ignore[method-assign]
    atexit.register(lambda: Path(out).write_bytes(marshal.dumps(batches)))
    sys.exit(main(["serve", "--config", config, "--log-level", "warning"]))


async def capture(variant: str, calls: int, workdir: Path) -> list[bytes]:
    """The marshalled batches a `variant` gateway shipped while serving `calls` tools/call."""
    children = Children(workdir)
    out = workdir / f"batches-{variant}.marshal"
    try:
        py = sys.executable
        echo = _url_of(await children.start("echo", [py, str(REPO / "bench/echo_upstream.py")]))
        sink = _url_of(await children.start("otlp-sink", [py, str(REPO / "bench/otlp_sink.py")]))
        path, target = Variants(workdir, echo, sink).setup(variant)
        await children.start(f"gateway-{variant}", [py, str(Path(__file__).resolve()), "--serve", str(path), str(out)])
        async with aiohttp.ClientSession() as http:
            session = await open_session(http, target)
            await sanity_call(http, target, session)
            headers = target.request_headers(session)

            async def client(k: int) -> None:
                for i in range(calls // CLIENTS):
                    call = {"jsonrpc": "2.0", "id": f"{k}-{i}", "method": "tools/call",
                            "params": {"name": target.tool, "arguments": target.arguments}}
                    async with http.post(target.url, json=call, headers=headers) as response:
                        await response.read()
            await asyncio.gather(*(client(k) for k in range(CLIENTS)))
    finally:
        gateway = next((proc for proc in children.procs if proc.pid == children.pids.get(f"gateway-{variant}")), None)
        if gateway is not None:  # first, while the sink still answers: it ships what it holds, writes the batches
            gateway.send_signal(signal.SIGTERM)
            gateway.wait(30)
        children.close()
    return [marshal.dumps(batch) for batch in marshal.loads(out.read_bytes())]


def measure(frames: list[bytes]) -> None:
    from gateway.telemetry.otlp_encode import OtlpEncoder

    spans = [span for frame in frames for span in marshal.loads(frame)]
    calls = sum(1 for span in spans if span[0] == "customs.credential") or 1
    kinds = sorted({(span[0], span[1]) for span in spans}, key=lambda k: -sum(1 for s in spans if s[:2] == k))
    encoder = OtlpEncoder({"service.name": "customs", "service.version": "0.1.0"})

    def best(batches: list[bytes]) -> tuple[float, int]:
        timings, count = [], 0
        for _ in range(5):
            count, started = 0, time.process_time()
            for frame in batches:  # unmarshalled in the pass, as the child does: shared dicts are one object
                batch = marshal.loads(frame)
                encoder.serialize(batch)
                count += len(batch)
            timings.append(time.process_time() - started)
        return min(timings) * 1e6, count

    total, count = best(frames)
    print(f"  {count} spans, {calls} calls: {total / count:.2f} µs a span, {total / calls:.1f} µs a call "
          "(unmarshal + serialize)")
    for kind in kinds:
        only = [marshal.dumps([s for s in marshal.loads(frame) if s[:2] == kind]) for frame in frames]
        spent, n = best(only)
        if n >= calls // 2:
            print(f"    {kind[0]!r:<28} kind {kind[1]}  {n:>6} spans  {spent / n:6.2f} µs a span")


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--serve":
        serve(sys.argv[2], sys.argv[3])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--variants", default="traced,full")
    parser.add_argument("--keep", help="also write the first variant's batches to this file (marshal)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-child-spans-") as tmp:
        for n, variant in enumerate(args.variants.split(",")):
            workdir = Path(tmp) / variant
            workdir.mkdir()
            frames = asyncio.run(capture(variant, args.calls, workdir))
            if n == 0 and args.keep:
                Path(args.keep).write_bytes(marshal.dumps([marshal.loads(f) for f in frames]))
            print(f"{variant}:")
            measure(frames)


if __name__ == "__main__":
    main()
