"""The compose stack's own processes, started natively (Docker does not run here), make the traces its README shows.

Every process runs the command its service gives in compose/docker-compose.yml (the `keys` one-shot, the
demo servers, the delegate agent, `customs serve` with the gateway's environment, and `compose/agent.py demo`),
against compose/customs.yaml; only what a container would supply differs: free ports for 8700 and 9001-9003,
paths of a temporary directory for the volumes, a real redis-server for `redis`, and an OTLP/HTTP receiver
in this test for Jaeger. A person approves the held payment through the approvals API, as on the page.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from tests.conftest import REPO, free_port
from tests.support.otlp import OtlpReceiver, ReceivedSpan
from tests.support.redis import RedisServer, redis_factory, redis_server  # noqa: F401  (fixtures)

COMPOSE = REPO / "compose"
DEMO_PORTS = {"8700": "gateway", "9001": "inventory", "9002": "payments", "9003": "delegate"}


class Stack:
    """The compose services as local processes: ports and volume paths mapped, commands as compose gives them."""

    def __init__(self, tmp: Path, redis_url: str, otlp_url: str) -> None:
        self.tmp = tmp
        self.ports = {name: str(free_port()) for name in DEMO_PORTS.values()}
        self.volumes = {"/keys": str(tmp / "keys"), "/data": str(tmp / "data"),
                        "/etc/customs/policies": str(REPO / "policies"),
                        "/etc/customs/customs.yaml": str(tmp / "customs.yaml"), "/app/compose": str(COMPOSE)}
        compose = yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())
        self.services: dict[str, dict[str, Any]] = compose["services"]
        env = dict(self.services["gateway"]["environment"])
        assert env["REDIS_URL"].startswith("redis://redis:") and env["OTEL_EXPORTER_OTLP_ENDPOINT"] == \
            "http://jaeger:4318"
        self.gateway_env = {**env, "REDIS_URL": redis_url, "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_url}
        env = dict(self.services["agent"]["environment"])
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4318"
        self.agent_env = {**os.environ, **env, "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_url}
        self.procs: list[subprocess.Popen[bytes]] = []
        self.gateway_out = tmp / "gateway.out"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports['gateway']}"

    def local(self, text: str) -> str:
        """A value of the compose files with the container's ports and paths replaced by this machine's."""
        for port, service in DEMO_PORTS.items():
            text = re.sub(rf"\b{port}\b", self.ports[service], text)
        # One pass, whole path components only: /data/keys is inside /data, not a second /keys.
        pattern = "|".join(re.escape(inside) for inside in sorted(self.volumes, key=len, reverse=True))
        return re.sub(rf"(?<![\w./-])(?:{pattern})(?![\w.-])", lambda m: self.volumes[m.group(0)], text)

    def command(self, service: str) -> list[str]:
        argv = [self.local(str(part)) for part in self.services[service]["command"]]
        if argv[0] == "python":
            return [sys.executable, *argv[1:]]
        assert argv[0] == "customs"
        return [sys.executable, "-m", "gateway", *argv[1:]]

    def write_config(self) -> None:
        config = yaml.safe_load(self.local((COMPOSE / "customs.yaml").read_text()))
        config["listen"]["host"] = "127.0.0.1"  # 0.0.0.0 inside the container, published on the loopback
        (self.tmp / "customs.yaml").write_text(yaml.safe_dump(config))

    def start(self, service: str, *, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        out = (self.gateway_out if service == "gateway" else self.tmp / f"{service}.log").open("wb")
        err = (self.tmp / f"{service}.err").open("wb") if service == "gateway" else subprocess.STDOUT
        proc = subprocess.Popen(self.command(service), stdout=out, stderr=err, cwd=str(REPO),
                                env={**os.environ, **(env or {})})
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


async def approve_first_pending(stack: Stack, agent: asyncio.subprocess.Process) -> dict[str, Any]:
    """As a person on the approvals page: wait for the held payment, approve it (alice, finance)."""
    token = subprocess.run([*stack.command("agent")[:2], "token", "--key", str(stack.tmp / "keys/signing-key.pem"),
                            "--subject", "alice", "--groups", "approvers,finance", "--audience",
                            f"{stack.url}/mcp"], check=True, capture_output=True, text=True).stdout.strip()
    deadline = asyncio.get_running_loop().time() + 120
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
        while True:
            assert agent.returncode is None, "the agent ended before its payment was held"
            assert asyncio.get_running_loop().time() < deadline, "no payment was held"
            try:
                async with http.get(f"{stack.url}/api/approvals?state=pending") as resp:
                    items = (await resp.json())["items"] if resp.status == 200 else []
            except aiohttp.ClientError:
                items = []  # the gateway is still starting
            if items:
                async with http.post(f"{stack.url}/api/approvals/{items[0]['id']}/approve",
                                     json={"comment": "demo"}) as resp:
                    assert resp.status == 200, await resp.text()
                    return dict(await resp.json())
            await asyncio.sleep(0.2)  # polling the approvals API, bounded by the deadline


def one(spans: list[ReceivedSpan], kind: str, name: str) -> ReceivedSpan:
    found = [s for s in spans if s.kind == kind and s.name == name]
    assert len(found) == 1, (kind, name, [(s.kind, s.name) for s in spans])
    return found[0]


def child(spans: list[ReceivedSpan], parent: ReceivedSpan, name: str) -> ReceivedSpan:
    found = [s for s in spans if s.parent_span_id == parent.span_id and s.name == name]
    assert len(found) == 1, (parent.name, name, [(s.name, s.parent_span_id) for s in spans])
    return found[0]


async def test_the_compose_stack_natively_makes_the_traces_the_readme_shows(
        redis_server: RedisServer, tmp_path: Path) -> None:  # noqa: F811  (the fixture)
    async with OtlpReceiver() as otlp:
        stack = Stack(tmp_path, redis_server.url, otlp.url)
        try:
            keys = stack.start("keys")
            assert await asyncio.to_thread(keys.wait, 60) == 0
            stack.write_config()
            gateway = stack.start("gateway", env=stack.gateway_env)
            for service in ("inventory", "payments", "delegate"):
                stack.start(service)
            agent = await asyncio.create_subprocess_exec(
                *stack.command("agent"), cwd=str(REPO), stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT, env=stack.agent_env)
            approval = await approve_first_pending(stack, agent)
            output = (await asyncio.wait_for(agent.communicate(), 120))[0].decode()
            assert agent.returncode == 0, output
            gateway.send_signal(signal.SIGTERM)  # its drain exports the last spans and writes the last records
            assert await asyncio.to_thread(gateway.wait, 30) == 0, (stack.tmp / "gateway.err").read_text()
        finally:
            if "agent" in locals() and agent.returncode is None:  # a failure above: the walkthrough stops too
                agent.kill()
                await agent.wait()
            await asyncio.to_thread(stack.stop)  # the loop goes on receiving the services' last spans meanwhile
        allowed, denied, delegated, held = re.findall(r"trace: http://localhost:16686/trace/([0-9a-f]{32})", output)
        assert "widget: 42 in stock" in output and "refused: Unknown tool: inventory__get_stock" in output
        assert "restock-agent (for demo-agent) reports: gadget: 7 in stock" in output
        assert "paid 250.0 to ACME-001" in output
        await otlp.wait_for(lambda r: all(len(r.named(n)) >= 2 for n in (
            "tools/call delegate__stock_report", "tools/call payments__pay")))

    # Each trace starts at the demo agent's own CLIENT span, the gateway's SERVER span under it.
    for trace_id in (allowed, denied, delegated, held):
        (root,) = [s for s in otlp.trace(trace_id) if s.parent_span_id is None]
        assert (root.kind, root.resource["service.name"]) == ("CLIENT", "demo-agent")
        # (the MCP SDK client puts the current context on its session's initialize and tools/list too)
        assert child(otlp.trace(trace_id), root, root.name).kind == "SERVER"
        assert {s.parent_span_id for s in otlp.trace(trace_id)} - {s.span_id for s in otlp.trace(trace_id)} == {None}

    server = one(otlp.trace(allowed), "SERVER", "tools/call inventory__get_stock")
    assert server.resource["service.name"] == "customs"
    assert (server.attributes["customs.decision"], server.attributes["customs.policy_ids"]) == (
        "allow", ("reads-allowed",))
    assert child(otlp.trace(allowed), server, "tools/call get_stock").kind == "CLIENT"

    server = one(otlp.trace(denied), "SERVER", "tools/call inventory__get_stock")
    assert server.attributes["customs.decision"] == "deny" and server.attributes["error.type"] == "unknown_tool"
    assert server.attributes["customs.policy_ids"] == ("untrusted-agents",) and server.status == "ERROR"

    # The delegated call: both hops in one tree, the delegate's hop with its chain.
    spans = otlp.trace(delegated)
    outer = one(spans, "SERVER", "tools/call delegate__stock_report")
    to_delegate = child(spans, outer, "tools/call stock_report")
    inner = child(spans, to_delegate, "tools/call inventory__get_stock")
    assert child(spans, inner, "tools/call get_stock").kind == "CLIENT"
    assert inner.attributes["customs.chain"] == ("restock-agent",) and inner.attributes["customs.chain_depth"] == 1
    assert inner.attributes["customs.actor"] == "restock-agent"
    assert inner.attributes["customs.principal"] == outer.attributes["customs.principal"] == "demo-agent"

    # The held payment: the wait, its outcome and who approved it, then the minted credential and the call.
    spans = otlp.trace(held)
    server = one(spans, "SERVER", "tools/call payments__pay")
    wait = child(spans, server, "customs.approval")
    assert wait.attributes["customs.approval.id"] == approval["id"]
    assert (wait.attributes["customs.approval.outcome"], wait.attributes["customs.approval.approver"]) == (
        "approved", "alice")
    assert child(spans, server, "customs.credential").attributes["customs.credential.mode"] == "minted"
    assert child(spans, server, "tools/call pay").kind == "CLIENT"

    # Every decision log line (the gateway's stdout) carries its call's trace id.
    records = [json.loads(line) for line in stack.gateway_out.read_text().splitlines()]
    decided = {(r["tool"], r["trace_id"]) for r in records if r["type"] == "decision"}
    assert {("get_stock", allowed), ("get_stock", denied), ("stock_report", delegated), ("get_stock", delegated),
            ("pay", held)} <= decided
    (record,) = [r for r in records if r["type"] == "decision" and r["tool"] == "pay"]
    assert record["approval"]["decided_by"] == ["alice"] and record["approval"]["outcome"] == "approved"
