"""Legacy SSE upstream faults: foreign endpoint, stream loss mid-call, garbage on the stream."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.config.model import UpstreamConfig
from gateway.errors import GatewayError
from gateway.transport.base import Message
from gateway.transport.sse import SseUpstream
from tests.transport.conftest import CLIENT_CAPS, INIT_RESULT, Inbox, call

OnCall = Callable[["FakeSse", Message], Awaitable[None]]
MALFORMED = "malformed_http"  # a tool whose call the fake answers with a malformed HTTP response


class FakeSse:
    """A scripted legacy-SSE server: answers initialize, hands tools/call to `on_call`."""

    def __init__(self, endpoint: str, on_call: OnCall) -> None:
        self.endpoint = endpoint
        self.on_call = on_call
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.posts: list[Message] = []
        self.init_result: Message = INIT_RESULT  # what initialize is answered with

    async def send(self, message: Any) -> None:
        await self.queue.put(f"event: message\ndata: {json.dumps(message)}\n\n".encode())

    async def sse(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(f"event: endpoint\ndata: {self.endpoint}\n\n".encode())
        while (chunk := await self.queue.get()) is not None:
            await response.write(chunk)
        return response  # None: end the stream

    async def post(self, request: web.Request) -> web.Response:
        message = json.loads(await request.read())
        self.posts.append(message)
        if message.get("method") == "initialize":
            await self.send({"jsonrpc": "2.0", "id": message["id"], "result": self.init_result})
        elif message.get("method") == "tools/call" and message["params"]["name"] == MALFORMED:
            assert request.transport is not None  # an answer no HTTP parser takes, then the connection closed
            request.transport.write(b"HTTP/1.1 abc Nonsense\r\n\r\n")
            request.transport.close()
        elif message.get("method") == "tools/call":
            await self.on_call(self, message)
        return web.Response(status=202)


@pytest.fixture
async def fake_sse() -> AsyncIterator[Callable[..., Awaitable[tuple[str, FakeSse]]]]:
    runners: list[web.AppRunner] = []

    async def start(on_call: OnCall, endpoint: str = "/messages?session=1") -> tuple[str, FakeSse]:
        fake = FakeSse(endpoint, on_call)
        app = web.Application()
        app.router.add_get("/sse", fake.sse)
        app.router.add_post("/messages", fake.post)
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=2)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return f"http://127.0.0.1:{port}/sse", fake

    yield start
    for runner in runners:
        await runner.cleanup()


def sse_upstream(url: str, http: aiohttp.ClientSession) -> SseUpstream:
    return SseUpstream(UpstreamConfig(name="legacy", url=url, transport="sse", timeout_s=20), http)


async def test_endpoint_on_another_origin_is_refused(http: aiohttp.ClientSession,
                                                     fake_sse: Callable[..., Awaitable[tuple[str, FakeSse]]]) -> None:
    async def never(fake: FakeSse, message: Message) -> None:
        raise AssertionError("no call expected")

    url, fake = await fake_sse(never, endpoint="http://127.0.0.2:9/steal")
    with pytest.raises(GatewayError) as info:
        await sse_upstream(url, http).connect(CLIENT_CAPS, Inbox())
    assert info.value.reason == "upstream_error"
    assert fake.posts == []


async def test_stream_end_fails_inflight_calls_at_once(http: aiohttp.ClientSession,
                                                       fake_sse: Callable[..., Awaitable[tuple[str, FakeSse]]]) -> None:
    async def drop(fake: FakeSse, message: Message) -> None:
        if message["params"]["name"] == "drop":
            await fake.queue.put(None)
        elif message["params"]["name"] == "after":
            await fake.send({"jsonrpc": "2.0", "id": message["id"], "result": {"content": []}})

    url, fake = await fake_sse(drop)
    upstream = sse_upstream(url, http)
    session = await upstream.connect(CLIENT_CAPS, Inbox())
    waiting = asyncio.create_task(session.request(call("slow", request_id="a")))
    with pytest.raises(GatewayError) as info:
        await session.request(call("drop", request_id="b"))
    assert info.value.reason == "upstream_unavailable"
    with pytest.raises(GatewayError) as info:
        await waiting  # failed by the stream loss, not by the 20 s timeout
    assert info.value.reason == "upstream_unavailable"
    # The next call opens a fresh upstream session (a new stream and initialize), as for an expired
    # streamable HTTP session (see test_sse_upstream_reopen.py for a real server that restarts).
    assert (await session.request(call("after")))["result"] == {"content": []}
    assert [m["method"] for m in fake.posts if m.get("method") == "initialize"] == ["initialize"] * 2
    await upstream.stop()


async def test_garbage_on_the_stream_is_ignored_and_a_bad_answer_fails_its_call(
        http: aiohttp.ClientSession, fake_sse: Callable[..., Awaitable[tuple[str, FakeSse]]]) -> None:
    async def garbage(fake: FakeSse, message: Message) -> None:
        await fake.queue.put(b"event: message\ndata: {not json\n\n")
        await fake.send([1, 2, 3])
        await fake.send({"jsonrpc": "2.0", "id": 12345, "result": {}})  # nobody asked
        await fake.send({"jsonrpc": "2.0", "id": message["id"]})  # ours, but neither result nor error

    url, _ = await fake_sse(garbage)
    upstream = sse_upstream(url, http)
    session = await upstream.connect(CLIENT_CAPS, Inbox())
    with pytest.raises(GatewayError) as info:
        await session.request(call("x"))
    assert info.value.reason == "upstream_error"
    await upstream.stop()


async def test_a_malformed_http_answer_to_a_post_fails_its_call_as_upstream_error(
        http: aiohttp.ClientSession, fake_sse: Callable[..., Awaitable[tuple[str, FakeSse]]]) -> None:
    async def answer(fake: FakeSse, message: Message) -> None:
        await fake.send({"jsonrpc": "2.0", "id": message["id"], "result": {"content": []}})

    url, _ = await fake_sse(answer)
    upstream = sse_upstream(url, http)
    session = await upstream.connect(CLIENT_CAPS, Inbox())
    with pytest.raises(GatewayError) as info:  # (old code: aiohttp's ClientResponseError, past every handler)
        await session.request(call(MALFORMED))
    assert info.value.reason == "upstream_error"
    assert (await session.request(call("fine")))["result"] == {"content": []}  # the session goes on
    await upstream.stop()


async def test_unreachable_sse_upstream(http: aiohttp.ClientSession, bound_socket: Any) -> None:
    upstream = sse_upstream(f"http://127.0.0.1:{bound_socket.getsockname()[1]}/sse", http)
    with pytest.raises(GatewayError) as info:
        await upstream.connect(CLIENT_CAPS, Inbox())
    assert info.value.reason == "upstream_unavailable"
    assert not (await upstream.probe()).ready


async def test_an_answer_with_nan_fails_its_call_at_once(
        http: aiohttp.ClientSession, fake_sse: Callable[..., Awaitable[tuple[str, FakeSse]]]) -> None:
    # Python's parser reads NaN; JSON has no such number. The answer reached the agent with null in its place.
    async def nan(fake: FakeSse, message: Message) -> None:
        await fake.queue.put(b'event: message\ndata: {"jsonrpc":"2.0","id":%d,"result":{"n":NaN}}\n\n'
                             % message["id"])

    url, _ = await fake_sse(nan)
    upstream = sse_upstream(url, http)
    session = await upstream.connect(CLIENT_CAPS, Inbox())
    with pytest.raises(GatewayError) as info:
        # Well inside the upstream's 20 s timeout: the broken answer fails the call, not the wait.
        await asyncio.wait_for(session.request(call("x")), 10)
    assert info.value.reason == "upstream_error" and "NaN is not a JSON number" in info.value.message
    await upstream.stop()


async def test_an_answer_with_a_number_past_a_double_fails_its_call_at_once(
        http: aiohttp.ClientSession, fake_sse: Callable[..., Awaitable[tuple[str, FakeSse]]]) -> None:
    # 1e400 is valid JSON that no double holds: read as infinity, it reached the agent as null.
    async def overflow(fake: FakeSse, message: Message) -> None:
        await fake.queue.put(b'event: message\ndata: {"jsonrpc":"2.0","id":%d,"result":{"n":1e400}}\n\n'
                             % message["id"])

    url, _ = await fake_sse(overflow)
    upstream = sse_upstream(url, http)
    session = await upstream.connect(CLIENT_CAPS, Inbox())
    with pytest.raises(GatewayError) as info:
        await asyncio.wait_for(session.request(call("x")), 10)
    assert info.value.reason == "upstream_error" and "1e400 is out of range" in info.value.message
    await upstream.stop()


@pytest.mark.parametrize("revision", ["2025-03-26", "2025-11-25"])
async def test_an_answer_in_a_batch_is_read_under_2025_03_26_and_fails_its_call_at_once_otherwise(
        http: aiohttp.ClientSession, fake_sse: Callable[..., Awaitable[tuple[str, FakeSse]]], revision: str) -> None:
    # Batches belong to 2025-03-26 only (as over stdio): there each message counts on its own; under any other
    # revision the call the batch answers fails at once. It was skipped as "a non-object message": its call
    # waited for its timeout, and a 2025-03-26 upstream's batched answer was never read.
    async def batched(fake: FakeSse, message: Message) -> None:
        log = {"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "info", "data": "in batch"}}
        await fake.send([log, {"jsonrpc": "2.0", "id": message["id"], "result": {"content": []}}])

    url, fake = await fake_sse(batched)
    fake.init_result = {**INIT_RESULT, "protocolVersion": revision}
    upstream = sse_upstream(url, http)
    inbox = Inbox()
    session = await upstream.connect(CLIENT_CAPS, inbox)
    if revision == "2025-03-26":
        answer = await asyncio.wait_for(session.request(call("x"), on_message=inbox), 10)
        assert answer["result"] == {"content": []}
        assert [m["params"]["data"] for m in inbox.messages if m.get("method") == "notifications/message"] == \
            ["in batch"]
    else:
        with pytest.raises(GatewayError) as info:
            await asyncio.wait_for(session.request(call("x")), 10)  # well inside the upstream's 20 s timeout
        assert info.value.reason == "upstream_error" and "batch" in info.value.message
    await upstream.stop()
