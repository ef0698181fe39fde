"""A batch's answers on a real aiohttp server, through the gateway's ResponseChannel: each goes out as its call ends.

A batch answers with one JSON array unless a call sends an interim message (progress, a log line, a held call's
keep-alive), which opens an SSE stream. An answer that ended before that stream opened was kept for the end of the
batch, behind the slowest call (a payment waiting for a person); it goes out as the stream opens instead."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
from aiohttp import web

from gateway.http.streams import ResponseChannel
from tests.support.servers import run_aiohttp

ANSWER = {"jsonrpc": "2.0", "id": 2, "result": {"content": []}}
INTERIM = {"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": "t", "progress": 0}}
LAST = {"jsonrpc": "2.0", "id": 1, "result": {"content": []}}


async def test_an_answer_that_ended_before_the_stream_opened_goes_out_as_it_opens() -> None:
    release = asyncio.Event()  # the slow call ends once the client has read what came before

    async def batch(request: web.Request) -> web.StreamResponse:
        channel = ResponseChannel(request, {}, sse_allowed=True)
        await channel.answer_now(ANSWER)  # the fast call ends while the answer is still JSON
        await channel.send(INTERIM)       # the slow call's first interim message opens the stream
        await release.wait()
        await channel.answer_now(LAST)
        return await channel.finish_batch([])

    app = web.Application()
    app.router.add_post("/mcp", batch)
    async with run_aiohttp(app) as base, aiohttp.ClientSession() as http, http.post(f"{base}/mcp") as resp:
        assert resp.content_type == "text/event-stream"
        seen: list[dict[str, Any]] = []
        try:
            async with asyncio.timeout(5):
                while len(seen) < 2:  # both before the slow call ends
                    line = await resp.content.readline()
                    if line.startswith(b"data: "):
                        seen.append(json.loads(line[6:]))
        except TimeoutError:
            pass  # (the kept answer never came before the slow call's end)
        release.set()
        async with asyncio.timeout(10):
            rest = [json.loads(line[6:]) for line in (await resp.content.read()).splitlines()
                    if line.startswith(b"data: ")]
    assert seen == [ANSWER, INTERIM] and rest == [LAST], (seen, rest)
