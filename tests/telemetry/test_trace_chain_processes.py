"""Two hops through two real gateway processes are one trace, exported when each process shuts down.

agent ──tools/call delegate__stock_report──▶ gateway A (process) ──▶ delegate (real SDK server, an agent)
                                                                         │ token sub=demo-agent, act.sub=restock-agent
                                 gateway B (process) ◀──tools/call inventory__get_stock (traceparent in _meta)
                                     └──▶ inventory (real SDK server)

Gateway A takes its endpoint from the config, gateway B from OTEL_EXPORTER_OTLP_ENDPOINT; neither is flushed
by the test: SIGTERM's drain must export what they hold.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.demo.delegate import DEMO_ISSUER, delegate_server, mint_token, write_demo_keys
from gateway.demo.servers import inventory_server
from tests.conftest import REPO, GatewayProcess, bound_socket
from tests.support.mcp_client import sdk_client
from tests.support.otlp import OtlpReceiver, ReceivedSpan
from tests.support.servers import run_http_server

AGENT_TRACE, AGENT_SPAN = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
TRACEPARENT = f"00-{AGENT_TRACE}-{AGENT_SPAN}-01"

Spawn = Callable[..., Awaitable[GatewayProcess]]


def gateway_config(keys: Path, upstream: str, url: str, log: Path) -> dict[str, Any]:
    return {"upstreams": [{"name": upstream, "url": url}],
            "identity": {"mode": "jwt", "issuers": [{"issuer": DEMO_ISSUER, "jwks_file": str(keys / "jwks.json"),
                                                     "algorithms": ["ES256"]}]},
            "policies": {"dir": str(REPO / "policies")}, "decision_log": {"path": str(log)}}


async def stop(gateway: GatewayProcess) -> None:
    """SIGTERM and wait for the exit, off the loop: the OTLP receiver in this loop takes the last export."""
    gateway.proc.send_signal(signal.SIGTERM)
    try:
        # The gateway bounds its own drain and last export (and says so in the log); this only catches a hang.
        assert await asyncio.to_thread(gateway.proc.wait, 120) == 0, gateway.log()
        assert "span export did not finish" not in gateway.log()
    except subprocess.TimeoutExpired:
        pytest.fail(f"gateway did not stop:\n{gateway.log()}")


def decisions(log: Path) -> list[dict[str, Any]]:
    return [r for r in map(json.loads, log.read_text().splitlines()) if r["type"] == "decision"]


def the(spans: list[ReceivedSpan], service: str, kind: str, name: str) -> ReceivedSpan:
    found = [s for s in spans if s.resource["service.name"] == service and s.kind == kind and s.name == name]
    assert len(found) == 1, [(s.resource["service.name"], s.name, s.kind) for s in spans]
    return found[0]


@pytest.mark.parametrize("carrier", ["meta", "http"])
async def test_two_gateway_processes_make_one_trace_and_log_its_id(otlp: OtlpReceiver, spawn_gateway: Spawn,
                                                                   tmp_path: Path, carrier: str) -> None:
    keys = tmp_path / "keys"
    key = write_demo_keys(keys)
    delegate_sock = bound_socket()
    delegate_url = f"http://127.0.0.1:{delegate_sock.getsockname()[1]}/mcp"
    async with run_http_server(inventory_server()) as inventory_url:
        second, first = await asyncio.gather(  # independent processes: started side by side
            spawn_gateway({**gateway_config(keys, "inventory", inventory_url, tmp_path / "b.jsonl"),
                           "telemetry": {"service_name": "customs-b"}},
                          name="b", env={"OTEL_EXPORTER_OTLP_ENDPOINT": otlp.url}),
            spawn_gateway({**gateway_config(keys, "delegate", delegate_url, tmp_path / "a.jsonl"),
                           "telemetry": {"service_name": "customs-a", "traces": {"endpoint": otlp.url}}}, name="a"))
        delegate = delegate_server(second.mcp, key, on_behalf_of="demo-agent", actor="restock-agent")
        async with run_http_server(delegate, sock=delegate_sock):
            agent = mint_token(key, subject="demo-agent", audience=first.mcp, claims={"tenant": "acme"})
            meta = {"traceparent": TRACEPARENT} if carrier == "meta" else None
            headers = {"traceparent": TRACEPARENT} if carrier == "http" else None
            async with sdk_client(first.mcp, agent, headers=headers) as client:
                result = await client.call_tool("delegate__stock_report", {"sku": "gadget"},
                                                meta=meta)  # type: ignore[arg-type]
            assert not result.is_error, result
            await stop(first)
            await stop(second)
    spans = await otlp.wait_for(lambda r: r.trace(AGENT_TRACE) if len(r.named("tools/call get_stock")) else None)
    # The sessions' own requests may be traces of their own (or, with the agent's traceparent header on
    # every request, the agent's); every call is in the chain's trace.
    assert {s.trace_id for s in otlp.spans if "tools/call" in s.name} == {AGENT_TRACE}
    outer, to_delegate = the(spans, "customs-a", "SERVER", "tools/call delegate__stock_report"), \
        the(spans, "customs-a", "CLIENT", "tools/call stock_report")
    inner, to_inventory = the(spans, "customs-b", "SERVER", "tools/call inventory__get_stock"), \
        the(spans, "customs-b", "CLIENT", "tools/call get_stock")
    assert outer.parent_span_id == AGENT_SPAN and outer.links == ()
    assert to_delegate.parent_span_id == outer.span_id
    assert inner.parent_span_id == to_delegate.span_id  # hop 2 hangs under hop 1's upstream call
    assert to_inventory.parent_span_id == inner.span_id
    ids = {s.span_id for s in spans}
    assert {s.parent_span_id for s in spans} - ids == {AGENT_SPAN}  # one tree under the agent's span, no orphan
    # Whatever the delegate sent gateway B while serving the call (its session's initialize, tools/list) hangs
    # under gateway A's CLIENT span too, never under a span of its own choosing.
    assert {s.parent_span_id for s in spans if s.kind == "SERVER" and s.resource["service.name"] == "customs-b"} \
        == {to_delegate.span_id}
    for server, service in ((outer, "customs-a"), (inner, "customs-b")):
        stages = [s for s in spans if s.parent_span_id == server.span_id and s.kind == "INTERNAL"]
        assert sorted(s.name for s in stages) == ["customs.authorize", "customs.credential", "customs.identify"]
        assert {s.resource["service.name"] for s in stages} == {service}
    assert inner.attributes["customs.chain"] == ("restock-agent",) and inner.attributes["customs.chain_depth"] == 1

    hop1, hop2 = decisions(tmp_path / "a.jsonl"), decisions(tmp_path / "b.jsonl")
    assert [(r["tool"], r["trace_id"], r["span_id"]) for r in hop1] == [("stock_report", AGENT_TRACE, outer.span_id)]
    assert [(r["tool"], r["trace_id"], r["span_id"], r["chain"]) for r in hop2] == [
        ("get_stock", AGENT_TRACE, inner.span_id, ["restock-agent"])]
