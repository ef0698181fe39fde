"""A streamable HTTP upstream's GET stream (list changes, resource updates, requests tied to no call) is
given up after consecutive failures (the upstream unreachable for a while, a proxy answering 502). It was
never opened again while the upstream session lived on, so once the upstream was back every notification it
sent on that stream was lost for the session's whole life. A request that gets through now opens it again
(an upstream that refuses GET, 405, is not asked again) (hand-written upstream)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web

from gateway.config.model import UpstreamConfig
from gateway.transport import streamable_http
from gateway.transport.base import Message
from gateway.transport.streamable_http import StreamableHttpUpstream
from tests.transport.conftest import CLIENT_CAPS, Inbox, Scripted, call, eventually, sse_open, text_of

CHANGED = {"jsonrpc": "2.0", "method": "notifications/tools/list_changed"}


async def answer(request: web.Request, message: Message) -> web.StreamResponse:
    return web.json_response({"jsonrpc": "2.0", "id": message["id"],
                              "result": {"content": [{"type": "text", "text": "ok"}]}})


async def test_a_given_up_get_stream_is_opened_again_by_the_next_request(
        http: aiohttp.ClientSession, scripted: Callable[..., Awaitable[Scripted]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(streamable_http, "_GET_STREAM_MAX_FAILURES", 2)  # given up sooner (default 5)
    down = True

    async def stream(request: web.Request) -> web.StreamResponse:
        if down:
            return web.Response(status=502)  # a proxy in front of an upstream that is away
        return await sse_open(request, f"event: message\ndata: {json.dumps(CHANGED)}\n\n".encode())

    target = await scripted(answer, on_get=stream)
    upstream = StreamableHttpUpstream(UpstreamConfig(name="blip", url=target.url, timeout_s=5), http)
    inbox = Inbox()
    session = await upstream.connect(CLIENT_CAPS, inbox)
    listener = session._listener
    assert listener is not None
    await asyncio.wait_for(asyncio.shield(listener), 15)  # two failed GETs: given up
    down = False
    assert text_of(await session.request(call("anything"))) == "ok"
    # (on the old code: no GET was ever sent again, the notification never came)
    await inbox.wait_for(lambda m: m.get("method") == "notifications/tools/list_changed", within=10)
    await session.close()


async def test_an_upstream_that_refuses_get_is_not_asked_again(
        http: aiohttp.ClientSession, scripted: Callable[..., Awaitable[Scripted]]) -> None:
    target = await scripted(answer)  # GET: 405
    upstream = StreamableHttpUpstream(UpstreamConfig(name="noget", url=target.url, timeout_s=5), http)
    session = await upstream.connect(CLIENT_CAPS, Inbox())
    await eventually(lambda: session._listener is not None and session._listener.done())
    for n in range(3):
        assert text_of(await session.request(call("anything", request_id=n))) == "ok"
    assert [method for method, _ in target.seen].count("GET") == 1
    await session.close()
