"""A streamable HTTP upstream's GET stream carrying one event past the 16 MiB cap: iter_sse raised, the stream
broke and was opened again, the upstream (with an event store) replayed the same event, and so on until the
stream was given up, losing every notification after it. The event is now skipped with a warning and the
stream goes on (as on a legacy SSE upstream's stream) (hand-written upstream)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

import aiohttp
from aiohttp import web

from gateway.config.model import UpstreamConfig
from gateway.transport.base import Message
from gateway.transport.events import MAX_MESSAGE_BYTES
from gateway.transport.streamable_http import StreamableHttpUpstream
from tests.transport.conftest import CLIENT_CAPS, Inbox, Scripted, sse_open

HUGE = {"jsonrpc": "2.0", "method": "notifications/message",
        "params": {"level": "info", "data": "x" * (MAX_MESSAGE_BYTES + 1024)}}
CHANGED = {"jsonrpc": "2.0", "method": "notifications/tools/list_changed"}


async def answer(request: web.Request, message: Message) -> web.StreamResponse:
    return web.json_response({"jsonrpc": "2.0", "id": message["id"], "result": {"content": []}})


async def test_an_oversized_event_on_the_get_stream_is_skipped_and_the_stream_goes_on(
        http: aiohttp.ClientSession, scripted: Callable[..., Awaitable[Scripted]]) -> None:
    async def stream(request: web.Request) -> web.StreamResponse:
        return await sse_open(request, f"id: 1\nevent: message\ndata: {json.dumps(HUGE)}\n\n".encode(),
                              f"id: 2\nevent: message\ndata: {json.dumps(CHANGED)}\n\n".encode())

    target = await scripted(answer, on_get=stream)
    upstream = StreamableHttpUpstream(UpstreamConfig(name="big", url=target.url, timeout_s=5), http)
    inbox = Inbox()
    session = await upstream.connect(CLIENT_CAPS, inbox)
    try:
        # (on the old code: never delivered; the stream broke on the first event at every reconnect)
        await inbox.wait_for(lambda m: m.get("method") == "notifications/tools/list_changed", within=20)
        assert [method for method, _ in target.seen].count("GET") == 1  # one stream, not re-opened
        assert not any(m.get("method") == "notifications/message" for m in inbox.messages)
    finally:
        await session.close()
