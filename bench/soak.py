"""Soak test: N concurrent MCP sessions over two gateway replicas sharing Redis; allowed, denied and held calls.

Run: .venv/bin/python bench/soak.py [--sessions 1000] [--duration 60] [--max-calls 20000] [--json out.json]

Starts, each a child process on a free 127.0.0.1 port: a private redis-server (`--save "" --appendonly no`),
bench/counting_upstream.py (inventory + payments; counts every execution per exact arguments) and two
`python -m gateway serve` replicas A and B on that Redis (JWT identity from a generated RS256 key, the
shipped policies, `approvals.wait_s: 0` so a held call answers approval_pending at once). Then N client
sessions (raw JSON-RPC over aiohttp: initialize → tools/call loop), split over A and B, each calling until
--duration or the --max-calls budget is spent:
  allowed   inventory get_stock (read-only: policy reads-allowed)
  denied    inventory audit_log (marked restricted in config: restricted-needs-clearance), and every call of
            the untrusted sessions (1 in --untrusted-every; policy untrusted-agents) → unknown_tool
  held      payments pay → approval_pending; of every four held calls two are approved and one denied through
            the API of the OTHER replica by an approver (sub alice, groups approvers + finance) and retried once
            (approved: executes exactly once; denied: approval_denied), one is left pending
Arguments are unique per call, so the upstream's counts can be compared call by call. At the end:
executed reads == reads answered OK, executed payments == approved-and-retried payments answered OK,
nothing executed twice, no restricted/untrusted call executed, zero unexpected answers. Reports throughput,
p50/p99 per outcome, RSS of each replica (start, sessions open, end of load, sessions closed) and the load
average; exits 1 when any count mismatches or any answer was unexpected.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_core import REPO, Children, _free_port, _rpc_result, _url_of  # bench/ is not a package: on sys.path

from tests.support.redis import RedisServer
from tests.support.tokens import TestIssuer

AUDIENCE = "http://customs.soak/mcp"
PROTOCOL = "2025-06-18"
BASE_HEADERS = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
FATES = ("approve", "approve", "deny", "leave")  # what happens to the n-th held call, n mod 4
MIX = (("read", 6), ("restricted", 2), ("pay", 2))  # relative weights of a trusted session's calls


def canonical(args: dict[str, Any]) -> str:
    return json.dumps(args, sort_keys=True, separators=(",", ":"))


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def raise_fd_limit() -> tuple[int, int]:
    """Raise this process's soft RLIMIT_NOFILE (children inherit it): 1,000 sessions need >2,000 sockets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


@dataclass
class Tally:
    """What the clients saw; compared with what the upstream executed."""

    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    answers: Counter[str] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)
    ok_reads: set[str] = field(default_factory=set)
    paid: set[str] = field(default_factory=set)
    fates: Counter[str] = field(default_factory=Counter)
    calls: int = 0
    held: int = 0
    t0: float = 0.0  # monotonic time the load started
    unexpected_at: list[float] = field(default_factory=list)  # seconds after t0

    def note(self, outcome: str, ms: float, got: str, expected: str, what: str, detail: str = "") -> bool:
        self.latencies[outcome].append(ms)
        self.answers[f"{outcome}:{got}"] += 1
        if got != expected:
            self.unexpected_at.append(time.monotonic() - self.t0)
            if len(self.unexpected) < 50:
                self.unexpected.append(f"{what}: expected {expected}, got {got} {detail}".rstrip())
            else:
                self.unexpected.append("")  # counted, not kept verbatim
        return got == expected


@dataclass
class Soak:
    """Shared state of one run: replicas, tokens, the call budget and the deadline."""

    replicas: list[str]
    tokens: dict[str, str]
    http: aiohttp.ClientSession
    deadline: float
    budget: int
    tally: Tally = field(default_factory=Tally)

    def take(self) -> bool:
        """One more call may start (before the deadline and within the --max-calls budget)."""
        if time.monotonic() >= self.deadline or self.budget <= 0:
            return False
        self.budget -= 1
        return True

    async def decide(self, replica: int, approval_id: str, verb: str) -> bool:
        """Approve or deny through the API of replica `replica` as alice; True on 200."""
        started = time.perf_counter()
        url = f"{self.replicas[replica]}/api/approvals/{approval_id}/{verb}"
        try:
            async with self.http.post(url, json={"comment": f"soak {verb}"},
                                      headers={"Authorization": f"Bearer {self.tokens['alice']}"}) as resp:
                detail = (await resp.read()).decode(errors="replace")[:200] if resp.status != 200 else ""
                got = str(resp.status)
        except (aiohttp.ClientError, TimeoutError) as exc:
            got, detail = type(exc).__name__, str(exc)
        return self.tally.note(f"{verb}-api", (time.perf_counter() - started) * 1000, got, "200",
                               f"{verb} {approval_id}", detail)


class Client:
    """One MCP session on one replica: initialize, then a loop of tools/call."""

    def __init__(self, soak: Soak, index: int, untrusted: bool, think_s: float = 0.0, ramp_s: float = 0.0) -> None:
        self.soak, self.index, self.untrusted = soak, index, untrusted
        self.replica = index % 2
        self.url = f"{soak.replicas[self.replica]}/mcp"
        token = soak.tokens["untrusted" if untrusted else f"agent-{index}"]
        self.headers = {**BASE_HEADERS, "Authorization": f"Bearer {token}"}
        self.ids = 0
        self.rng = random.Random(index)
        self.think_s, self.ramp_s = think_s, ramp_s

    async def post(self, body: dict[str, Any]) -> tuple[int, dict[str, Any] | None, dict[str, str]]:
        async with self.soak.http.post(self.url, json=body, headers=self.headers) as resp:
            raw = await resp.read()
            if "id" not in body or not raw:
                return resp.status, None, dict(resp.headers)
            return resp.status, _rpc_result(raw, resp.headers.get("Content-Type", "")), dict(resp.headers)

    async def open(self) -> None:
        init = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": PROTOCOL, "capabilities": {}, "clientInfo": {"name": "soak", "version": "1"}}}
        started = time.perf_counter()
        status, _, headers = await self.post(init)
        if status != 200 or "Mcp-Session-Id" not in headers:
            raise RuntimeError(f"session {self.index}: initialize → HTTP {status}")
        self.headers = {**self.headers, "Mcp-Session-Id": headers["Mcp-Session-Id"], "MCP-Protocol-Version": PROTOCOL}
        await self.post({"jsonrpc": "2.0", "method": "notifications/initialized"})
        self.soak.tally.latencies["initialize"].append((time.perf_counter() - started) * 1000)

    async def close(self) -> None:
        async with self.soak.http.delete(self.url, headers=self.headers) as resp:
            await resp.read()

    async def call(self, tool: str, args: dict[str, Any]) -> tuple[str, dict[str, Any], float]:
        """tools/call → (answer kind: "ok" or the error reason, error data, ms)."""
        self.ids += 1
        body = {"jsonrpc": "2.0", "id": self.ids, "method": "tools/call", "params": {"name": tool, "arguments": args}}
        started = time.perf_counter()
        try:
            status, message, _ = await self.post(body)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            return type(exc).__name__, {}, (time.perf_counter() - started) * 1000
        ms = (time.perf_counter() - started) * 1000
        self.soak.tally.calls += 1
        if message is None:
            return f"http_{status}", {}, ms
        if "error" in message:
            data = {**(message["error"].get("data") or {}), "message": message["error"].get("message")}
            return str(data.get("reason", message["error"].get("code"))), data, ms
        return ("tool_error" if message["result"].get("isError") else "ok"), {}, ms

    async def pause(self, seconds: float) -> None:
        # Pacing, not synchronisation: agents think between calls (an open-ish workload instead of a closed loop).
        if seconds > 0:
            await asyncio.sleep(min(seconds, max(0.0, self.soak.deadline - time.monotonic())))

    async def run(self) -> None:
        n = 0
        await self.pause(self.rng.uniform(0, self.ramp_s))
        while self.soak.take():
            n += 1
            if n > 1 and self.think_s > 0:
                await self.pause(self.rng.expovariate(1 / self.think_s))
                if time.monotonic() >= self.soak.deadline:
                    break
            if self.untrusted:
                args = {"sku": f"u-{self.index}-{n}"}
                got, data, ms = await self.call("inventory__get_stock", args)
                self.soak.tally.note("denied", ms, got, "unknown_tool", f"untrusted get_stock {args}",
                                     str(data.get("message", "")))
                continue
            kind = self.rng.choices([k for k, _ in MIX], [w for _, w in MIX])[0]
            if kind == "read":
                args = {"sku": f"sku-{self.index}-{n}"}
                got, data, ms = await self.call("inventory__get_stock", args)
                if self.soak.tally.note("allowed", ms, got, "ok", f"get_stock {args}", str(data.get("message", ""))):
                    self.soak.tally.ok_reads.add(canonical(args))
            elif kind == "restricted":
                got, data, ms = await self.call("inventory__audit_log", {"day": f"{self.index}-{n}"})
                self.soak.tally.note("denied", ms, got, "unknown_tool", "audit_log", str(data.get("message", "")))
            else:
                await self.pay({"account": f"acct-{self.index}", "amount": 12500 + n, "memo": f"soak-{self.index}-{n}"})

    async def pay(self, args: dict[str, Any]) -> None:
        tally = self.soak.tally
        got, data, ms = await self.call("payments__pay", args)
        if not tally.note("held", ms, got, "approval_pending", f"pay {args}", str(data.get("message", ""))):
            return
        fate = FATES[tally.held % len(FATES)]
        tally.held += 1
        tally.fates[fate] += 1
        if fate == "leave":
            return
        other = 1 - self.replica  # decided on the other replica: the release travels through Redis
        if not await self.soak.decide(other, str(data["approval_id"]), "approve" if fate == "approve" else "deny"):
            return
        got, data, ms = await self.call("payments__pay", args)
        detail = str(data.get("message", ""))
        if fate == "approve":
            if tally.note("approved-retry", ms, got, "ok", f"approved pay {args}", detail):
                tally.paid.add(canonical(args))
        else:
            tally.note("denied-retry", ms, got, "approval_denied", f"denied pay {args}", detail)


def replica_config(port: int, upstream: str, redis_url: str, issuer: TestIssuer, workdir: Path, name: str) -> Path:
    config = {
        "listen": {"host": "127.0.0.1", "port": port},
        "upstreams": [
            {"name": "inventory", "url": f"{upstream}/inventory/mcp",
             "tools": {"audit_log": {"sensitivity": "restricted"}}},
            {"name": "payments", "url": f"{upstream}/payments/mcp", "tools": {"pay": {"sensitivity": "confidential"}}},
        ],
        "identity": {"mode": "jwt", "issuers": [issuer.config(audience=AUDIENCE)]},
        "policies": {"dir": str(REPO / "policies")},
        "store": {"redis": {"url": redis_url}},
        "approvals": {"wait_s": 0},
        "decision_log": {"path": str(workdir / f"decisions-{name}.jsonl")},
        "signing": {"key_dir": str(workdir / f"keys-{name}")},
    }
    path = workdir / f"customs-{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def mint_tokens(issuer: TestIssuer, sessions: int, ttl: float) -> dict[str, str]:
    tokens = {f"agent-{i}": issuer.mint(f"spiffe://customs.demo/agent/soak-{i}", aud=AUDIENCE, alg="ES256",
                                        tenant="acme", ttl=ttl) for i in range(sessions)}
    tokens["untrusted"] = issuer.mint("spiffe://customs.demo/agent/untrusted", aud=AUDIENCE, alg="ES256",
                                      tenant="acme", ttl=ttl)
    tokens["alice"] = issuer.mint("alice", aud=AUDIENCE, alg="ES256", groups=["approvers", "finance"], ttl=ttl)
    return tokens


def percentiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return (values[0], values[0]) if values else (0.0, 0.0)
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return cuts[49], cuts[98]


async def sample_rss(pids: dict[str, int], samples: list[dict[str, Any]], started: float, stop: asyncio.Event,
                     every_s: float) -> None:
    while not stop.is_set():
        samples.append({"t": round(time.monotonic() - started, 1), **{n: rss_kib(p) for n, p in pids.items()}})
        try:
            await asyncio.wait_for(stop.wait(), every_s)  # a periodic sampler: the timeout is the period
        except TimeoutError:
            pass


async def open_sessions(clients: list[Client], concurrency: int) -> None:
    gate = asyncio.Semaphore(concurrency)

    async def one(client: Client) -> None:
        async with gate:
            await client.open()

    await asyncio.gather(*(one(c) for c in clients))


async def fetch_counts(upstream: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http, http.get(f"{upstream}/counts") as resp:
        counts: dict[str, Any] = await resp.json()
        return counts


def compare(tally: Tally, counts: dict[str, Any]) -> dict[str, Any]:
    """Upstream executions vs what the clients were told; every mismatch is listed."""
    executed: dict[tuple[str, str], int] = {}
    for server, tool, args, times in counts["executed"]:
        executed[(f"{server}/{tool}", args)] = times
    reads = {a for (t, a) in executed if t == "inventory/get_stock"}
    pays = {a for (t, a) in executed if t == "payments/pay"}
    checks = {
        "duplicates": sorted(f"{t} {a} x{n}" for (t, a), n in executed.items() if n > 1),
        "restricted_executed": sorted(a for (t, a) in executed if t == "inventory/audit_log"),
        "reads_executed_not_answered_ok": sorted(reads - tally.ok_reads),
        "reads_answered_ok_not_executed": sorted(tally.ok_reads - reads),
        "payments_executed_not_approved_ok": sorted(pays - tally.paid),
        "payments_approved_ok_not_executed": sorted(tally.paid - pays),
    }
    return {"executed_reads": len(reads), "ok_reads": len(tally.ok_reads), "executed_payments": len(pays),
            "approved_retried_ok": len(tally.paid), "upstream_sessions": counts.get("sessions"),
            "mismatches": {k: v[:20] for k, v in checks.items() if v},
            "ok": not any(checks.values())}


def count_lines(path: Path) -> int:
    return sum(1 for _ in path.open()) if path.exists() else 0


async def start_processes(children: Children, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """redis-server, the counting upstream and replicas A and B; their URLs, pids and the tokens."""
    redis = RedisServer(workdir / "redis")
    redis.start()
    py = sys.executable
    upstream = _url_of(await children.start("upstream", [py, str(REPO / "bench/counting_upstream.py")]))
    issuer = TestIssuer(workdir, algorithms=("ES256",))
    replicas, pids = [], {"redis": redis.proc.pid if redis.proc else 0, "upstream": children.procs[-1].pid}
    for name in ("a", "b"):
        port = _free_port()
        path = replica_config(port, upstream, redis.url, issuer, workdir, name)
        await children.start(f"gateway-{name}", [py, "-m", "gateway", "serve", "--config", str(path),
                                                 "--log-level", "warning"])
        replicas.append(f"http://127.0.0.1:{port}")
        pids[f"replica_{name}"] = children.procs[-1].pid
    tokens = mint_tokens(issuer, args.sessions, ttl=args.duration + 600)
    return {"redis": redis, "upstream": upstream, "replicas": replicas, "pids": pids, "tokens": tokens}


async def drive(soak: Soak, clients: list[Client], pids: dict[str, int], duration_s: float,
                every_s: float) -> dict[str, Any]:
    """Open every session, run the call loops to the deadline or budget, close every session; RSS around it."""
    rss: dict[str, dict[str, int]] = {"start": {n: rss_kib(p) for n, p in pids.items()}}
    started = time.monotonic()
    await open_sessions(clients, concurrency=100)
    rss["sessions_open"] = {n: rss_kib(p) for n, p in pids.items()}
    opened_s = time.monotonic() - started
    samples: list[dict[str, Any]] = []
    stop = asyncio.Event()
    sampler = asyncio.create_task(sample_rss(pids, samples, started, stop, every_s))
    soak.deadline = time.monotonic() + duration_s  # the duration counts from the first call, not from start-up

    async def run(client: Client) -> None:
        try:
            await client.run()
        except Exception as exc:  # a client bug or a broken answer: counted, the others go on
            soak.tally.unexpected.append(f"session {client.index} crashed: {exc!r}")

    load_started = soak.tally.t0 = time.monotonic()
    await asyncio.gather(*(run(c) for c in clients))
    load_s = time.monotonic() - load_started
    rss["end_of_load"] = {n: rss_kib(p) for n, p in pids.items()}
    load_at_end = load_average()
    gate = asyncio.Semaphore(100)

    async def close(client: Client) -> None:
        async with gate:
            await client.close()

    await asyncio.gather(*(close(c) for c in clients))
    stop.set()
    await sampler
    rss["sessions_closed"] = {n: rss_kib(p) for n, p in pids.items()}
    return {"rss_kib": rss, "rss_samples": samples, "open_s": opened_s, "load_s": load_s,
            "load_average_end": load_at_end}


async def main_async(args: argparse.Namespace) -> int:
    limits = raise_fd_limit()
    print(f"soak: {args.sessions} sessions over 2 replicas, {args.duration:g} s, at most {args.max_calls} calls; "
          f"RLIMIT_NOFILE {limits}; load average before: {load_average()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        workdir = Path(tmp)
        children = Children(workdir)
        redis: RedisServer | None = None
        try:
            parts = await start_processes(children, workdir, args)
            redis = parts["redis"]
            connector = aiohttp.TCPConnector(limit=0)
            timeout = aiohttp.ClientTimeout(total=args.timeout)
            async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
                soak = Soak(parts["replicas"], parts["tokens"], http, float("inf"), args.max_calls)
                clients = [Client(soak, i, args.untrusted_every > 0 and i % args.untrusted_every == 0,
                                  args.think, args.ramp) for i in range(args.sessions)]
                run = await drive(soak, clients, parts["pids"], args.duration, args.sample_every)
            verdict = compare(soak.tally, await fetch_counts(parts["upstream"]))
            run["decision_log_lines"] = {n: count_lines(workdir / f"decisions-{n}.jsonl") for n in ("a", "b")}
        finally:
            children.close()
            if redis is not None:
                redis.stop()
            if args.logs:
                Path(args.logs).mkdir(parents=True, exist_ok=True)
                for log in [*workdir.glob("*.log"), *workdir.glob("*.jsonl")]:
                    shutil.copy(log, Path(args.logs) / log.name)
    return report(args, soak.tally, run, verdict)


def report(args: argparse.Namespace, tally: Tally, run: dict[str, Any], verdict: dict[str, Any]) -> int:
    outcomes = ("allowed", "denied", "held", "approved-retry", "denied-retry", "approve-api", "deny-api",
                "initialize")
    table = {}
    for outcome in outcomes:
        values = tally.latencies.get(outcome, [])
        p50, p99 = percentiles(values)
        table[outcome] = {"n": len(values), "p50_ms": round(p50, 2), "p99_ms": round(p99, 2)}
    unexpected = len(tally.unexpected)
    print(f"\nsessions opened in {run['open_s']:.1f} s; load {run['load_s']:.1f} s; tools/call answered: "
          f"{tally.calls} → {tally.calls / run['load_s']:.0f} calls/s (both replicas); "
          f"load average at end of load: {run['load_average_end']}")
    print(f"{'outcome':<15} {'n':>7} {'p50 ms':>9} {'p99 ms':>9}")
    for outcome, row in table.items():
        print(f"{outcome:<15} {row['n']:>7} {row['p50_ms']:>9.2f} {row['p99_ms']:>9.2f}")
    print(f"held calls: {tally.held} ({dict(tally.fates)}); answers: {dict(sorted(tally.answers.items()))}")
    print("RSS KiB (start → sessions open → end of load → sessions closed):")
    rss = run["rss_kib"]
    for name in rss["start"]:
        print(f"  {name:<10} " + " → ".join(str(rss[phase][name]) for phase in rss))
    print(f"upstream: executed reads {verdict['executed_reads']} (answered OK {verdict['ok_reads']}), executed "
          f"payments {verdict['executed_payments']} (approved, retried, answered OK {verdict['approved_retried_ok']}),"
          f" upstream sessions {verdict['upstream_sessions']}; decision-log lines {run['decision_log_lines']}")
    early = sum(1 for t in tally.unexpected_at if t < 10)
    print(f"mismatches: {verdict['mismatches'] or 'none'}; unexpected answers: {unexpected} "
          f"({early} in the first 10 s of load, {unexpected - early} later)")
    for line in [u for u in tally.unexpected if u][:10]:
        print(f"  {line}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "args": vars(args), "calls": tally.calls, "calls_per_s": tally.calls / run["load_s"],
            "latency": table, "held": tally.held, "fates": tally.fates, "answers": tally.answers,
            "unexpected": unexpected, "unexpected_sample": [u for u in tally.unexpected if u][:50],
            "verdict": verdict, **run}, indent=2, default=str))
    ok = verdict["ok"] and unexpected == 0
    print("RESULT:", "OK" if ok else "FAILED")
    return 0 if ok else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=1000, help="concurrent client sessions (split over A, B)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of calls (then in-flight ones finish)")
    parser.add_argument("--max-calls", type=int, default=20000, help="cap on tools/call flows started in total")
    parser.add_argument("--untrusted-every", type=int, default=20, help="every n-th session uses the untrusted "
                        "agent's token (0: none)")
    parser.add_argument("--think", type=float, default=0.0, help="mean pause between a session's calls, seconds "
                        "(exponential; 0: closed loop, each session calls again at once)")
    parser.add_argument("--ramp", type=float, default=0.0, help="sessions start calling spread over this many seconds")
    parser.add_argument("--logs", help="copy the child processes' logs (gateways, upstream) to this directory")
    parser.add_argument("--timeout", type=float, default=60.0, help="per-request client timeout, seconds")
    parser.add_argument("--sample-every", type=float, default=5.0, help="RSS sampling period, seconds")
    parser.add_argument("--json", help="write the full report to this file")
    sys.exit(asyncio.run(main_async(parser.parse_args())))


if __name__ == "__main__":
    main()
