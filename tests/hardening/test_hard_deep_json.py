"""JSON nested past the parser's limit, from an upstream or in a client's cursor: a clean error for that one
message, never a crash of the reader every session shares."""

from __future__ import annotations

import asyncio
import base64
import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.hardening.conftest import ANON, RawClient, poll, raw_upstream, reason
from tests.support.servers import run_aiohttp

pytestmark = pytest.mark.asyncio

DEEP = b"[" * 100_000 + b"]" * 100_000  # valid JSON; Python's parser gives up (RecursionError) long before

# A minimal stdio MCP server: tool `deep` answers with content nested 100,000 deep, `ok` answers normally.
DEEP_CHILD = r'''
import json, sys
DEEP = "[" * 100000 + "]" * 100000
for line in sys.stdin:
    m = json.loads(line)
    if "id" not in m or "method" not in m:
        continue
    if m["method"] == "initialize":
        r = {"protocolVersion": m["params"]["protocolVersion"], "capabilities": {"tools": {}},
             "serverInfo": {"name": "deep", "version": "1"}}
    elif m["method"] == "tools/list":
        r = {"tools": [{"name": n, "inputSchema": {"type": "object"}} for n in ("deep", "ok")]}
    elif m["method"] == "tools/call" and m["params"]["name"] == "deep":
        sys.stdout.write('{"jsonrpc":"2.0","id":%s,"result":{"content":%s}}\n' % (json.dumps(m["id"]), DEEP))
        sys.stdout.flush()
        continue
    elif m["method"] == "tools/call":
        r = {"content": [{"type": "text", "text": "ok ran"}]}
    else:
        r = {}
    sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": m["id"], "result": r}) + "\n")
    sys.stdout.flush()
'''


async def readiness(http: aiohttp.ClientSession, gw: Any, upstream: str) -> dict[str, Any]:
    async with http.get(f"{gw.url}/readyz") as resp:
        return dict((await resp.json())["upstreams"][upstream])


async def test_a_stdio_child_nesting_too_deep_fails_nothing_else_and_keeps_running(
        start_gateway: Any, permissive_policies: Path, tmp_path: Path) -> None:
    # The parser's RecursionError escaped the one reader of the child's stdout: every session's calls in
    # flight failed with "upstream process exited" and the child was restarted (its state lost).
    script = tmp_path / "deep_child.py"
    script.write_text(DEEP_CHILD)
    gw = await start_gateway({"upstreams": [{"name": "d", "command": [sys.executable, str(script)], "timeout_s": 1}],
                              "identity": ANON, "policies": {"dir": str(permissive_policies), "watch": False}})
    async with aiohttp.ClientSession() as http:
        # A call waits for the child only timeout_s (1 s, for the timeout below): on a loaded machine the
        # child can take longer to start, so wait until it is up.
        async def up() -> bool:
            return bool((await readiness(http, gw, "d")).get("ready"))
        await poll(up, timeout=30, what="the stdio child to be ready")
        client = RawClient(http, gw.mcp)
        await client.initialize()
        status, _, body = await client.call("d__ok", {}, request_id=1)
        assert status == 200 and body["result"]["content"][0]["text"] == "ok ran", body
        status, _, body = await client.call("d__deep", {}, request_id=2)
        # The line cannot be read, so nothing says which call it answered: that call times out (the
        # gateway cancels it upstream), like any answer that never came.
        assert status == 200 and reason(body) == "upstream_timeout", body
        status, _, body = await client.call("d__ok", {}, request_id=3)
        assert status == 200 and body["result"]["content"][0]["text"] == "ok ran", body
        state = await readiness(http, gw, "d")
        assert state["ready"] is True and state["restarts"] == 0, state


async def test_an_http_answer_nesting_too_deep_is_upstream_error(start_gateway: Any, permissive_policies: Path
                                                                 ) -> None:
    # Was internal_error (-32603), logged as a gateway bug, though the upstream sent what cannot be read.
    async with raw_upstream(b'[{"name":"deep","inputSchema":{"type":"object"}}]',
                            lambda _: b'{"content":' + DEEP + b'}') as url, aiohttp.ClientSession() as http:
        gw = await start_gateway({"upstreams": [{"name": "d", "url": url}], "identity": ANON,
                                  "policies": {"dir": str(permissive_policies), "watch": False}})
        client = RawClient(http, gw.mcp)
        await client.initialize()
        status, _, body = await client.call("d__deep", {})
        assert status == 200 and reason(body) == "upstream_error", body


@asynccontextmanager
async def deep_sse_upstream() -> AsyncIterator[str]:
    """A legacy HTTP+SSE upstream (one client) whose answer to the tool `deep` nests too deep for the parser."""
    queue: asyncio.Queue[bytes] = asyncio.Queue()

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"event: endpoint\ndata: /messages\n\n")
        while True:
            await response.write(await queue.get())

    async def post(request: web.Request) -> web.Response:
        message = json.loads(await request.read())
        if "id" not in message or "method" not in message:
            return web.Response(status=202)
        if message["method"] == "initialize":
            result = (b'{"protocolVersion":"2024-11-05","capabilities":{"tools":{}},'
                      b'"serverInfo":{"name":"deep","version":"1"}}')
        elif message["method"] == "tools/list":
            result = b'{"tools":[{"name":"deep","inputSchema":{"type":"object"}},{"name":"ok","inputSchema":{}}]}'
        elif message["params"]["name"] == "deep":
            result = b'{"content":' + DEEP + b'}'
        else:
            result = b'{"content":[{"type":"text","text":"ok ran"}]}'
        answer = b'{"jsonrpc":"2.0","id":' + json.dumps(message["id"]).encode() + b',"result":' + result + b'}'
        await queue.put(b"event: message\ndata: " + answer + b"\n\n")
        return web.Response(status=202)

    app = web.Application()
    app.router.add_get("/sse", stream)
    app.router.add_post("/messages", post)
    async with run_aiohttp(app, handler_cancellation=True, shutdown_timeout=1) as base:
        yield f"{base}/sse"


async def test_a_legacy_sse_answer_nesting_too_deep_leaves_the_stream_working(
        start_gateway: Any, permissive_policies: Path) -> None:
    # The RecursionError ended the task reading the upstream's stream: that call and every later one on the
    # session failed with upstream_unavailable ("stream closed"), though the upstream was fine.
    async with deep_sse_upstream() as url, aiohttp.ClientSession() as http:
        gw = await start_gateway({"upstreams": [{"name": "d", "url": url, "transport": "sse", "timeout_s": 1}],
                                  "identity": ANON, "policies": {"dir": str(permissive_policies), "watch": False}})
        client = RawClient(http, gw.mcp)
        await client.initialize()
        status, _, body = await client.call("d__deep", {}, request_id=1)
        assert status == 200 and reason(body) == "upstream_timeout", body  # unreadable: nothing names its call
        status, _, body = await client.call("d__ok", {}, request_id=2)
        assert status == 200 and body["result"]["content"][0]["text"] == "ok ran", body


async def test_a_cursor_nesting_too_deep_is_invalid_params(start_gateway: Any, permissive_policies: Path,
                                                           tmp_path: Path) -> None:
    # The aggregated view's cursor is base64 JSON the client hands back: nested past the parser's limit it
    # was internal_error (-32603) instead of the -32602 every other unknown cursor gets.
    async with aiohttp.ClientSession() as http:
        client = await _deep_child_client(http, start_gateway, permissive_policies, tmp_path)
        for cursor in ["not-a-cursor", base64.urlsafe_b64encode(b"[" * 5000).decode()]:
            status, _, body = await client.post({"jsonrpc": "2.0", "id": 4, "method": "tools/list",
                                                 "params": {"cursor": cursor}})
            assert status == 200 and body["error"]["code"] == -32602 and reason(body) == "invalid_params", body


@pytest.mark.parametrize("raw", [
    b'{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"d__ok","arguments":{"a":'
    + b"[" * 2000 + b"]" * 2000 + b"}}}",
    DEEP,
], ids=["request", "array"])
async def test_a_request_nesting_past_the_parser_is_the_depth_refusal(
        start_gateway: Any, permissive_policies: Path, tmp_path: Path, raw: bytes) -> None:
    # configuration.md: JSON deeper than listen.max_json_depth is -32600. Past the depth Python's parser
    # reads (about 1,000) it was -32700 "body is not valid JSON" instead, though the body was valid JSON.
    async with aiohttp.ClientSession() as http:
        client = await _deep_child_client(http, start_gateway, permissive_policies, tmp_path)
        for body in (b'{"jsonrpc":"2.0","id":7,"method":"ping","params":{"a":' + b"[" * 70 + b"]" * 70 + b"}}",
                     raw):
            status, _, answer = await client.post(raw=body)
            assert status == 400 and answer["error"]["code"] == -32600, answer
            assert reason(answer) == "invalid_request", answer
            assert answer["error"]["message"] == "Invalid request: JSON nested deeper than 64", answer


async def _deep_child_client(http: aiohttp.ClientSession, start_gateway: Any, permissive_policies: Path,
                             tmp_path: Path) -> RawClient:
    """An initialized raw client of a gateway in front of the deep-JSON stdio child."""
    script = tmp_path / "deep_child.py"
    script.write_text(DEEP_CHILD)
    gw = await start_gateway({"upstreams": [{"name": "d", "command": [sys.executable, str(script)]}],
                              "identity": ANON, "policies": {"dir": str(permissive_policies), "watch": False}})
    client = RawClient(http, gw.mcp)
    await client.initialize()
    return client
