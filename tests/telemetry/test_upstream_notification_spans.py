"""What an upstream sends on its own is traced as the MCP conventions trace a notification (issue 6).

The gateway receives the notification (the conventions' receiver: a SERVER span named by its method, parented
on its `params._meta` context, else on the ambient one) and passes it on to the agent (their sender: a CLIENT
span, whose context the agent gets in `params._meta`):

- progress and log lines an upstream sends during a call belong to that call: the SERVER span is a child of the
  call's CLIENT span, whichever transport brought them (the answer stream of a streamable HTTP upstream, the
  stream of a legacy SSE one, a stdio child's pipe, both read by a task of their own);
- `notifications/*/list_changed` and `notifications/resources/updated` sent outside any call belong to no
  request: their SERVER span is a root (or a child of the context the upstream put in `_meta`).

Real gateway, real SDK upstreams (streamable HTTP, legacy SSE, stdio), real SDK agent, real OTLP receiver.
"""

from __future__ import annotations

import asyncio
import sys
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import mcp_types as types
import pytest
from mcp.server.mcpserver import Context, MCPServer

from tests.conftest import RunningGateway
from tests.support.feature_server import FEATURE_SERVER_PATH, feature_server
from tests.support.mcp_client import sdk_client
from tests.support.otlp import OtlpReceiver, ReceivedSpan
from tests.support.servers import run_http_server, run_sse_server

StartGateway = Callable[[dict[str, Any]], Awaitable[RunningGateway]]
UPSTREAM_TRACE, UPSTREAM_SPAN = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"


def traceparent(span: ReceivedSpan) -> str:
    return f"00-{span.trace_id}-{span.span_id}-01"


@asynccontextmanager
async def feature_upstream(transport: str) -> AsyncIterator[dict[str, Any]]:
    """The feature server as an upstream's config entry, over `transport`."""
    if transport == "stdio":
        yield {"name": "feat", "command": [sys.executable, FEATURE_SERVER_PATH]}
        return
    server, _ = feature_server()
    run = run_sse_server if transport == "sse" else run_http_server
    async with run(server) as url:
        yield {"name": "feat", "url": url, **({"transport": "sse"} if transport == "sse" else {})}


@pytest.mark.parametrize("transport", ["http", "sse", "stdio"])
async def test_progress_and_log_lines_of_a_call_are_in_its_trace(transport: str, otlp: OtlpReceiver,
                                                                 start_gateway: StartGateway,
                                                                 permissive_policies: Path) -> None:
    logs: list[types.LoggingMessageNotificationParams] = []
    progress: list[float] = []

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        logs.append(params)

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append(done)

    async with feature_upstream(transport) as upstream:
        gateway = await start_gateway({"upstreams": [upstream], "identity": {"mode": "anonymous"},
                                       "policies": {"dir": str(permissive_policies)},
                                       "telemetry": {"traces": {"endpoint": otlp.url}}})
        async with sdk_client(gateway.mcp, logging_callback=on_log) as client:
            result = await client.call_tool("feat__progress", {"steps": 2}, progress_callback=on_progress)
            assert not result.is_error
        await gateway.gateway.parts.observability.telemetry.flush()
    assert progress == [1, 2] and [p.data for p in logs] == ["log 1", "log 2"], (progress, logs)
    call = await otlp.wait_for_span(lambda s: s.kind == "CLIENT" and s.name == "tools/call progress")
    for method in ("notifications/progress", "notifications/message"):
        received = [s for s in otlp.trace(call.trace_id) if s.kind == "SERVER" and s.name == method]
        assert len(received) == 2 and all(s.parent_span_id == call.span_id for s in received), received
        assert all(s.attributes["customs.upstream"] == "feat" and s.attributes["mcp.method.name"] == method
                   and "jsonrpc.request.id" not in s.attributes for s in received), received
        relayed = [s for s in otlp.trace(call.trace_id) if s.kind == "CLIENT" and s.name == method]
        assert sorted(s.parent_span_id or "" for s in relayed) == sorted(s.span_id for s in received), relayed
    server = next(s for s in otlp.trace(call.trace_id) if s.kind == "SERVER" and s.name == "tools/call feat__progress")
    relayed_logs = [s for s in otlp.trace(call.trace_id) if s.kind == "CLIENT" and s.name == "notifications/message"]
    assert all(s.attributes["mcp.session.id"] == server.attributes["mcp.session.id"] for s in relayed_logs)
    # The agent gets the context of the span that sent it each line: its own handling can join the trace.
    assert sorted((p.meta or {}).get("traceparent", "") for p in logs) == sorted(map(traceparent, relayed_logs))


def announcing_server() -> MCPServer[Any]:
    """An SDK server whose tool `announce` sends, outside its call, tools/list_changed and resources/updated (the
    latter with a trace context of the upstream's own in `_meta` when given one)."""
    server: MCPServer[Any] = MCPServer("announcer")

    @server.tool()
    async def announce(uri: str, ctx: Context, parent: str = "") -> str:
        """Announce a change of the tool list and an update of `uri`."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            await ctx.session.send_tool_list_changed()
        params = types.ResourceUpdatedNotificationParams(uri=uri, _meta={"traceparent": parent} if parent else None)
        await ctx.session.send_notification(types.ResourceUpdatedNotification(params=params))
        return "announced"

    @server.tool()
    async def chatter(parent: str, ctx: Context) -> str:
        """Send a log line on this call's stream with `parent` as its trace context (an upstream that traces)."""
        params = types.LoggingMessageNotificationParams(level="info", data="chatter", _meta={"traceparent": parent})
        await ctx.session.send_notification(types.LoggingMessageNotification(params=params),
                                            related_request_id=ctx.request_id)
        return "chattered"

    return server


class Received:
    """The notifications an agent's `message_handler` got, and one arriving."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self.changed = asyncio.Event()

    async def __call__(self, message: Any) -> None:
        if isinstance(message, types.ToolListChangedNotification | types.ResourceUpdatedNotification):
            self.items.append(message)
            self.changed.set()

    async def both(self) -> None:
        async with asyncio.timeout(10):
            while {m.method for m in self.items} != {"notifications/tools/list_changed",
                                                      "notifications/resources/updated"}:
                self.changed.clear()
                await self.changed.wait()


async def test_unsolicited_notifications_are_traces_of_their_own(otlp: OtlpReceiver, start_gateway: StartGateway,
                                                                permissive_policies: Path) -> None:
    received = Received()
    async with run_http_server(announcing_server()) as url:
        gateway = await start_gateway({"upstreams": [{"name": "up", "url": url}], "identity": {"mode": "anonymous"},
                                       "policies": {"dir": str(permissive_policies)},
                                       "telemetry": {"traces": {"endpoint": otlp.url}}})
        async with sdk_client(gateway.mcp, message_handler=received) as client:
            parent = f"00-{UPSTREAM_TRACE}-{UPSTREAM_SPAN}-01"
            result = await client.call_tool("up__announce", {"uri": "fake://r", "parent": parent})
            assert not result.is_error
            await received.both()
        await gateway.gateway.parts.observability.telemetry.flush()
    call = await otlp.wait_for_span(lambda s: s.kind == "SERVER" and s.name == "tools/call up__announce")
    changed = await otlp.wait_for_span(lambda s: s.kind == "SERVER" and s.name == "notifications/tools/list_changed")
    # No request to belong to: a root, in no call's trace.
    assert changed.parent_span_id is None and changed.trace_id != call.trace_id, changed
    assert changed.attributes["customs.upstream"] == "up" and not changed.links
    updated = await otlp.wait_for_span(lambda s: s.kind == "SERVER" and s.name == "notifications/resources/updated")
    # The upstream's own context in `_meta` is the parent, as for any notification received.
    assert (updated.trace_id, updated.parent_span_id) == (UPSTREAM_TRACE, UPSTREAM_SPAN), updated
    assert updated.attributes["mcp.resource.uri"] == "fake://r"
    for server, method in ((changed, "notifications/tools/list_changed"), (updated, "notifications/resources/updated")):
        relay = await otlp.wait_for_span(lambda s, m=method: s.kind == "CLIENT" and s.name == m)  # type: ignore[misc]
        assert (relay.trace_id, relay.parent_span_id) == (server.trace_id, server.span_id), relay
        assert relay.attributes["mcp.session.id"] == call.attributes["mcp.session.id"]
        sent = next(m for m in received.items if m.method == method)
        assert (sent.params.meta or {})["traceparent"] == traceparent(relay), sent
    relayed_update = next(m for m in received.items if m.method == "notifications/resources/updated")
    assert relayed_update.params.uri == "customs://up/fake://r"


@pytest.mark.parametrize("trusted", [True, False])
async def test_an_upstreams_own_context_is_the_parent_and_the_call_a_link(trusted: bool, otlp: OtlpReceiver,
                                                                          start_gateway: StartGateway,
                                                                          permissive_policies: Path) -> None:
    # The conventions: the `_meta` context is the parent, the ambient one (the call's CLIENT span) a link. With
    # `trust_inbound: false` the upstream's context is only a link, and the call's span is the parent.
    logs: list[types.LoggingMessageNotificationParams] = []

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        logs.append(params)

    async with run_http_server(announcing_server()) as url:
        gateway = await start_gateway({"upstreams": [{"name": "up", "url": url}], "identity": {"mode": "anonymous"},
                                       "policies": {"dir": str(permissive_policies)},
                                       "telemetry": {"traces": {"endpoint": otlp.url, "trust_inbound": trusted}}})
        async with sdk_client(gateway.mcp, logging_callback=on_log) as client:
            parent = f"00-{UPSTREAM_TRACE}-{UPSTREAM_SPAN}-01"
            assert not (await client.call_tool("up__chatter", {"parent": parent})).is_error
        await gateway.gateway.parts.observability.telemetry.flush()
    call = await otlp.wait_for_span(lambda s: s.kind == "CLIENT" and s.name == "tools/call chatter")
    line = await otlp.wait_for_span(lambda s: s.kind == "SERVER" and s.name == "notifications/message")
    links = {(link.trace_id, link.span_id, link.attributes["customs.link"]) for link in line.links}
    if trusted:
        assert (line.trace_id, line.parent_span_id) == (UPSTREAM_TRACE, UPSTREAM_SPAN), line
        assert links == {(call.trace_id, call.span_id, "call")}, links
    else:
        assert (line.trace_id, line.parent_span_id) == (call.trace_id, call.span_id), line
        assert links == {(UPSTREAM_TRACE, UPSTREAM_SPAN, "untrusted_parent")}, links
    relay = await otlp.wait_for_span(lambda s: s.kind == "CLIENT" and s.name == "notifications/message")
    assert (relay.trace_id, relay.parent_span_id) == (line.trace_id, line.span_id), relay
    assert [(p.data, (p.meta or {}).get("traceparent")) for p in logs] == [("chatter", traceparent(relay))], logs
