"""End to end through the real gateway: an agent's call, delegated by an agent-as-a-tool, is one trace.

agent ──tools/call delegate__stock_report──▶ gateway ──▶ delegate (real SDK server)
                                                             │ token: sub=demo-agent, act.sub=restock-agent
agent's trace ◀── one trace id ── gateway ◀──tools/call inventory__get_stock── delegate (traceparent in _meta)
                                     └──▶ inventory (real SDK server)
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from mcp.shared.exceptions import MCPError

from gateway.demo.delegate import DEMO_ISSUER, delegate_server, mint_token, write_demo_keys
from gateway.demo.servers import inventory_server
from tests.conftest import REPO, RunningGateway, bound_socket
from tests.support.mcp_client import sdk_client
from tests.support.otlp import OtlpReceiver, ReceivedSpan
from tests.support.servers import run_http_server

AGENT_TRACE, AGENT_SPAN = "5bf92f3577b34da6a3ce929d0e0e4736", "10f067aa0ba902b7"

StartGateway = Callable[[dict[str, Any]], Awaitable[RunningGateway]]


def one(spans: list[ReceivedSpan], **where: Any) -> ReceivedSpan:
    found = [s for s in spans if all(getattr(s, k) == v for k, v in where.items())]
    assert len(found) == 1, (where, [(s.name, s.kind) for s in spans])
    return found[0]


def chain_config(tmp_path: Path, inventory_url: str, delegate_url: str, extra: dict[str, Any]) -> dict[str, Any]:
    """The gateway of a delegation: inventory and the delegate as upstreams, the demo issuer's JWTs (keys written
    under tmp_path/keys by write_demo_keys), the shipped policies, and `extra` sections."""
    return {"upstreams": [{"name": "inventory", "url": inventory_url}, {"name": "delegate", "url": delegate_url}],
            "identity": {"mode": "jwt", "issuers": [{"issuer": DEMO_ISSUER, "algorithms": ["ES256"],
                                                     "jwks_file": str(tmp_path / "keys" / "jwks.json")}]},
            "policies": {"dir": str(REPO / "policies")}, **extra}


async def test_delegated_call_is_one_trace_with_the_chain(otlp: OtlpReceiver, start_gateway: StartGateway,
                                                          tmp_path: Path) -> None:
    # otlp first: the receiver must outlive the gateway, whose shutdown flushes the last spans.
    key = write_demo_keys(tmp_path / "keys")
    delegate_sock = bound_socket()
    delegate_url = f"http://127.0.0.1:{delegate_sock.getsockname()[1]}/mcp"
    async with run_http_server(inventory_server()) as inventory_url:
        gateway = await start_gateway(chain_config(tmp_path, inventory_url, delegate_url, {
            "decision_log": {"path": str(tmp_path / "decisions.jsonl")},
            "telemetry": {"service_name": "customs-e2e", "traces": {"endpoint": otlp.url}}}))
        delegate = delegate_server(gateway.mcp, key, on_behalf_of="demo-agent", actor="restock-agent")
        async with run_http_server(delegate, sock=delegate_sock):
            agent = mint_token(key, subject="demo-agent", audience=gateway.mcp, claims={"tenant": "acme"})
            untrusted = mint_token(key, subject="untrusted-agent", audience=gateway.mcp, claims={"tenant": "acme"})
            async with sdk_client(gateway.mcp, agent) as client:
                result = await client.call_tool(
                    "delegate__stock_report", {"sku": "gadget"},
                    meta={"traceparent": f"00-{AGENT_TRACE}-{AGENT_SPAN}-03"})  # type: ignore[arg-type]
            async with sdk_client(gateway.mcp, untrusted) as client:
                with pytest.raises(MCPError, match="Unknown tool"):
                    await client.call_tool("inventory__get_stock", {"sku": "widget"})
            obs = gateway.gateway.parts.observability
            await obs.telemetry.flush()
            await obs.log.close()  # drain the decision log (the app's cleanup closes it again, harmlessly)
    text = result.content[0].text  # type: ignore[union-attr]
    assert not result.is_error and "restock-agent (for demo-agent) reports: gadget: 7 in stock" in text

    trace = await otlp.wait_for(lambda r: r.trace(AGENT_TRACE) if len(r.trace(AGENT_TRACE)) >= 4 else None)
    outer = one(trace, name="tools/call delegate__stock_report", kind="SERVER")
    to_delegate = one(trace, name="tools/call stock_report", kind="CLIENT")
    inner = one(trace, name="tools/call inventory__get_stock", kind="SERVER")
    to_inventory = one(trace, name="tools/call get_stock", kind="CLIENT")
    assert outer.parent_span_id == AGENT_SPAN
    assert to_delegate.parent_span_id == outer.span_id
    assert inner.parent_span_id == to_delegate.span_id  # the delegate forwarded the gateway's context
    assert to_inventory.parent_span_id == inner.span_id
    assert outer.resource["service.name"] == "customs-e2e"
    assert outer.attributes["customs.principal"] == "demo-agent" and outer.attributes["customs.chain"] == ()
    assert outer.attributes["customs.decision"] == "allow" and outer.attributes["customs.upstream"] == "delegate"
    assert inner.attributes["customs.principal"] == "demo-agent"
    assert inner.attributes["customs.chain"] == ("restock-agent",) and inner.attributes["customs.chain_depth"] == 1
    assert inner.attributes["customs.actor"] == "restock-agent"
    assert inner.attributes["customs.decision"] == "allow" and inner.attributes["customs.policy_ids"]
    for server in (outer, inner):
        names = {s.name for s in otlp.children(server)}
        assert {"customs.identify", "customs.authorize", "customs.credential"} <= names, names
        assert server.attributes["mcp.method.name"] == "tools/call"
        assert server.attributes["gen_ai.operation.name"] == "execute_tool"
        assert "mcp.session.id" in server.attributes and "jsonrpc.request.id" in server.attributes
    identify = one(otlp.children(inner), name="customs.identify")
    assert identify.attributes["customs.chain"] == ("restock-agent",)
    assert not any(key.endswith("token") for s in trace for key in s.attributes)

    deny = await otlp.wait_for_span(lambda s: s.kind == "SERVER" and s.attributes.get("customs.decision") == "deny")
    assert deny.attributes["customs.principal"] == "untrusted-agent"
    assert deny.attributes["error.type"] == "unknown_tool" and deny.status == "ERROR"
    assert "untrusted-agents" in deny.attributes["customs.policy_ids"]
    assert deny.trace_id != AGENT_TRACE

    records = [json.loads(line) for line in (tmp_path / "decisions.jsonl").read_text().splitlines()]
    decisions = [r for r in records if r["type"] == "decision"]
    chained = [r for r in decisions if r["trace_id"] == AGENT_TRACE]
    assert sorted((r["tool"], tuple(r["chain"])) for r in chained) == [("get_stock", ("restock-agent",)),
                                                                        ("stock_report", ())]
    assert {r["span_id"] for r in chained} == {outer.span_id, inner.span_id}
    refused = one_record(decisions, principal="untrusted-agent")
    assert (refused["decision"], refused["reason"], refused["trace_id"]) == ("deny", "unknown_tool", deny.trace_id)


def one_record(records: list[dict[str, Any]], **where: Any) -> dict[str, Any]:
    found = [r for r in records if all(r.get(k) == v for k, v in where.items())]
    assert len(found) == 1, found
    return found[0]


@pytest.mark.parametrize("trust", [True, False])
async def test_http_traceparent_parents_or_links_by_trust(otlp: OtlpReceiver, start_gateway: StartGateway,
                                                                     permissive_policies: Path, trust: bool) -> None:
    async with run_http_server(inventory_server()) as inventory_url:
        gateway = await start_gateway({
            "upstreams": [{"name": "inventory", "url": inventory_url}],
            "identity": {"mode": "anonymous", "anonymous_attributes": {"tenant": "acme"}},
            "policies": {"dir": str(permissive_policies)},
            "telemetry": {"traces": {"endpoint": otlp.url, "trust_inbound": trust}},
        })
        async with sdk_client(gateway.mcp, headers={"traceparent": f"00-{AGENT_TRACE}-{AGENT_SPAN}-01"}) as client:
            await client.call_tool("inventory__get_stock", {"sku": "widget"})
        await gateway.gateway.parts.observability.telemetry.flush()
    server = await otlp.wait_for_span(lambda s: s.name == "tools/call inventory__get_stock")
    if trust:
        assert (server.trace_id, server.parent_span_id, server.links) == (AGENT_TRACE, AGENT_SPAN, ())
    else:
        assert server.parent_span_id is None and server.trace_id != AGENT_TRACE
        assert [(link.trace_id, link.span_id) for link in server.links] == [(AGENT_TRACE, AGENT_SPAN)]


async def test_untrusted_inbound_context_still_keeps_a_delegation_in_one_trace(
        otlp: OtlpReceiver, start_gateway: StartGateway, tmp_path: Path) -> None:
    # trust_inbound: false makes an agent's context only a link, but the context a delegate sends back is the one
    # the gateway gave it (its CLIENT span to the delegate, in flight): the gateway's own, so it parents the call.
    key = write_demo_keys(tmp_path / "keys")
    delegate_sock = bound_socket()
    delegate_url = f"http://127.0.0.1:{delegate_sock.getsockname()[1]}/mcp"
    async with run_http_server(inventory_server()) as inventory_url:
        gateway = await start_gateway(chain_config(tmp_path, inventory_url, delegate_url, {
            "telemetry": {"traces": {"endpoint": otlp.url, "trust_inbound": False}}}))
        delegate = delegate_server(gateway.mcp, key, on_behalf_of="demo-agent", actor="restock-agent")
        async with run_http_server(delegate, sock=delegate_sock):
            agent = mint_token(key, subject="demo-agent", audience=gateway.mcp, claims={"tenant": "acme"})
            async with sdk_client(gateway.mcp, agent) as client:
                result = await client.call_tool(
                    "delegate__stock_report", {"sku": "gadget"},
                    meta={"traceparent": f"00-{AGENT_TRACE}-{AGENT_SPAN}-01"})  # type: ignore[arg-type]
                assert not result.is_error
                # A context the gateway issued once but no longer has in flight is an agent's again: a link.
                outer = await otlp.wait_for_span(lambda s: s.name == "tools/call delegate__stock_report")
                to_delegate = await otlp.wait_for_span(lambda s: s.name == "tools/call stock_report"
                                                       and s.kind == "CLIENT")
                await client.call_tool("inventory__get_stock", {"sku": "widget"},
                                       meta={"traceparent": f"00-{to_delegate.trace_id}-{to_delegate.span_id}-01"})
            await gateway.gateway.parts.observability.telemetry.flush()
    assert outer.parent_span_id is None and outer.trace_id != AGENT_TRACE  # the agent's context: a link only
    assert [(link.trace_id, link.span_id) for link in outer.links] == [(AGENT_TRACE, AGENT_SPAN)]
    inner = await otlp.wait_for_span(lambda s: s.name == "tools/call inventory__get_stock"
                                     and s.attributes.get("customs.chain") == ("restock-agent",))
    assert (inner.trace_id, inner.parent_span_id, inner.links) == (outer.trace_id, to_delegate.span_id, ())
    replayed = await otlp.wait_for_span(lambda s: s.name == "tools/call inventory__get_stock"
                                        and s.attributes.get("customs.chain") == ())
    assert replayed.parent_span_id is None and replayed.trace_id != outer.trace_id
    assert [(link.trace_id, link.span_id) for link in replayed.links] == [(to_delegate.trace_id, to_delegate.span_id)]
