"""Resumable answer streams: a request's SSE stream that the upstream ends before the answer is resumed
with GET + Last-Event-ID (MCP 2025-11-25 "SSE polling"), honouring `retry`, within the call's timeout."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import mcp_types as types
import pytest
from aiohttp import web

from gateway.config.model import UpstreamConfig
from gateway.errors import GatewayError
from gateway.transport.base import Message
from gateway.transport.common import never_sent
from gateway.transport.streamable_http import StreamableHttpUpstream
from tests.conformance.target_server import MemoryEventStore, build_server
from tests.support.mcp_client import sdk_client
from tests.support.servers import SeenRequest, run_asgi
from tests.transport.conftest import CLIENT_CAPS, Inbox, Scripted, call, text_of

Start = Callable[..., Awaitable[Scripted]]


# The target logs through the (deprecated as of 2026-07-28) logging capability, as the suite asks.
@pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")
async def test_call_through_gateway_survives_upstream_closing_its_stream(start_gateway, permissive_policies) -> None:
    """The conformance target's test_reconnection closes its POST stream after a priming event
    (id + retry 100 ms), logs, then answers: the gateway resumes and the agent gets the result."""
    seen: list[SeenRequest] = []
    app = build_server().streamable_http_app(event_store=MemoryEventStore(), retry_interval=100, host="127.0.0.1")
    async with run_asgi(app, requests=seen) as base:
        gw = await start_gateway({"upstreams": [{"name": "target", "url": f"{base}/mcp", "timeout_s": 20}],
                                  "policies": {"dir": str(permissive_policies)}})
        logs: list[Any] = []

        async def on_log(params: types.LoggingMessageNotificationParams) -> None:
            logs.append(params.data)

        async with sdk_client(f"{gw.mcp}/target", logging_callback=on_log) as client:
            assert client.protocol_version == "2025-11-25"
            result = await client.call_tool("test_reconnection", {})
    assert not result.is_error, result
    assert result.content[0].text == "Reconnection test completed"  # type: ignore[union-attr]
    assert "After reconnect" in logs  # sent while the stream was closed: replayed on the resumed one
    resumes = [r for r in seen if r.method == "GET" and "last-event-id" in r.headers]
    assert len(resumes) >= 1
    assert all(r.headers.get("mcp-session-id") and r.headers.get("mcp-protocol-version") == "2025-11-25"
               for r in resumes)


def sse(*events: str) -> bytes:
    return "".join(event + "\n\n" for event in events).encode()


async def sse_response(request: web.Request, body: bytes) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    await response.write(body)
    await response.write_eof()
    return response


def answer(message: Message, text: str) -> str:
    result = {"content": [{"type": "text", "text": text}]}
    return "data: " + json.dumps({"jsonrpc": "2.0", "id": message["id"], "result": result})


async def test_resume_sends_last_event_id_session_and_credential_after_retry(
        http: aiohttp.ClientSession, scripted: Start) -> None:
    """A priming event with no data line at all (id + retry only) still gives the id to resume from."""
    closed_at: list[float] = []
    resumed_at: list[float] = []
    pending: list[Message] = []

    async def on_call(request: web.Request, message: Message) -> web.StreamResponse:
        pending.append(message)
        response = await sse_response(request, sse("id: p-7\nretry: 300"))
        closed_at.append(time.monotonic())
        return response

    async def on_get(request: web.Request) -> web.StreamResponse:
        if request.headers.get("Last-Event-ID") != "p-7":
            return web.Response(status=405)
        resumed_at.append(time.monotonic())
        return await sse_response(request, sse(f"id: p-8\n{answer(pending[0], 'resumed')}"))

    up = await scripted(on_call, on_get)
    upstream = StreamableHttpUpstream(UpstreamConfig(name="up", url=up.url, timeout_s=10), http)
    await upstream.start()
    session = await upstream.connect(CLIENT_CAPS, Inbox())
    response = await session.request(call("slow"), headers={"Authorization": "Bearer per-call"})
    await upstream.stop()
    assert text_of(response) == "resumed" and response["id"] == 1
    (resume,) = [h for h in up.headers if h.get("Last-Event-ID")]
    assert resume["Last-Event-ID"] == "p-7" and resume["Mcp-Session-Id"] == "s-1"
    assert resume["Authorization"] == "Bearer per-call"
    assert resume["MCP-Protocol-Version"] == "2025-11-25"
    assert resumed_at[0] - closed_at[0] >= 0.25  # the server's retry (300 ms) was honoured


async def test_stream_without_event_ids_still_fails(http: aiohttp.ClientSession, scripted: Start) -> None:
    async def on_call(request: web.Request, message: Message) -> web.StreamResponse:
        return await sse_response(request, sse('data: {"jsonrpc": "2.0", "method": "notifications/message", '
                                               '"params": {"level": "info", "data": "x"}}'))

    up = await scripted(on_call)
    upstream = StreamableHttpUpstream(UpstreamConfig(name="up", url=up.url, timeout_s=10), http)
    await upstream.start()
    session = await upstream.connect(CLIENT_CAPS, Inbox())
    with pytest.raises(GatewayError) as info:
        await session.request(call("slow"))
    await upstream.stop()
    assert info.value.reason == "upstream_unavailable" and "before answering" in info.value.message
    assert not [h for h in up.headers if h.get("Last-Event-ID")]


async def test_resume_gives_up_after_reconnects_without_progress(http: aiohttp.ClientSession,
                                                                 scripted: Start) -> None:
    async def on_call(request: web.Request, message: Message) -> web.StreamResponse:
        return await sse_response(request, sse("id: 1\nretry: 10\ndata: "))

    async def on_get(request: web.Request) -> web.StreamResponse:
        if not request.headers.get("Last-Event-ID"):
            return web.Response(status=405)
        return await sse_response(request, b": nothing new\n\n")

    up = await scripted(on_call, on_get)
    upstream = StreamableHttpUpstream(UpstreamConfig(name="up", url=up.url, timeout_s=10), http)
    await upstream.start()
    session = await upstream.connect(CLIENT_CAPS, Inbox())
    with pytest.raises(GatewayError) as info:
        await session.request(call("slow"))
    await upstream.stop()
    assert info.value.reason == "upstream_unavailable"
    assert [h["Last-Event-ID"] for h in up.headers if h.get("Last-Event-ID")] == ["1", "1", "1"]


async def test_resume_keeps_the_call_timeout(http: aiohttp.ClientSession, scripted: Start) -> None:
    """A `retry` longer than the call may still wait: the call times out (and is cancelled upstream)."""
    async def on_call(request: web.Request, message: Message) -> web.StreamResponse:
        return await sse_response(request, sse("id: 1\nretry: 60000\ndata: "))

    up = await scripted(on_call)
    upstream = StreamableHttpUpstream(UpstreamConfig(name="up", url=up.url, timeout_s=10), http)
    await upstream.start()
    session = await upstream.connect(CLIENT_CAPS, Inbox())
    started = time.monotonic()
    with pytest.raises(GatewayError) as info:
        await session.request(call("slow"), timeout=0.5)
    elapsed = time.monotonic() - started
    await upstream.stop()
    assert info.value.reason == "upstream_timeout" and elapsed < 5
    assert up.count("notifications/cancelled") == 1


async def test_a_session_forgotten_while_resuming_may_have_run_the_call(http: aiohttp.ClientSession,
                                                                        scripted: Start) -> None:
    """The upstream took the call (its stream gave an event id) and then forgot the session: the GET resuming the
    answer meets a 404, the same `upstream_unavailable` as a POST refused for that session, but the call may have
    run. It is not `never_sent`, or its approval would be handed back and its task share given back for a payment
    that went out."""
    async def on_call(request: web.Request, message: Message) -> web.StreamResponse:
        return await sse_response(request, sse("id: p-1\nretry: 0"))

    async def on_get(request: web.Request) -> web.StreamResponse:
        return web.Response(status=404 if request.headers.get("Last-Event-ID") else 405)

    up = await scripted(on_call, on_get)
    upstream = StreamableHttpUpstream(UpstreamConfig(name="up", url=up.url, timeout_s=10), http)
    await upstream.start()
    session = await upstream.connect(CLIENT_CAPS, Inbox())
    with pytest.raises(GatewayError) as info:
        await session.request(call("pay"))
    await upstream.stop()
    assert info.value.reason == "upstream_unavailable" and info.value.data.get("session") == "expired", info.value
    assert [h["Last-Event-ID"] for h in up.headers if h.get("Last-Event-ID")] == ["p-1"]
    assert not never_sent(info.value)
