"""JSON-RPC batches on a streamable HTTP upstream's SSE streams.

2025-03-26, the one revision with batches, lets a server batch what it sends on a request's stream ("These responses
MAY be batched") and on its GET stream: each member is handled as if it came in an event of its own, as over stdio and
legacy SSE. On the old code such a batch failed the call with upstream_error. Under any other revision a batch still
breaks the protocol: upstream_error, as before.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.config.model import UpstreamConfig
from gateway.errors import GatewayError
from gateway.transport.base import Message
from gateway.transport.streamable_http import StreamableHttpUpstream
from tests.transport.conftest import CLIENT_CAPS, INIT_RESULT, Inbox, Scripted, call, eventually, sse_open

V2025_03 = {**INIT_RESULT, "protocolVersion": "2025-03-26"}


def sse(*messages: Any) -> bytes:
    return b"".join(b"event: message\ndata: " + json.dumps(m).encode() + b"\n\n" for m in messages)


def progress(n: int) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": "t", "progress": n}}


def stream(*messages: Any) -> web.Response:
    return web.Response(body=sse(*messages), content_type="text/event-stream")


async def connect(target: Scripted, http: aiohttp.ClientSession, inbox: Inbox) -> Any:
    upstream = StreamableHttpUpstream(UpstreamConfig(name="up", url=target.url, timeout_s=10), http)
    return await upstream.connect(CLIENT_CAPS, inbox)


@pytest.mark.parametrize("order", ["answer_last", "answer_first"])
async def test_a_batch_on_a_requests_stream_is_read_member_by_member(
        order: str, http: aiohttp.ClientSession, scripted: Callable[..., Awaitable[Scripted]]) -> None:
    async def answer(request: web.Request, message: Message) -> web.StreamResponse:
        reply = {"jsonrpc": "2.0", "id": message["id"], "result": {"content": [], "n": 1}}
        batch = [progress(1), reply, progress(2)] if order == "answer_first" else [progress(1), progress(2), reply]
        return stream(batch)

    target = await scripted(answer, init_result=V2025_03)
    session = await connect(target, http, Inbox())
    handed: list[Message] = []

    async def on_message(message: Message) -> None:
        handed.append(message)

    response = await session.request(call("x"), on_message=on_message)
    assert response["result"] == {"content": [], "n": 1}, response
    # Every notification of the batch handed on, in order, the one after the answer too.
    assert [m["params"]["progress"] for m in handed] == [1, 2], handed
    await session.close()


async def test_a_batch_under_a_later_revision_is_still_upstream_error(
        http: aiohttp.ClientSession, scripted: Callable[..., Awaitable[Scripted]]) -> None:
    async def answer(request: web.Request, message: Message) -> web.StreamResponse:
        return stream([progress(1), {"jsonrpc": "2.0", "id": message["id"], "result": {}}])

    target = await scripted(answer)  # 2025-11-25: no batches
    session = await connect(target, http, Inbox())
    with pytest.raises(GatewayError) as info:
        await session.request(call("x"))
    assert info.value.reason == "upstream_error" and "batch" in info.value.message, info.value.message
    await session.close()


@pytest.mark.parametrize("member", [1, None, [progress(1)]])
async def test_a_batch_holding_no_message_is_upstream_error(
        member: Any, http: aiohttp.ClientSession, scripted: Callable[..., Awaitable[Scripted]]) -> None:
    async def answer(request: web.Request, message: Message) -> web.StreamResponse:
        return stream([progress(1), member, {"jsonrpc": "2.0", "id": message["id"], "result": {}}])

    target = await scripted(answer, init_result=V2025_03)
    session = await connect(target, http, Inbox())
    with pytest.raises(GatewayError) as info:
        await session.request(call("x"))
    assert info.value.reason == "upstream_error", info.value
    await session.close()


async def test_a_batch_on_the_get_stream_is_handed_on_member_by_member(
        http: aiohttp.ClientSession, scripted: Callable[..., Awaitable[Scripted]]) -> None:
    changed = {"jsonrpc": "2.0", "method": "notifications/tools/list_changed"}

    async def on_get(request: web.Request) -> web.StreamResponse:
        return await sse_open(request, sse([changed, progress(3)]))

    async def answer(request: web.Request, message: Message) -> web.StreamResponse:
        return web.json_response({"jsonrpc": "2.0", "id": message["id"], "result": {}})

    target = await scripted(answer, on_get=on_get, init_result=V2025_03)
    inbox = Inbox()
    session = await connect(target, http, inbox)
    await eventually(lambda: len(inbox.messages) >= 2)
    assert [m["method"] for m in inbox.messages] == ["notifications/tools/list_changed", "notifications/progress"]
    await session.close()


async def test_two_answers_in_one_batch_are_upstream_error(
        http: aiohttp.ClientSession, scripted: Callable[..., Awaitable[Scripted]]) -> None:
    async def answer(request: web.Request, message: Message) -> web.StreamResponse:
        reply = {"jsonrpc": "2.0", "id": message["id"], "result": {}}
        return stream([reply, {**reply, "result": {"second": True}}])

    target = await scripted(answer, init_result=V2025_03)
    session = await connect(target, http, Inbox())
    with pytest.raises(GatewayError) as info:
        await session.request(call("x"))
    assert info.value.reason == "upstream_error" and "two answers" in info.value.message, info.value
    await session.close()
