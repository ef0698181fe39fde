"""Core load test: tools/call throughput and p50/p99 direct, through a minimal forwarder, and through the gateway.

Run: .venv/bin/python bench/bench_core.py [--duration 10] [--connections 1,50] [--demo] [--json out.json]

Targets, each a child process on 127.0.0.1:
  direct     bench/echo_upstream.py, a fast JSON-RPC upstream answering tools/call with a fixed result
  forwarder  bench/minimal_forwarder.py in front of it (a ~30-line aiohttp pass-through)
  gateway    `python -m gateway serve --config <tmp>` in front of it at /mcp/echo: anonymous identity,
             allow-all Cedar policy, decision log to a file, default telemetry (metrics on, no trace export)
  --demo adds the SDK demo server (gateway/demo/servers.py inventory, streamable HTTP) direct and via the gateway.
Each target gets a session (initialize + initialized, done here), a sanity call, a short warm-up, then
wrk (Debian's `wrk`, a Lua script POSTing tools/call with the session header and a fresh id per request)
for --duration seconds per connection count; without wrk, a Python aiohttp generator with N clients.
Each saturated load also reports the target process's CPU time per call (utime+stime from /proc/PID/stat,
before and after the load, over the calls served) and that of its child processes, if it has any.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

REPO = Path(__file__).resolve().parents[1]
PROTOCOL = "2025-06-18"
HEADERS = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream",
           "MCP-Protocol-Version": PROTOCOL}
CLK_TCK = os.sysconf("SC_CLK_TCK")  # unit of utime/stime in /proc/PID/stat


@dataclass(frozen=True)
class Target:
    name: str
    url: str
    tool: str
    arguments: dict[str, Any]
    headers: tuple[tuple[str, str], ...] = ()  # extra request headers, e.g. ("Authorization", "Bearer ...")
    pid: int | None = None  # the process serving `url` (its CPU time per call is measured); None: not measured

    def request_headers(self, session: str | None) -> dict[str, str]:
        return {**HEADERS, **dict(self.headers), **({"Mcp-Session-Id": session} if session else {})}


@dataclass
class Result:
    target: str
    connections: int
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int
    generator: str
    pace_ms: int = 0  # >0: each connection waits on average this long between calls (a load below saturation)
    cpu_us_per_call: float | None = None  # CPU µs (user+system) of the target's process per call; saturated loads
    child_cpu_us_per_call: float | None = None  # the same for its child processes together; None: it has none

    @property
    def load(self) -> str:
        return f"c={self.connections}" + (f" paced {self.pace_ms}ms" if self.pace_ms else "")

    @property
    def cpu_text(self) -> str:
        """`  cpu 372 µs/call (+ child 118)` for the results line; empty if CPU was not measured."""
        if self.cpu_us_per_call is None:
            return ""
        child = "" if self.child_cpu_us_per_call is None else f" (+ child {self.child_cpu_us_per_call:.0f})"
        return f"  cpu {self.cpu_us_per_call:.0f} µs/call{child}"


def child_env() -> dict[str, str]:
    """The environment of a bench child: this checkout's `gateway` first on the path. Children run in a scratch
    directory, so without it `python -m gateway` imports whatever the venv's editable install points at, and a
    bench run from another worktree (an older commit, say) would measure the main checkout's code instead."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": path}


class Children:
    """Child processes of one bench run; each prints `listening on ...` when ready. Owner closes them all."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[subprocess.Popen[bytes]] = []
        self.pids: dict[str, int] = {}  # name given to start() → pid

    async def start(self, name: str, cmd: list[str], ready: str = "listening on", timeout_s: float = 30) -> str:
        log = self.workdir / f"{name}.log"
        with log.open("w") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    cwd=self.workdir, env=child_env())
        self.procs.append(proc)
        self.pids[name] = proc.pid
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            text = log.read_text(errors="replace")
            for line in text.splitlines():
                if ready in line:
                    return line
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{text}")
            await asyncio.sleep(0.05)  # polling the child's log for readiness, bounded by the deadline
        raise TimeoutError(f"{name} did not start:\n{log.read_text(errors='replace')}")

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _url_of(line: str) -> str:
    found: list[str] = re.findall(r"https?://\S+", line)
    return found[0].rstrip(")")


def _rpc_result(body: bytes, content_type: str) -> dict[str, Any]:
    """The JSON-RPC response from a JSON body or from the last `data:` line of an SSE body."""
    text = body.decode()
    if content_type.startswith("text/event-stream"):
        data = [line[5:].strip() for line in text.splitlines() if line.startswith("data:") and line[5:].strip()]
        text = data[-1]
    message: dict[str, Any] = json.loads(text)
    return message


async def open_session(http: aiohttp.ClientSession, target: Target) -> str | None:
    """initialize + notifications/initialized; the Mcp-Session-Id every load request carries (if any)."""
    init = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": PROTOCOL, "capabilities": {}, "clientInfo": {"name": "bench_core", "version": "1"}}}
    async with http.post(target.url, json=init, headers=target.request_headers(None)) as response:
        body = await response.read()
        if response.status != 200:
            raise RuntimeError(f"{target.name}: initialize → HTTP {response.status}: {body[:300]!r}")
        session = response.headers.get("Mcp-Session-Id")
    async with http.post(target.url, json={"jsonrpc": "2.0", "method": "notifications/initialized"},
                         headers=target.request_headers(session)) as response:
        await response.read()
    return session


async def sanity_call(http: aiohttp.ClientSession, target: Target, session: str | None) -> None:
    """One tools/call that must succeed, so the load run measures real calls, not fast errors."""
    headers = target.request_headers(session)
    call = {"jsonrpc": "2.0", "id": "sanity", "method": "tools/call",
            "params": {"name": target.tool, "arguments": target.arguments}}
    async with http.post(target.url, json=call, headers=headers) as response:
        message = _rpc_result(await response.read(), response.headers.get("Content-Type", ""))
    if response.status != 200 or "error" in message or message.get("result", {}).get("isError"):
        raise RuntimeError(f"{target.name}: sanity tools/call failed (HTTP {response.status}): {message}")


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat (field n at index n - 1, the command name one field); None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # FileNotFoundError: exited; ProcessLookupError: exiting while read
        return None
    head, _, rest = text.rpartition(")")  # the command name may hold spaces and parentheses
    number, _, name = head.partition(" (")
    return [number, name, *rest.split()]


def _cpu_ticks(fields: list[str]) -> int:
    return int(fields[13]) + int(fields[14])  # utime + stime (fields 14 and 15), in clock ticks


@dataclass(frozen=True)
class CpuSnapshot:
    """CPU ticks used so far by one process, and by each of its child processes keyed by (pid, start time)."""
    main: int | None
    children: dict[tuple[int, int], int]


def cpu_snapshot(pid: int) -> CpuSnapshot:
    """utime+stime of `pid` and of its current children (found by scanning /proc/*/stat for PPID == pid)."""
    main = _proc_stat(pid)
    children: dict[tuple[int, int], int] = {}
    with os.scandir("/proc") as entries:
        for entry in entries:
            fields = _proc_stat(int(entry.name)) if entry.name.isdigit() else None
            if fields is not None and int(fields[3]) == pid:
                children[(int(fields[0]), int(fields[21]))] = _cpu_ticks(fields)
    return CpuSnapshot(None if main is None else _cpu_ticks(main), children)


def cpu_per_call(before: CpuSnapshot, after: CpuSnapshot, calls: int) -> tuple[float | None, float | None]:
    """CPU µs per call between two snapshots: of the main process, and of its children together (None if it had
    none). A child seen only after started during the load (all its CPU counts); one that exited is skipped."""
    if before.main is None or after.main is None or calls <= 0:
        return None, None
    us_per_tick = 1e6 / CLK_TCK / calls
    main = (after.main - before.main) * us_per_tick
    if not before.children and not after.children:
        return main, None
    ticks = sum(used - before.children.get(key, 0) for key, used in after.children.items())
    return main, ticks * us_per_tick


async def with_cpu(pid: int | None, load: Callable[[], Awaitable[Result]]) -> Result:
    """Run `load`; record on its Result the CPU per call of process `pid` and of its children during it."""
    if pid is None:
        return await load()
    before = cpu_snapshot(pid)
    result = await load()
    result.cpu_us_per_call, result.child_cpu_us_per_call = cpu_per_call(before, cpu_snapshot(pid), result.requests)
    return result


LUA = """
local session = %(session)s
local prefix = "%(name)s"
local counter = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Accept"] = "application/json, text/event-stream"
wrk.headers["MCP-Protocol-Version"] = "%(protocol)s"
if session then wrk.headers["Mcp-Session-Id"] = session end
%(extra)s
local head = '{"jsonrpc":"2.0","id":"'
local tail = '","method":"tools/call","params":%(params)s}'
%(delay)s
request = function()
  counter = counter + 1
  -- a fresh id per request: a gateway may refuse a second in-flight request with the same id
  return wrk.format(nil, nil, nil, head .. prefix .. tostring(counter) .. tail)
end
"""

_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", value).groups()  # type: ignore[union-attr]
    return float(number) * _UNIT_MS[unit]


def parse_wrk(output: str) -> tuple[float, float, float, int, int]:
    """rps, p50 ms, p99 ms, requests, errors (non-2xx + socket errors) from `wrk --latency` output."""
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output)[1])  # type: ignore[index]
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", output, re.M)[1])  # type: ignore[index]
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", output, re.M)[1])  # type: ignore[index]
    requests = int(re.search(r"(\d+) requests in", output)[1])  # type: ignore[index]
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses:\s+(\d+)", output))
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    errors += sum(int(n) for n in socket_errors.groups()) if socket_errors else 0
    return rps, p50, p99, requests, errors


def run_wrk(target: Target, session: str | None, connections: int, duration_s: float, workdir: Path,
            pace_ms: int = 0) -> Result:
    script = workdir / f"{target.name}.lua"
    params = json.dumps({"name": target.tool, "arguments": target.arguments}, separators=(",", ":"))
    script.write_text(LUA % {"session": json.dumps(session) if session else "nil", "name": target.name,
                             "protocol": PROTOCOL, "params": params.replace("'", "\\'"),
                             "extra": "\n".join(f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}"
                                                for k, v in target.headers),
                             # wrk calls delay() before each request of a connection: think time per client,
                             # random (mean pace_ms) so the clients do not fire in lockstep bursts.
                             "delay": f"delay = function() return math.random(0, {2 * pace_ms}) end"
                             if pace_ms else ""})
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration_s))}s", "--latency", "--timeout", "10s",
           "-s", str(script), target.url]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=duration_s + 60, check=True)
    rps, p50, p99, requests, errors = parse_wrk(done.stdout)
    return Result(target.name, connections, rps, p50, p99, requests, errors, "wrk", pace_ms)


async def run_python(target: Target, session: str | None, connections: int, duration_s: float,
                     pace_ms: int = 0) -> Result:
    """Fallback generator: `connections` aiohttp clients calling in a closed loop for `duration_s`."""
    headers = target.request_headers(session)
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + duration_s

    async def client(index: int, http: aiohttp.ClientSession) -> None:
        nonlocal errors
        n = 0
        while time.perf_counter() < deadline:
            n += 1
            body = {"jsonrpc": "2.0", "id": f"{index}-{n}", "method": "tools/call",
                    "params": {"name": target.tool, "arguments": target.arguments}}
            started = time.perf_counter()
            async with http.post(target.url, json=body, headers=headers) as response:
                await response.read()
                errors += response.status >= 300
            latencies.append((time.perf_counter() - started) * 1000)
            if pace_ms:
                # Think time of a paced client (load shape, not sync), random so clients do not fire in lockstep.
                await asyncio.sleep(random.uniform(0, 2 * pace_ms) / 1000)

    connector = aiohttp.TCPConnector(limit=connections)
    started = time.perf_counter()
    async with aiohttp.ClientSession(connector=connector) as http:
        await asyncio.gather(*(client(i, http) for i in range(connections)))
    elapsed = time.perf_counter() - started
    cuts = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else latencies * 99
    return Result(target.name, connections, len(latencies) / elapsed, cuts[49], cuts[98], len(latencies), errors,
                  "python", pace_ms)


def permissive_policy_dir(workdir: Path) -> Path:
    policies = workdir / "allow-all"
    policies.mkdir()
    shutil.copy(REPO / "policies" / "schema.cedarschema", policies / "schema.cedarschema")
    (policies / "allow.cedar").write_text('@id("allow-all")\npermit(principal, action, resource);\n')
    return policies


async def start_targets(children: Children, workdir: Path, demo: bool) -> list[Target]:
    py = sys.executable
    echo = _url_of(await children.start("echo", [py, str(REPO / "bench/echo_upstream.py")]))
    forwarder = _url_of(await children.start("forwarder", [py, str(REPO / "bench/minimal_forwarder.py"),
                                                           "--upstream", echo]))
    pids = children.pids
    targets = [Target("direct", echo, "echo", {"text": "hi"}, pid=pids["echo"]),
               Target("forwarder", forwarder, "echo", {"text": "hi"}, pid=pids["forwarder"])]
    upstreams: list[dict[str, Any]] = [{"name": "echo", "url": echo}]
    if demo:
        port = _free_port()
        await children.start("demo", [py, "-m", "gateway.demo.servers", "inventory", "--http", str(port)],
                             ready="Uvicorn running")
        demo_url = f"http://127.0.0.1:{port}/mcp"
        targets.append(Target("demo-direct", demo_url, "get_stock", {"sku": "widget"}, pid=pids["demo"]))
        upstreams.append({"name": "inventory", "url": demo_url})
    gw_port = _free_port()
    config = {"listen": {"host": "127.0.0.1", "port": gw_port}, "upstreams": upstreams,
              "identity": {"mode": "anonymous"}, "policies": {"dir": str(permissive_policy_dir(workdir))},
              "decision_log": {"path": str(workdir / "decisions.jsonl")}}
    (workdir / "customs.yaml").write_text(yaml.safe_dump(config))
    gateway = f"http://127.0.0.1:{gw_port}"
    await children.start("gateway", [py, "-m", "gateway", "serve", "--config", str(workdir / "customs.yaml"),
                                     "--log-level", "warning"])
    targets.append(Target("gateway", f"{gateway}/mcp/echo", "echo", {"text": "hi"}, pid=pids["gateway"]))
    if demo:
        targets.append(Target("demo-gateway", f"{gateway}/mcp/inventory", "get_stock", {"sku": "widget"},
                              pid=pids["gateway"]))
    return targets


def _free_port() -> int:
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pin_others() -> None:
    """`--pin`, first half: this process, and so everything it starts from now on (upstream, sinks, targets, wrk),
    on the last CPU. `pin_target` then moves each target's own threads to CPU 0 before it is measured."""
    os.sched_setaffinity(0, {(os.cpu_count() or 2) - 1})


def pin_target(pid: int) -> None:
    """`--pin`, second half: every thread of the target process on CPU 0, alone; its child processes (a gateway's
    decision-log writer and span exporter) stay with the load generator and the upstream on the last CPU. On a
    shared 2-CPU machine, where the scheduler otherwise moves the target between CPUs and puts wrk or the upstream
    beside it, this makes the CPU per call, and so the saturated throughput, far steadier between runs."""
    with os.scandir(f"/proc/{pid}/task") as threads:
        for thread in threads:
            os.sched_setaffinity(int(thread.name), {0})


async def measure(target: Target, args: argparse.Namespace, workdir: Path, use_wrk: bool) -> list[Result]:
    async with aiohttp.ClientSession() as http:
        session = await open_session(http, target)
        await sanity_call(http, target, session)
    if getattr(args, "pin", False) and target.pid is not None:
        pin_target(target.pid)

    async def load(connections: int, duration_s: float, pace_ms: int = 0) -> Result:
        if use_wrk:
            return await asyncio.to_thread(run_wrk, target, session, connections, duration_s, workdir, pace_ms)
        return await run_python(target, session, connections, duration_s, pace_ms)

    async def measured(connections: int, pace_ms: int) -> Result:
        """A measured load; a saturated one (not paced) also gets the target's CPU per call."""
        pid = None if pace_ms else target.pid
        return await with_cpu(pid, lambda: load(connections, args.duration, pace_ms))

    if args.warmup > 0:
        await load(max(args.connections), args.warmup)  # discarded: connection pools, caches, allocator
    results = []
    loads = [(c, 0) for c in args.connections] + list(getattr(args, "paced", []))
    for connections, pace_ms in loads:
        result = await measured(connections, pace_ms)
        results.append(result)
        print(f"  {target.name:<13} {result.load:<17} {result.rps:>9.0f} req/s  p50 {result.p50_ms:7.2f} ms  "
              f"p99 {result.p99_ms:7.2f} ms  errors {result.errors}{result.cpu_text}", flush=True)
    async with aiohttp.ClientSession() as http:
        await sanity_call(http, target, session)  # still answering correctly after the load
    return results


def parse_paced(text: str) -> list[tuple[int, int]]:
    """`50:40,10:5` → [(50, 40), (10, 5)]: connections and think time (ms) of each paced load."""
    out = []
    for item in filter(None, text.split(",")):
        connections, pace = item.split(":")
        out.append((int(connections), int(pace)))
    return out


def summary(results: list[Result]) -> dict[str, float]:
    by = {(r.target, r.connections): r for r in results if not r.pace_ms}
    out: dict[str, float] = {}
    for (name, c), r in by.items():
        if name != "gateway" or ("forwarder", c) not in by:
            continue
        f, d = by[("forwarder", c)], by.get(("direct", c))
        out[f"gateway/forwarder throughput c={c}"] = r.rps / f.rps
        out[f"gateway p50 - forwarder p50 ms c={c}"] = r.p50_ms - f.p50_ms
        if f.cpu_us_per_call is not None and r.cpu_us_per_call:
            # CPU per call of the forwarder over the gateway's: like the throughput ratio, higher is better.
            out[f"forwarder/gateway CPU per call c={c}"] = f.cpu_us_per_call / r.cpu_us_per_call
        if d:
            out[f"forwarder/direct throughput c={c}"] = f.rps / d.rps
            out[f"gateway/direct throughput c={c}"] = r.rps / d.rps
    return out


async def main_async(args: argparse.Namespace) -> int:
    use_wrk = args.generator == "wrk" or (args.generator == "auto" and shutil.which("wrk") is not None)
    print(f"load generator: {'wrk' if use_wrk else 'python aiohttp'}; {args.duration:g} s per target and "
          f"connection count {args.connections}; {os.cpu_count()} CPU(s)", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-core-") as tmp:
        workdir = Path(tmp)
        children = Children(workdir)
        try:
            targets = await start_targets(children, workdir, args.demo)
            results = [r for t in targets for r in await measure(t, args, workdir, use_wrk)]
            decisions = sum(1 for _ in (workdir / "decisions.jsonl").open()) if (
                workdir / "decisions.jsonl").exists() else 0
        finally:
            children.close()
    ratios = summary(results)
    print("\nratios:")
    for key, value in ratios.items():
        print(f"  {key:<40} {value:8.3f}")
    print(f"  gateway decision-log lines written: {decisions}")
    if args.json:
        Path(args.json).write_text(json.dumps({"results": [asdict(r) for r in results], "ratios": ratios,
                                               "decisions_logged": decisions}, indent=2))
    return 1 if any(r.errors for r in results) else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per target per connection count")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up per target (0: none)")
    parser.add_argument("--connections", type=lambda s: [int(x) for x in s.split(",")], default=[1, 50])
    parser.add_argument("--paced", type=parse_paced, default=[],
                        help="paced loads C:MS,... (C connections, each waiting MS ms between calls)")
    parser.add_argument("--generator", choices=["auto", "wrk", "python"], default="auto")
    parser.add_argument("--demo", action="store_true", help="also measure the SDK demo server, direct and gateway")
    parser.add_argument("--json", help="write results and ratios to this file")
    sys.exit(asyncio.run(main_async(parser.parse_args())))


if __name__ == "__main__":
    main()
