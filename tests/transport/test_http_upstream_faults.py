"""HTTP upstream behaviour at the edges: exact headers, redirects, garbage, resets, expiry, breaker, probe."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.config.model import UpstreamConfig
from gateway.demo.servers import inventory_server, payments_server
from gateway.errors import GatewayError
from gateway.transport.base import Message
from gateway.transport.common import CircuitBreaker
from gateway.transport.streamable_http import StreamableHttpUpstream
from tests.support.servers import SeenRequest, run_asgi, run_http_server, run_sse_server
from tests.transport.conftest import CLIENT_CAPS, Inbox, Scripted, call, eventually, text_of

PROTOCOL = {"host", "accept", "accept-encoding", "user-agent", "content-type", "content-length"}
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def http_upstream(url: str, http: aiohttp.ClientSession, **config: Any) -> StreamableHttpUpstream:
    return StreamableHttpUpstream(UpstreamConfig(name="up", url=url, **config), http)


async def test_exact_header_set_streamable_http(http: aiohttp.ClientSession) -> None:
    seen: list[SeenRequest] = []
    async with run_http_server(inventory_server(), requests=seen) as url:
        upstream = http_upstream(url, http, headers={"X-Static": "static"})
        await upstream.start()
        session = await upstream.connect(CLIENT_CAPS, Inbox())
        given = {"Authorization": "Bearer minted", "traceparent": TRACEPARENT,
                 "Host": "evil.example", "Mcp-Session-Id": "forged"}  # the last two are never passed on
        response = await session.request(call("get_stock", {"sku": "widget"}), headers=given)
        assert text_of(response) == "widget: 42 in stock"
        await upstream.stop()
    posts = [r for r in seen if r.method == "POST"]
    init, initialized, tool_call = posts
    assert set(init.headers) == PROTOCOL | {"x-static"}
    assert set(initialized.headers) == PROTOCOL | {"x-static", "mcp-session-id", "mcp-protocol-version"}
    assert set(tool_call.headers) == PROTOCOL | {"x-static", "mcp-session-id", "mcp-protocol-version",
                                                 "authorization", "traceparent"}
    assert tool_call.headers["authorization"] == "Bearer minted"
    assert tool_call.headers["host"] == url.split("/")[2]
    assert tool_call.headers["mcp-session-id"] == initialized.headers["mcp-session-id"] != "forged"
    assert tool_call.headers["mcp-protocol-version"] == "2025-11-25"
    assert [r.method for r in seen if r.method == "DELETE"] == ["DELETE"]  # close() ended the session


async def test_exact_header_set_legacy_sse(http: aiohttp.ClientSession) -> None:
    from gateway.transport.sse import SseUpstream

    seen: list[SeenRequest] = []
    async with run_sse_server(payments_server(), requests=seen) as url:
        upstream = SseUpstream(UpstreamConfig(name="pay", url=url, transport="sse", headers={"X-Static": "s"}), http)
        await upstream.start()
        session = await upstream.connect(CLIENT_CAPS, Inbox())
        response = await session.request(call("pay", {"account": "A-1", "amount": 5}),
                                         headers={"Authorization": "Bearer minted"})
        assert text_of(response) == "paid 5.0 to A-1"
        await upstream.stop()
    tool_call = [r for r in seen if r.method == "POST"][-1]
    assert set(tool_call.headers) == PROTOCOL | {"x-static", "authorization"}


async def test_down_at_start_then_up(http: aiohttp.ClientSession, bound_socket: socket.socket) -> None:
    url = f"http://127.0.0.1:{bound_socket.getsockname()[1]}/mcp"
    upstream = http_upstream(url, http)
    await upstream.start()
    health = await upstream.probe()
    assert not health.ready and "connection failed" in health.detail
    with pytest.raises(GatewayError) as info:
        await upstream.connect(CLIENT_CAPS, Inbox())
    assert info.value.reason == "upstream_unavailable"
    assert not upstream.health().ready
    async with run_http_server(inventory_server(), sock=bound_socket):
        assert (await upstream.probe()).ready
        session = await upstream.connect(CLIENT_CAPS, Inbox())
        assert text_of(await session.request(call("get_stock", {"sku": "gadget"}))) == "gadget: 7 in stock"
        assert upstream.health().ready
        await upstream.stop()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_circuit_breaker_fails_fast_then_allows_one_trial(http: aiohttp.ClientSession,
                                                               bound_socket: socket.socket) -> None:
    url = f"http://127.0.0.1:{bound_socket.getsockname()[1]}/mcp"
    upstream = http_upstream(url, http)
    clock = FakeClock()
    upstream.breaker = CircuitBreaker(threshold=2, cooldown_s=10, clock=clock)
    await upstream.start()
    for _ in range(2):
        with pytest.raises(GatewayError) as info:
            await upstream.connect(CLIENT_CAPS, Inbox())
        assert info.value.reason == "upstream_unavailable" and "circuit" not in info.value.data
    seen: list[SeenRequest] = []
    async with run_http_server(inventory_server(), sock=bound_socket, requests=seen):
        with pytest.raises(GatewayError) as info:
            await upstream.connect(CLIENT_CAPS, Inbox())
        assert info.value.reason == "upstream_unavailable" and info.value.data["circuit"] == "open"
        assert seen == []  # failed fast: the (now running) upstream was not contacted
        health = upstream.health()
        assert not health.ready and "circuit open" in health.detail
        assert "circuit open" in (await upstream.probe()).detail
        clock.now += 10
        session = await upstream.connect(CLIENT_CAPS, Inbox())  # the one trial succeeds and closes the circuit
        assert upstream.health().ready and not upstream.breaker.is_open
        assert text_of(await session.request(call("get_stock", {"sku": "widget"}))) == "widget: 42 in stock"
        await upstream.stop()


def test_breaker_trial_failure_reopens() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(threshold=3, cooldown_s=5, clock=clock)
    for _ in range(3):
        breaker.check()
        breaker.failure()
    assert breaker.is_open
    clock.now += 5
    breaker.check()  # the trial
    with pytest.raises(GatewayError):
        breaker.check()  # only one trial at a time
    breaker.failure()
    with pytest.raises(GatewayError):
        breaker.check()  # re-opened with a fresh cooldown
    clock.now += 5
    breaker.check()
    breaker.success()
    assert not breaker.is_open and breaker.failures == 0


def test_breaker_trial_without_outcome_does_not_wedge_the_circuit() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(threshold=1, cooldown_s=5, clock=clock)
    breaker.failure()
    clock.now += 5
    breaker.check()  # a trial that then hangs or times out: no success(), no failure()
    with pytest.raises(GatewayError):
        breaker.check()
    clock.now += 5
    breaker.check()  # another cooldown later, the next call is the trial
    breaker.success()
    breaker.check()


async def test_redirect_is_not_followed(http: aiohttp.ClientSession, scripted: Callable[..., Awaitable[Scripted]]
                                        ) -> None:
    other_seen: list[SeenRequest] = []
    async with run_http_server(inventory_server(), requests=other_seen) as other:
        async def redirect(request: web.Request, message: Message) -> web.StreamResponse:
            raise web.HTTPTemporaryRedirect(other)

        target = await scripted(redirect)
        upstream = http_upstream(target.url, http)
        session = await upstream.connect(CLIENT_CAPS, Inbox())
        with pytest.raises(GatewayError) as info:
            await session.request(call("get_stock", {"sku": "widget"}))
        assert info.value.reason == "upstream_error" and info.value.data["status"] == 307

        # a redirect at connect time is refused the same way
        async def app(scope: Any, receive: Any, send: Any) -> None:
            await send({"type": "http.response.start", "status": 302, "headers": [(b"location", other.encode())]})
            await send({"type": "http.response.body", "body": b""})

        async with run_asgi(app) as redirector:
            with pytest.raises(GatewayError) as info:
                await http_upstream(f"{redirector}/mcp", http).connect(CLIENT_CAPS, Inbox())
            assert info.value.reason == "upstream_error"
        await session.close()
    assert other_seen == []


def _sse(*messages: Any) -> bytes:
    return b"".join(b"event: message\ndata: " + (m if isinstance(m, bytes) else json.dumps(m).encode()) + b"\n\n"
                    for m in messages)


GARBAGE: dict[str, Callable[[int], web.Response]] = {
    "html": lambda i: web.Response(text="<html>hello</html>", content_type="text/html"),
    "invalid_json": lambda i: web.Response(text="{not json", content_type="application/json"),
    "wrong_id": lambda i: web.json_response({"jsonrpc": "2.0", "id": i + 1000, "result": {}}),
    "string_id": lambda i: web.json_response({"jsonrpc": "2.0", "id": str(i), "result": {}}),
    "no_jsonrpc": lambda i: web.json_response({"id": i, "result": {}}),
    "batch": lambda i: web.json_response([{"jsonrpc": "2.0", "id": i, "result": {}}]),
    "result_and_error": lambda i: web.json_response({"jsonrpc": "2.0", "id": i, "result": {}, "error": {}}),
    "neither": lambda i: web.json_response({"jsonrpc": "2.0", "id": i}),
    "accepted_without_answer": lambda i: web.Response(status=202),
    "server_error_text": lambda i: web.Response(status=500, text="boom"),
    "unauthorized": lambda i: web.Response(status=401, text="no"),
    "sse_garbage": lambda i: web.Response(body=_sse(b"{oops"), content_type="text/event-stream"),
    "sse_wrong_id": lambda i: web.Response(body=_sse({"jsonrpc": "2.0", "id": i + 1, "result": {}}),
                                           content_type="text/event-stream"),
    "sse_array": lambda i: web.Response(body=_sse([1, 2]), content_type="text/event-stream"),
    # Python's parser reads these literals, JSON has no such numbers: they reached the agent as null.
    "nan": lambda i: web.Response(text=f'{{"jsonrpc":"2.0","id":{i},"result":{{"n":NaN}}}}',
                                  content_type="application/json"),
    "sse_infinity": lambda i: web.Response(body=_sse(b'{"jsonrpc":"2.0","id":%d,"result":{"n":-Infinity}}' % i),
                                           content_type="text/event-stream"),
    # No JSON-RPC error object (an integer code and a string message): passed on, the agent's client would choke.
    "error_code_string": lambda i: web.json_response({"jsonrpc": "2.0", "id": i, "error": {"code": "-1",
                                                                                         "message": "x"}}),
    "error_without_message": lambda i: web.json_response({"jsonrpc": "2.0", "id": i, "error": {"code": -32000}}),
    "sse_error_code_float": lambda i: web.Response(
        body=_sse({"jsonrpc": "2.0", "id": i, "error": {"code": 1.5, "message": "x"}}),
        content_type="text/event-stream"),
}


# 1e400 is valid JSON but no double: Python's parser reads it as infinity, which reached the agent as null.
OVERFLOW: dict[str, Callable[[int], web.Response]] = {
    "json": lambda i: web.Response(text=f'{{"jsonrpc":"2.0","id":{i},"result":{{"n":1e400}}}}',
                                   content_type="application/json"),
    "sse": lambda i: web.Response(body=_sse(b'{"jsonrpc":"2.0","id":%d,"result":{"n":[-1E400]}}' % i),
                                  content_type="text/event-stream"),
}


@pytest.mark.parametrize("kind", sorted(OVERFLOW))
async def test_a_number_past_a_double_is_upstream_error_not_null(
        kind: str, http: aiohttp.ClientSession, scripted: Callable[..., Awaitable[Scripted]]) -> None:
    async def answer(request: web.Request, message: Message) -> web.StreamResponse:
        return OVERFLOW[kind](message["id"])

    target = await scripted(answer)
    session = await http_upstream(target.url, http, timeout_s=600).connect(CLIENT_CAPS, Inbox())
    with pytest.raises(GatewayError) as info:
        await asyncio.wait_for(session.request(call("x")), 10)  # the answer fails the call, not its timeout
    assert info.value.reason == "upstream_error" and "out of range" in info.value.message
    assert "1e400" in info.value.message.lower()
    await session.close()


@pytest.mark.parametrize("kind", sorted(GARBAGE))
async def test_garbage_answer_is_upstream_error(kind: str, http: aiohttp.ClientSession,
                                                scripted: Callable[..., Awaitable[Scripted]]) -> None:
    async def answer(request: web.Request, message: Message) -> web.StreamResponse:
        return GARBAGE[kind](message["id"])

    target = await scripted(answer)
    session = await http_upstream(target.url, http).connect(CLIENT_CAPS, Inbox())
    with pytest.raises(GatewayError) as info:
        await session.request(call("x"))
    assert info.value.reason == "upstream_error"
    await session.close()


async def test_http_error_with_json_rpc_body_is_passed_through(http: aiohttp.ClientSession,
                                                               scripted: Callable[..., Awaitable[Scripted]]) -> None:
    async def reject(request: web.Request, message: Message) -> web.StreamResponse:
        return web.json_response({"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": "bad"}},
                                 status=400)

    target = await scripted(reject)
    session = await http_upstream(target.url, http).connect(CLIENT_CAPS, Inbox())
    response = await session.request(call("x", request_id="mine"))
    assert response == {"jsonrpc": "2.0", "id": "mine", "error": {"code": -32600, "message": "bad"}}
    await session.close()


@pytest.mark.parametrize("status", [502, 503, 504])
async def test_gateway_style_statuses_are_unavailable(status: int, http: aiohttp.ClientSession,
                                                      scripted: Callable[..., Awaitable[Scripted]]) -> None:
    async def down(request: web.Request, message: Message) -> web.StreamResponse:
        return web.Response(status=status, text="upstream of upstream is down")

    target = await scripted(down)
    session = await http_upstream(target.url, http).connect(CLIENT_CAPS, Inbox())
    with pytest.raises(GatewayError) as info:
        await session.request(call("x"))
    assert info.value.reason == "upstream_unavailable"
    await session.close()


async def test_connection_reset_mid_call_is_unavailable(http: aiohttp.ClientSession,
                                                        scripted: Callable[..., Awaitable[Scripted]]) -> None:
    async def reset(request: web.Request, message: Message) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"event: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\"")
        assert request.transport is not None
        request.transport.abort()  # RST in the middle of an event
        return response

    target = await scripted(reset)
    session = await http_upstream(target.url, http).connect(CLIENT_CAPS, Inbox())
    with pytest.raises(GatewayError) as info:
        await session.request(call("x"))
    assert info.value.reason == "upstream_unavailable"
    await session.close()


async def test_upstream_gone_after_connect_is_unavailable(http: aiohttp.ClientSession) -> None:
    async with run_http_server(inventory_server()) as url:
        upstream = http_upstream(url, http)
        session = await upstream.connect(CLIENT_CAPS, Inbox())
    with pytest.raises(GatewayError) as info:
        await session.request(call("get_stock", {"sku": "widget"}))
    assert info.value.reason == "upstream_unavailable"
    assert not upstream.health().ready
    await upstream.stop()


async def test_expired_session_fails_the_call_and_the_next_call_reconnects(
        http: aiohttp.ClientSession, scripted: Callable[..., Awaitable[Scripted]]) -> None:
    calls = 0

    async def forget_once(request: web.Request, message: Message) -> web.StreamResponse:
        nonlocal calls
        calls += 1
        if calls == 1:
            return web.Response(status=404, text="unknown session")
        return web.json_response({"jsonrpc": "2.0", "id": message["id"], "result": {"ok": True}})

    target = await scripted(forget_once)
    session = await http_upstream(target.url, http).connect(CLIENT_CAPS, Inbox())
    with pytest.raises(GatewayError) as info:
        await session.request(call("x"))
    assert info.value.reason == "upstream_unavailable" and info.value.data["session"] == "expired"
    assert (await session.request(call("x", request_id=2))) == {"jsonrpc": "2.0", "id": 2, "result": {"ok": True}}
    assert target.count("initialize") == 2
    await session.close()


async def test_get_stream_resumes_with_last_event_id(http: aiohttp.ClientSession,
                                                     scripted: Callable[..., Awaitable[Scripted]]) -> None:
    gets = 0

    async def stream(request: web.Request) -> web.StreamResponse:
        nonlocal gets
        gets += 1
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        note = {"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "info", "data": gets}}
        await response.write(f"id: ev-{gets}\nevent: message\ndata: {json.dumps(note)}\n\n".encode())
        if gets >= 2:
            await asyncio.Event().wait()  # keep the second stream open until the client leaves
        return response  # the first stream ends: the client must resume

    async def unused(request: web.Request, message: Message) -> web.StreamResponse:
        return web.Response(status=500)

    target = await scripted(unused, on_get=stream)
    inbox = Inbox()
    session = await http_upstream(target.url, http).connect(CLIENT_CAPS, inbox)
    await inbox.wait_for(lambda m: (m.get("params") or {}).get("data") == 2)
    assert "Last-Event-ID" not in target.headers[0]
    assert target.headers[1]["Last-Event-ID"] == "ev-1"
    await session.close()


async def test_json_response_and_stateless_servers(http: aiohttp.ClientSession) -> None:
    for options in ({"json_response": True}, {"stateless": True}, {"stateless": True, "json_response": True}):
        async with run_http_server(inventory_server(), **options) as url:
            upstream = http_upstream(url, http)
            await upstream.start()
            session = await upstream.connect(CLIENT_CAPS, Inbox())
            results = await asyncio.gather(*(session.request(call("get_stock", {"sku": "widget"}, request_id=n))
                                             for n in range(5)))
            assert all(text_of(r) == "widget: 42 in stock" for r in results)
            await upstream.stop()


async def test_probe_does_not_speak_mcp(http: aiohttp.ClientSession) -> None:
    seen: list[SeenRequest] = []
    async with run_http_server(inventory_server(), requests=seen) as url:
        upstream = http_upstream(url, http)
        assert upstream.health().ready is False  # never contacted yet
        assert (await upstream.probe()).ready
    assert seen == []


async def test_request_after_close_is_unavailable(http: aiohttp.ClientSession) -> None:
    async with run_http_server(inventory_server()) as url:
        upstream = http_upstream(url, http)
        session = await upstream.connect(CLIENT_CAPS, Inbox())
        await session.close()
        with pytest.raises(GatewayError) as info:
            await session.request(call("get_stock", {"sku": "widget"}))
        assert info.value.reason == "upstream_unavailable"
        await eventually(lambda: not upstream.sessions)
