"""Every inbound request is traced and every upstream request it makes carries its trace (issue 6).

Not only the pipeline's calls: a tools/list fanned out to an HTTP and a stdio upstream sends each of
them a CLIENT span's context (header and `_meta`), and a request over the legacy HTTP+SSE transport
gets the same SERVER span, stage children and duration metric as one over streamable HTTP.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from mcp import Client
from mcp.client.sse import sse_client

from gateway.demo.servers import inventory_server
from tests.conftest import RunningGateway
from tests.support.mcp_client import sdk_client
from tests.support.otlp import OtlpReceiver, ReceivedSpan
from tests.support.servers import SeenRequest, run_http_server
from tests.telemetry.meta_echo_server import META_ECHO_SERVER_PATH

AGENT_TRACE, AGENT_SPAN = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
AGENT_PARENT = f"00-{AGENT_TRACE}-{AGENT_SPAN}-01"

StartGateway = Callable[[dict[str, Any]], Awaitable[RunningGateway]]


def one(spans: list[ReceivedSpan], **where: Any) -> ReceivedSpan:
    found = [s for s in spans if all(getattr(s, k) == v for k, v in where.items())]
    assert len(found) == 1, (where, [(s.name, s.kind, s.attributes.get("customs.upstream")) for s in spans])
    return found[0]


def one_with(spans: list[ReceivedSpan], upstream: str) -> ReceivedSpan:
    found = [s for s in spans if s.attributes.get("customs.upstream") == upstream]
    assert len(found) == 1, (upstream, [(s.name, s.attributes) for s in spans])
    return found[0]


def traceparent(span: ReceivedSpan) -> str:
    return f"00-{span.trace_id}-{span.span_id}-01"


async def test_tools_list_reaches_http_and_stdio_upstreams_with_the_trace(
        otlp: OtlpReceiver, start_gateway: StartGateway, permissive_policies: Path) -> None:
    seen: list[SeenRequest] = []
    async with run_http_server(inventory_server(), requests=seen) as inventory_url:
        gateway = await start_gateway({
            "upstreams": [{"name": "inventory", "url": inventory_url},
                          {"name": "echo", "command": [sys.executable, META_ECHO_SERVER_PATH]}],
            "identity": {"mode": "anonymous", "anonymous_attributes": {"tenant": "acme"}},
            "policies": {"dir": str(permissive_policies)},
            "telemetry": {"traces": {"endpoint": otlp.url}},
        })
        async with sdk_client(gateway.mcp) as client:
            seen.clear()  # the upstream session's initialize is not what this test is about
            tools = {t.name: t for t in (await client.list_tools(meta={"traceparent": AGENT_PARENT})).tools}
        await gateway.gateway.parts.observability.telemetry.flush()

    server = await otlp.wait_for_span(lambda s: s.kind == "SERVER" and s.name == "tools/list")
    assert (server.trace_id, server.parent_span_id) == (AGENT_TRACE, AGENT_SPAN)
    # The conventions' connection attributes: who connected (the SDK client's socket) and over what.
    assert server.attributes["client.address"] == "127.0.0.1"
    assert isinstance(server.attributes["client.port"], int) and server.attributes["client.port"] > 0
    assert server.attributes["network.protocol.name"] == "http"
    assert server.attributes["network.protocol.version"] == "1.1"
    clients = await otlp.wait_for(lambda r: len(found := [s for s in r.children(server) if s.kind == "CLIENT"
                                                          and s.name == "tools/list"]) >= 2 and found)
    to_http = one_with(clients, "inventory")
    to_stdio = one_with(clients, "echo")
    assert to_http.attributes["customs.upstream"] == "inventory"
    assert to_http.attributes["network.transport"] == "tcp" and to_http.attributes["server.address"] == "127.0.0.1"
    assert to_http.attributes["network.protocol.version"] == "1.1"
    assert to_http.attributes["mcp.method.name"] == "tools/list" and "jsonrpc.request.id" in to_http.attributes
    assert to_stdio.attributes["customs.upstream"] == "echo" and to_stdio.attributes["network.transport"] == "pipe"

    # HTTP upstream: the header is the CLIENT span's context, in the agent's trace; the session the list opened
    # carried its set-up span's (initialize, then notifications/initialized); no stdio set-up span (see below).
    opening = one(await otlp.wait_for(lambda r: [s for s in r.spans if s.name == "initialize" and s.kind == "CLIENT"]),
                  name="initialize")
    assert (opening.trace_id, opening.parent_span_id, opening.attributes["customs.upstream"]) == (
        AGENT_TRACE, server.span_id, "inventory")
    posts = [r for r in seen if r.method == "POST"]
    assert [r.headers.get("traceparent") for r in posts] == [traceparent(opening)] * 2 + [traceparent(to_http)]
    # stdio upstream: `_meta` is the only channel; the server echoed what it received.
    echoed = json.loads(tools["echo__seen_meta"].description or "{}")
    assert echoed["traceparent"] == traceparent(to_stdio)


async def test_legacy_sse_request_is_traced_like_streamable_http(
        otlp: OtlpReceiver, start_gateway: StartGateway, permissive_policies: Path) -> None:
    async with run_http_server(inventory_server()) as inventory_url:
        gateway = await start_gateway({
            "upstreams": [{"name": "inventory", "url": inventory_url}],
            "identity": {"mode": "anonymous", "anonymous_attributes": {"tenant": "acme"}},
            "policies": {"dir": str(permissive_policies)},
            "telemetry": {"traces": {"endpoint": otlp.url},
                          "metrics": {"prometheus": False, "otlp_endpoint": otlp.url}},
        })
        async with Client(sse_client(f"{gateway.url}/sse"), mode="legacy") as client:
            result = await client.call_tool("inventory__get_stock", {"sku": "widget"},
                                            meta={"traceparent": AGENT_PARENT})  # type: ignore[arg-type]
        obs = gateway.gateway.parts.observability
        await obs.telemetry.flush()
        await obs.metrics.flush()
    assert not result.is_error

    server = await otlp.wait_for_span(lambda s: s.name == "tools/call inventory__get_stock")
    assert server.kind == "SERVER" and (server.trace_id, server.parent_span_id) == (AGENT_TRACE, AGENT_SPAN)
    assert server.attributes["mcp.method.name"] == "tools/call" and "mcp.session.id" in server.attributes
    assert server.attributes["customs.decision"] == "allow" and server.attributes["customs.upstream"] == "inventory"
    assert server.attributes["client.address"] == "127.0.0.1" and server.attributes["network.protocol.version"] == "1.1"
    expected = {"customs.identify", "customs.authorize", "customs.credential", "tools/call get_stock"}
    children = await otlp.wait_for(lambda r: expected <= {s.name for s in r.children(server)} and r.children(server))
    assert one(children, name="tools/call get_stock").kind == "CLIENT"
    initialize = await otlp.wait_for_span(lambda s: s.kind == "SERVER" and s.name == "initialize")
    assert {"customs.identify"} <= {s.name for s in otlp.children(initialize)}
    point = await otlp.wait_for_point(lambda p: p.metric == "mcp.server.operation.duration"
                                      and p.attributes.get("mcp.method.name") == "tools/call")
    assert point.count == 1 and point.attributes["gen_ai.tool.name"] == "inventory__get_stock"


async def test_each_connection_names_its_own_client_port(otlp: OtlpReceiver, start_gateway: StartGateway,
                                                         permissive_policies: Path) -> None:
    """A connection's client.address/port are built once and shared by its requests' spans: two clients on two
    connections each see their own port, and a client's requests all carry the same one."""
    async with run_http_server(inventory_server()) as inventory_url:
        gateway = await start_gateway({"upstreams": [{"name": "inventory", "url": inventory_url}],
                                       "policies": {"dir": str(permissive_policies)},
                                       "telemetry": {"traces": {"endpoint": otlp.url}}})
        async with sdk_client(gateway.mcp) as first, sdk_client(gateway.mcp) as second:
            for client in (first, second, first, second):
                await client.list_tools()
        spans = await otlp.wait_for(lambda r: len([s for s in r.spans if s.kind == "SERVER"
                                                   and s.name == "tools/list"]) >= 4 and r.spans)
    ports: dict[str, set[int]] = {}
    for span in spans:
        if span.kind == "SERVER" and span.name == "tools/list":
            assert span.attributes["client.address"] == "127.0.0.1"
            ports.setdefault(span.attributes["mcp.session.id"], set()).add(span.attributes["client.port"])
    assert len(ports) == 2 and all(len(p) >= 1 for p in ports.values())
    assert not set.intersection(*ports.values())  # no connection's port given to the other's requests
